"""Output files and imports (issue 14, item 8): byte-reproducible .safetensors with the run's settings in
sorted metadata; torchao imported only where quantization asks for it, and quietly."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from arvid.runtime.files import run_metadata, write_safetensors


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_safetensors_is_byte_reproducible(tmp_path):
    """safetensors alone orders the metadata from a Rust hash map: different bytes on each call."""
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.float16)}
    meta = run_metadata(backend="triton", dtype=torch.bfloat16, fp8_kv=True, compile=False, checkpoint="x.pt", seed=0)
    digests = set()
    for i in range(6):
        write_safetensors(tmp_path / f"{i}.safetensors", tensors, meta)
        digests.add(_digest(tmp_path / f"{i}.safetensors"))
    assert len(digests) == 1
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("b"), tensors["b"])
    n = int.from_bytes((tmp_path / "0.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "0.safetensors").read_bytes()[8 : 8 + n])
    assert list(header["__metadata__"]) == sorted(meta)
    assert meta["dtype"] == "bfloat16" and meta["fp8_kv"] == "True" and "arvid_version" in meta


def test_write_safetensors_refuses_non_string_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"x\.safetensors: safetensors metadata must map strings to strings"):
        write_safetensors(tmp_path / "x.safetensors", {"a": torch.ones(1)}, {"seed": 0})
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # ~11 s on 2 cores when it is the first test to import the CLI and transformers
def test_two_identical_generate_runs_write_identical_bytes(tmp_path):
    from arvid.cli import main

    for name in ("a", "b"):
        args = [
            "generate",
            "--preset",
            "tiny",
            "--frames",
            "6",
            "--quiet",
            "--out",
            str(tmp_path / f"{name}.safetensors"),
        ]
        assert main(args) == 0
    assert _digest(tmp_path / "a.safetensors") == _digest(tmp_path / "b.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta = f.metadata()
    for key in ("backend", "dtype", "fp8_kv", "compile", "checkpoint", "arvid_version"):
        assert key in meta, key


def test_quantized_variant_weights_are_byte_reproducible(tmp_path):
    from arvid.quant import Int8Config, quantize_, save_quantized
    from arvid.runtime import build_model, get_preset

    for name in ("a", "b"):
        model = quantize_(build_model(get_preset("tiny").model, seed=1), Int8Config())
        save_quantized(model, tmp_path / name, metadata={"checkpoint": "random"})
    assert _digest(tmp_path / "a" / "model.safetensors") == _digest(tmp_path / "b" / "model.safetensors")


def test_torchao_is_imported_only_for_quantization_and_quietly():
    """A fresh interpreter: loading an unquantized DiT imports no torchao; importing it through the
    quiet wrapper prints none of its import-time warnings."""
    pytest.importorskip("torchao")
    code = (
        "import sys\n"
        "from arvid.runtime import get_preset\n"
        "from arvid.runtime.loaders import load_dit\n"
        "load_dit(config=get_preset('tiny').model)\n"
        "print('torchao loaded:', 'torchao' in sys.modules)\n"
        "from arvid.runtime.optional import require\n"
        "require('torchao.quantization', purpose='quantizing')\n"
        "print('torchao loaded:', 'torchao' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split("\n")[:2] == ["torchao loaded: False", "torchao loaded: True"]
    for noise in ("Failed to load", "_C_mxfp8", "Enum subclass", "Unable to import torchao"):
        assert noise not in run.stderr, run.stderr
