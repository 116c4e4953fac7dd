"""Every way a user starts arvid from the checkout root, where the layer folders (``kernels/``, ...) are
importable under their bare names and used to shadow installed packages (transformers >= 5.25 imports
Hugging Face's ``kernels``). Each case runs in a subprocess whose working directory is the root;
``torchrun ... -m arvid`` from the root is tests/test_sequence_parallel.py's launch (one launch for both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("arvid", "tests"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(argv: list[str], *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env or ENV)


def test_every_layer_folder_is_guarded():
    assert LAYERS == ["bench", "export", "kernels", "quant", "runtime"]  # setup.py's package_dir layers
    for layer in LAYERS:
        head = (ROOT / layer / "__init__.py").read_text(encoding="utf-8")
        assert f'if __name__ != "arvid.{layer}":' in head, f"{layer}/__init__.py lacks the bare-import guard"


@pytest.mark.parametrize("layer", LAYERS)
def test_bare_import_from_the_root_finds_the_installed_package(tmp_path, layer):
    """An installed package with a layer's name wins over the checkout's folder, whatever comes first on
    sys.path; with none installed, a bare import fails as a missing package does (naming arvid.<layer>)."""
    site = tmp_path / "site"
    (site / layer).mkdir(parents=True)
    (site / layer / "__init__.py").write_text("WHO = 'installed'\n")
    (site / layer / "sub.py").write_text("WHO = 'installed.sub'\n")
    code = f"import {layer}, {layer}.sub; print({layer}.WHO, {layer}.sub.WHO)"
    r = _run([sys.executable, "-c", code], env={**ENV, "PYTHONPATH": str(site)})  # '' (the root) comes first
    assert r.returncode == 0 and r.stdout.split() == ["installed", "installed.sub"], r.stderr
    r = _run([sys.executable, "-c", f"import {layer}"])
    if r.returncode == 0:  # a real package of that name is installed in this environment
        r = _run([sys.executable, "-c", f"import {layer}; print({layer}.__file__)"])
        assert not Path(r.stdout.strip()).resolve().is_relative_to(ROOT / layer), r.stdout
    else:
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("ModuleNotFoundError: No module named") and f"import arvid.{layer}" in last, r.stderr


def test_hub_kernels_import_from_the_root():
    """What transformers does when it loads the text encoder: ``from kernels import ...`` (Hugging Face's)."""
    pytest.importorskip("transformers")
    if subprocess.run([sys.executable, "-m", "pip", "show", "-q", "kernels"], capture_output=True).returncode:
        pytest.skip("Hugging Face's kernels package is not installed (transformers < 5.25 does not need it)")
    code = (
        "import kernels; from kernels import CUDAProperties\n"
        "import transformers.integrations.hub_kernels\n"
        "import arvid.kernels, arvid.runtime\n"  # arvid's layers still load as arvid.<layer>
        "print(kernels.__file__)\n"
    )
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr[-2000:]
    assert not Path(r.stdout.strip()).resolve().is_relative_to(ROOT / "kernels")


def _generate(out: Path) -> list[str]:
    return ["generate", "--preset", "tiny", "--frames", "3", "--quiet", "--out", str(out)]


@pytest.mark.slow  # ~10 s each on 2 cores: torch, transformers and the tiny text encoder load in a new process
@pytest.mark.parametrize("how", ["arvid", "python -m arvid", "python -c Pipeline"])
def test_entry_points_from_the_root(tmp_path, how):
    pytest.importorskip("transformers")
    out = tmp_path / "x.safetensors"
    if how == "arvid":
        script = shutil.which("arvid", path=str(Path(sys.executable).parent))
        assert script, "the arvid console script is not installed beside this Python"
        argv = [script, *_generate(out)]
    elif how == "python -m arvid":
        argv = [sys.executable, "-m", "arvid", *_generate(out)]
    else:  # what a notebook started in the root runs ('' first on sys.path, as for -c)
        code = "from arvid import Pipeline; Pipeline.from_pretrained('tiny').generate('a fox', num_frames=3).save(%r)"
        argv = [sys.executable, "-c", code % str(out)]
    r = _run(argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.is_file()
