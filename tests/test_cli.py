"""The `arvid` command: bench and generate on the tiny preset, and its error messages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from arvid.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_bench_tiny_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--preset", "tiny", "--frames", "12", "--warmup", "1", "--rounds", "2", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| eager |" in text and "| sdpa |" in text and "video FPS (DiT, p50)" in text
    assert "torch " + torch.__version__ in text
    report = json.loads(out.read_text())
    assert [v["backend"] for v in report["variants"]] == ["eager", "sdpa"]
    assert report["variants"][0]["speedup_vs_baseline"] == 1.0
    assert report["variants"][1]["max_abs_diff_vs_baseline"] < 1e-4
    assert len(report["variants"][0]["chunk_ms"]) == 6  # 4 chunks, 1 warm-up, 2 rounds


@pytest.mark.slow
def test_generate_writes_latents(tmp_path):
    out = tmp_path / "latents.safetensors"
    args = ["generate", "--preset", "tiny", "--frames", "36", "--seed", "0", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        latents = f.get_tensor("latents")
        meta = f.metadata()
    assert latents.shape == (1, 36, 16, 8, 8)
    assert torch.isfinite(latents).all()
    assert meta["preset"] == "tiny" and meta["frames"] == "36"
    # same seed, same latents
    again = tmp_path / "again.safetensors"
    assert main([*args, "--out", str(again)]) == 0
    with safe_open(str(again), "pt") as f:
        assert torch.equal(f.get_tensor("latents"), latents)


def test_generate_with_prompt_switch(tmp_path):
    out = tmp_path / "l.safetensors"
    args = ["generate", "--frames", "24", "--prompt", "a", "--prompt", "b", "--switch-frames", "15"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--frames", "10", "--out", "x.safetensors"], "not a positive multiple of the chunk"),
        (
            [
                "generate",
                "--frames",
                "12",
                "--switch-frames",
                "12",
                "--prompt",
                "a",
                "--prompt",
                "b",
                "--out",
                "x.safetensors",
            ],
            "out of range",
        ),
        (
            [
                "generate",
                "--frames",
                "12",
                "--switch-frames",
                "4,5",
                "--prompt",
                "a",
                "--prompt",
                "b",
                "--prompt",
                "c",
                "--out",
                "x.safetensors",
            ],
            "same chunk boundary",
        ),
        (["generate", "--preset", "huge", "--out", "x.safetensors"], "unknown preset"),
        (["generate", "--backend", "nope", "--out", "x.safetensors"], "unknown attention backend"),
        (["bench", "--backends", "eager,nope"], "unknown attention backend or engine"),
        (["generate", "--checkpoint", "missing.safetensors", "--out", "x.safetensors"], "does not exist"),
        (["generate", "--out", "x.avi"], "use .mp4 for video or .safetensors for latents"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.safetensors")), "no partial output may be left"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["generate", "--graphs", "--quiet", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "CUDA graphs need a CUDA device" in capsys.readouterr().err


def test_generate_from_prompt_embeds(tmp_path, capsys):
    from safetensors.torch import save_file

    emb = tmp_path / "embeds.safetensors"
    save_file({"embeds": torch.randn(2, 16, 32)}, str(emb))
    out = tmp_path / "l.safetensors"
    args = ["generate", "--frames", "12", "--switch-frames", "6", "--quiet", "--out", str(out)]
    assert main([*args, "--prompt-embeds", str(emb)]) == 0
    save_file({"other": torch.randn(2, 16, 32)}, str(emb))
    assert main([*args, "--prompt-embeds", str(emb)]) == 2
    assert "no tensor named 'embeds'" in capsys.readouterr().err
    assert main([*args, "--prompt-embeds", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_with_fp8_kv_cache(tmp_path):
    out = tmp_path / "l.safetensors"
    assert main(["generate", "--frames", "12", "--fp8kv", "--quiet", "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        assert torch.isfinite(f.get_tensor("latents")).all()


def test_checkpoint_with_wrong_keys_names_the_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from arvid.runtime import build_model, get_preset

    sd = build_model(get_preset("tiny").model).state_dict()
    sd.pop("head.modulation")
    ckpt = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "head.modulation" in err


def test_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    from arvid.runtime import build_model, get_preset
    from arvid.runtime.loaders import load_dit

    model = build_model(get_preset("tiny").model, seed=3)
    ckpt = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    loaded = load_dit(config=get_preset("tiny").model, checkpoint=ckpt)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


MODEL_FLAGS = [
    "--model",
    "--checkpoint",
    "--longlive-ckpt",
    "--longlive-weights",
    "--lora",
    "--lora-alpha",
    "--lora-rank",
]


@pytest.mark.parametrize("command", ["generate", "interactive", "bench", "quantize", "quality"])
def test_every_command_that_loads_the_dit_has_the_same_model_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    for flag in MODEL_FLAGS:
        assert flag in help_text, (command, flag)


@pytest.fixture
def diffusers_checkpoint(tmp_path):
    """A tiny DiT's weights under diffusers' names (``condition_embedder.*``, ``attn1``), as one .safetensors."""
    from _builders import diffusers_wan_transformer
    from safetensors.torch import save_file

    from arvid.runtime import get_preset
    from arvid.runtime.checkpoint import is_diffusers_state_dict

    sd = diffusers_wan_transformer(get_preset("tiny").model, randomize=True).state_dict()
    assert is_diffusers_state_dict(sd)
    ckpt = tmp_path / "diffusers_dit.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    return ckpt


def test_diffusers_named_checkpoint_loads_in_bench_and_quantize(tmp_path, diffusers_checkpoint, capsys):
    from arvid.quant import load_quantized

    bench = ["bench", "--device", "cpu", "--frames", "6", "--warmup", "1", "--backends", "eager"]
    assert main([*bench, "--checkpoint", str(diffusers_checkpoint)]) == 0
    out = tmp_path / "q"
    assert main(["quantize", "--device", "cpu", "--scheme", "int8", "--checkpoint", str(diffusers_checkpoint),
                 "--out", str(out)]) == 0  # fmt: skip
    assert load_quantized(out).arvid_quant.config.scheme == "int8"
    assert "error" not in capsys.readouterr().err


def test_bench_takes_the_weight_flags_of_every_command(tmp_path, capsys):
    # bench loads through load_dit like generate: a missing LoRA is the loader's one-line error
    missing = tmp_path / "lora.pt"
    assert main(["bench", "--device", "cpu", "--lora", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "arvid", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in out.stdout and "generate" in out.stdout


@pytest.mark.slow
def test_wheel_installs_namespaced_packages_only(tmp_path):
    """`pip install .` puts kernels/runtime/... under arvid/, never as bare top-level packages."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("arvid-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("arvid-")}
    assert tops == {"arvid"}, tops
    for layer in ("kernels", "runtime", "quant", "export", "bench"):
        assert f"arvid/{layer}/__init__.py" in names
    assert "arvid/cli.py" in names and "arvid/commands/bench.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "arvid = arvid.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--frames", "0", "--out", "x.safetensors"], "argument --frames: must be > 0, got 0"),
        (["interactive", "--frames", "-3", "--live"], "argument --frames: must be > 0, got -3"),
        (["bench", "--frames", "0"], "argument --frames: must be > 0, got 0"),
        (["bench", "--rounds", "0"], "argument --rounds: must be > 0, got 0"),
        (["bench", "--warmup", "-5"], "argument --warmup: must be >= 0, got -5"),
    ],
)
def test_zero_is_not_not_given(tmp_path, monkeypatch, capsys, args, message):
    """0 and negatives are refused at parse time (exit 2, one line), never taken for the default."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_bench_refuses_a_variant_named_twice(capsys):
    assert main(["bench", "--device", "cpu", "--backends", "eager,sdpa,eager"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "arvid bench: error: variant(s) eager named more than once: each variant runs once per round"
