"""The slim install: a fast torch-free ``arvid --help`` / ``--version``, optional packages imported lazily
with a one-line install hint, quiet imports, and a core install without optional or CUDA packages."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import arvid
from arvid.commands import _names
from arvid.runtime.optional import NOISY_LOGGERS, PACKAGES, MissingDependencyError, install_hint, require

ROOT = Path(__file__).resolve().parents[1]
NO_NETWORK = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution")
# every optional package as pip names it (lower case, '-' for '_'), and what the test suite adds
OPTIONAL_DISTS = {
    "av", "pillow", "diffusers", "transformers", "tokenizers", "matplotlib", "huggingface-hub", "torchao",
    "nvidia-modelopt", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "triton", "peft", "pytest",
}  # fmt: skip


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_help_and_version_import_no_torch():
    code = (
        "import sys\n"
        "from arvid.cli import main\n"
        "for argv in (['--help'], ['--version'], ['generate', '--help'], ['export', 'onnx', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = [m for m in ('torch', 'numpy', 'arvid.export') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "print('RUNTIME', sorted(m for m in sys.modules if m.startswith('arvid.runtime')))\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    # the parser reads presets and stream defaults off the torch-free config (arvid.runtime is lazy)
    assert "RUNTIME ['arvid.runtime', 'arvid.runtime.config']" in r.stdout
    assert "arvid 0.1.0" in r.stdout  # --version
    assert "usage: arvid" in r.stdout and "``" not in r.stdout  # help for users, no RST markup


def test_attention_backend_runs_without_importing_the_exporters():
    """Engines register by name ("aoti" -> "arvid.export.aoti:aoti_executor"), imported on first use: a
    generator on an attention backend, and parsing an engine's variant, import no arvid.export."""
    code = (
        "import sys\n"
        "from arvid.runtime import GeneratorOptions, StreamingGenerator, build_model, get_preset\n"
        "gen = StreamingGenerator(build_model(get_preset('tiny').model), latent_size=(8, 8), backend='sdpa')\n"
        "assert gen.backend_name == 'sdpa'\n"
        "assert GeneratorOptions.from_variant('aoti+chunk').engine.name == 'aoti'\n"
        "print('EXPORT', sorted(m for m in sys.modules if m.startswith('arvid.export')))\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "EXPORT []" in r.stdout


def test_version_has_one_home():
    r = subprocess.run([sys.executable, "-m", "arvid", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == f"arvid {arvid.__version__}" == "arvid 0.1.0"
    r = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip().splitlines()[-1] == arvid.__version__


def test_parser_names_match_their_owners():
    from arvid.bench.roofline import GPUS, PRECISIONS
    from arvid.quant.calibrate import MODELOPT_SCHEMES
    from arvid.runtime.config import GRAPH_KINDS

    assert tuple(GPUS) == _names.GPU_NAMES
    assert tuple(PRECISIONS) == _names.PRECISION_NAMES
    assert tuple(MODELOPT_SCHEMES) == _names.QDQ_SCHEMES
    assert "vae-step" in GRAPH_KINDS


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import raises ModuleNotFoundError
    with pytest.raises(MissingDependencyError) as e:
        require("av", purpose="writing .mp4")
    assert str(e.value) == "writing .mp4 needs PyAV: pip install 'arvid[video]'"
    assert isinstance(e.value, ValueError) and isinstance(e.value, ImportError)  # the CLI prints it in one line
    monkeypatch.setitem(sys.modules, "modelopt.torch.quantization", None)
    with pytest.raises(MissingDependencyError, match=r"needs nvidia-modelopt: pip install 'arvid\[modelopt\]'"):
        require("modelopt.torch.quantization", purpose="the modelopt path")
    assert install_hint("unknown_pkg") == "pip install unknown_pkg"
    extras = {"video", "plots", "hub", "quant", "modelopt", "export", "triton", "serve"}  # setup.py's EXTRAS
    assert {extra for _, extra in PACKAGES.values()} <= extras


def test_require_reads_names_and_keeps_other_import_errors(tmp_path, monkeypatch):
    assert require("json", "dumps", purpose="x") is json.dumps
    assert require("json", "dumps", "loads", purpose="x") == (json.dumps, json.loads)
    # an installed package whose own dependency is missing is a broken install, not "install arvid[...]"
    (tmp_path / "arvid_fake_pkg.py").write_text("import arvid_missing_dependency_zz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="arvid_missing_dependency_zz") as e:
        require("arvid_fake_pkg", purpose="x")
    assert not isinstance(e.value, MissingDependencyError)


def test_quiet_imports_restores_logger_levels():
    logging.getLogger("torchao").setLevel(logging.INFO)
    try:
        require("json", purpose="x")
        assert logging.getLogger("torchao").level == logging.INFO
        assert all(logging.getLogger(n).level != logging.ERROR for n in NOISY_LOGGERS)
    finally:
        logging.getLogger("torchao").setLevel(logging.NOTSET)


@pytest.mark.slow  # ~10 s of CPU on a 2-core machine: transformers' and diffusers' imports
def test_video_libraries_import_without_noise():
    """transformers and diffusers import torchao where it is installed; its lines ask nothing of the user."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    code = (
        "import torch\n"
        "from arvid.runtime.optional import require\n"
        "require('transformers', 'UMT5EncoderModel', purpose='x')\n"
        "require('diffusers', 'AutoencoderKLWan', purpose='x')\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    for noise in ("Failed to load", "Unable to import `torchao`", "register_constant"):
        assert noise not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--preset", "tiny", "--frames", "3", "--out", "v.mp4"], "pip install 'arvid[video]'"),
        (["download", "--dir", "ckpt"], "downloading weights needs huggingface_hub: pip install 'arvid[hub]'"),
    ],
)
def test_missing_optional_package_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    """A core install (every optional package hidden): the command stops with one line naming the extra."""
    from arvid.cli import main

    for module in PACKAGES:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ModuleNotFoundError
    args = [str(tmp_path / a) if a in ("v.mp4", "ckpt") else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress lines may come before it
    assert last.startswith(f"arvid {args[0]}: error: ") and message in last, err
    assert not list(tmp_path.iterdir())  # nothing half written


@pytest.mark.slow  # ~20 s: pip builds arvid's metadata and resolves the core from the package index
def test_core_install_pulls_no_optional_or_cuda_package(tmp_path):
    """README's install line without extras (`pip install torch==2.13.0 -e . -c constraints.txt`), resolved by
    pip, not installed."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), "torch==2.13.0", str(ROOT), "-c", str(ROOT / "constraints.txt")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and any(s in r.stderr for s in NO_NETWORK):
        pytest.skip(f"pip cannot resolve here (no package index reachable): {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"arvid", "torch", "numpy", "safetensors", "psutil", "tqdm", "pyyaml"} <= names
    assert not names & OPTIONAL_DISTS
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))]


def _dev_closure() -> set[str]:
    """Every installed distribution that ``arvid[dev]`` needs, transitively, read off the installed metadata
    (each requirement's environment markers evaluated with the extras asked for)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [("arvid", {"dev"})]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker does not hold here (e.g. another platform)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if (key, frozenset(extras)) in seen:
            continue
        seen.add((key, frozenset(extras)))
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((req.name, set(req.extras)))
    return {name for name, _ in seen}


def test_constraints_pin_every_package_of_the_dev_install():
    """README's install (`torch==2.13.0 -e ".[dev]" -c constraints.txt`) gets pinned versions only: every
    package arvid[dev] needs, transitively, is pinned in constraints.txt and installed at its pin, so none
    floats with the next upstream release (README's command itself, run by CI, proves the file resolves)."""
    from importlib import metadata

    from conftest import constraint_pins

    pins = constraint_pins()

    needed = _dev_closure() - {"arvid", "torch"}
    assert len(needed) > 40, needed  # the closure was read (the dev extra alone names 17 packages)
    unpinned = sorted(needed - set(pins))
    assert not unpinned, f"constraints.txt does not pin {unpinned}: add them at the versions the suite passed with"
    moved = {n: (metadata.version(n), pins[n]) for n in needed if metadata.version(n) != pins[n]}
    assert not moved, f"installed versions differ from constraints.txt (installed, pinned): {moved}"


def test_readme_quick_start_is_what_ci_runs():
    """README's quick start: two commands; CI runs the first verbatim and names the extra it installs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [block.strip() for block in quick.split("```bash\n")[1:]]
    commands = [c.split("\n```", 1)[0] for c in commands]
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    setup, tests = commands
    assert 'pip install torch==2.13.0 -e ".[dev]" -c constraints.txt' in setup and "`dev` extra" in quick
    assert "arvid bench --preset tiny" in setup and "arvid generate --preset tiny --out video.mp4" in setup
    assert tests == '.venv/bin/pytest -m "not gpu" -q'
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert setup in ci and tests in ci
