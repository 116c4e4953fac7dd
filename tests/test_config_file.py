"""--config run.yaml / .json: arvid's flag names and LongLive's inference keys; flags override the file."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from arvid.cli import build_parser, main
from arvid.runtime import build_model, get_preset
from arvid.runtime.config_file import LONGLIVE_IGNORED, LONGLIVE_KEYS, read_config_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "longlive_inference.yaml"
CFG = get_preset("tiny").model


def _parse(argv):
    return build_parser().parse_args(argv)


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_arvid_keys_dashes_or_underscores_and_flags_override(tmp_path):
    cfg = _write(tmp_path, "chunk-frames: 2\nsink_frames: 2\nattention-frames: 6\nseed: 7\nout: a.mp4\n")
    args = _parse(["generate", "--config", cfg, "--seed", "3"])
    assert (args.chunk_frames, args.sink_frames, args.attention_frames) == (2, 2, 6)
    assert args.seed == 3 and args.out == "a.mp4"  # --out came from the file: no longer required
    args = _parse(["generate", "--seed", "3", "--config", cfg])  # the order does not matter
    assert args.seed == 3


def test_json_config_and_list_values(tmp_path):
    cfg = _write(
        tmp_path,
        json.dumps({"denoising_steps": [1000, 500], "prompt": ["a", "b"], "switch_frames": [3], "out": "x.mp4"}),
        "run.json",
    )
    args = _parse(["generate", "--config", cfg])
    assert args.denoising_steps == (1000, 500) and args.prompt == ["a", "b"] and args.switch_frames == (3,)
    args = _parse(["generate", "--config", cfg, "--prompt", "c"])  # replaces the file's prompts, not adds
    assert args.prompt == ["c"]


def test_longlive_keys_are_mapped(tmp_path):
    values = read_config_file(EXAMPLE)
    assert {k: v for k, (v, _) in values.items() if k in ("chunk_frames", "attention_frames", "sink_frames")} == {
        "chunk_frames": 3,
        "attention_frames": 12,
        "sink_frames": 3,
    }
    assert values["longlive_weights"][0] == "generator" and values["lora_rank"][0] == 256
    args = _parse(["generate", "--config", str(EXAMPLE), "--out", "x.mp4"])
    assert args.denoising_steps == (1000, 750, 500, 250) and args.shift == 5.0 and args.global_sink is True
    assert args.frames == 120 and args.prompt_file.endswith("vidprom_filtered_extended.txt")
    assert args.longlive_ckpt.endswith("longlive_base.pt") and args.lora.endswith("lora.pt")
    assert set(LONGLIVE_KEYS).isdisjoint(LONGLIVE_IGNORED)


def test_interactive_switch_frame_indices_and_data_path(tmp_path):
    cfg = _write(tmp_path, "switch_frame_indices:  48, 96\ndata_path: p.jsonl\noutput_folder: videos/x\n")
    args = _parse(["interactive", "--config", cfg])  # data_path satisfies the --prompts / --live choice
    assert args.switch_frames == (48, 96) and args.prompts == "p.jsonl" and args.out_dir == "videos/x"


@pytest.mark.parametrize(
    "text, message",
    [
        ("foo: 1\nnum_frame_per_block: 3\nbar_baz: x\n", "unknown key(s) for arvid generate: foo, bar_baz"),
        ("model_kwargs:\n  local_attn_sizes: 12\n", "unknown key model_kwargs.local_attn_sizes"),
        ("warp_denoising_step: false\n", "always warps"),
        ("frames: 12\nnum_output_frames: 24\n", "frames and num_output_frames both set frames"),
        ("chunk_frames: two\n", "chunk_frames: expected an integer"),
        ("global_sink: 1\n", "global_sink must be true or false"),
        ("dtype: fp64\n", "dtype 'fp64' is not one of"),
        ("[1, 2]\n", "the top level must be a mapping"),
        ("a: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, capsys, text, message):
    cfg = _write(tmp_path, text)
    with pytest.raises(SystemExit) as e:  # while parsing, as a bad flag is (exit status 2)
        main(["generate", "--config", cfg, "--out", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_missing_config_and_wrong_suffix(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_config_file(tmp_path / "nope.yaml")
    with pytest.raises(SystemExit):
        main(["bench", "--config", str(tmp_path / "nope.yaml")])
    assert "bench: error: --config" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"use a \.yaml, \.yml or \.json"):
        read_config_file(_write(tmp_path, "a: 1", "run.toml"))


def test_stream_settings_are_validated(tmp_path, capsys):
    cfg = _write(tmp_path, "num_frame_per_block: 6\nmodel_kwargs:\n  sink_size: 3\n")
    assert main(["generate", "--config", cfg, "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "stream settings: sink_frames (3) must be a multiple of chunk_frames (6)" in capsys.readouterr().err


def test_longlive_keys_that_do_not_apply_are_noted(tmp_path, capsys):
    args = _parse(["bench", "--config", str(EXAMPLE)])
    assert args.chunk_frames == 3
    assert "data_path" in capsys.readouterr().err


def test_every_listed_command_takes_config_and_stream_flags():
    for argv in (
        ["generate", "--out", "x.mp4"],
        ["interactive", "--live"],
        ["bench"],
        ["quality", "--scheme", "fp8", "--out", "q"],
        ["export", "onnx", "--graph", "step", "--out", "o"],
        ["export", "aoti", "--graph", "step", "--out", "o"],
    ):
        args = _parse([*argv, "--chunk-frames", "2", "--no-global-sink"])
        assert hasattr(args, "config") and args.chunk_frames == 2 and args.global_sink is False, argv


def test_generate_with_longlive_yaml_end_to_end(tmp_path, monkeypatch):
    """The example LongLive YAML drives a tiny run: its checkpoint, LoRA and prompt file, resolved into metadata."""
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "longlive_models" / "models"
    models.mkdir(parents=True)
    base = build_model(CFG, seed=4)
    torch.save({"generator": {f"model.{k}": v for k, v in base.state_dict().items()}}, models / "longlive_base.pt")
    g = torch.Generator().manual_seed(0)
    lora = {}
    for name, mod in base.named_modules():
        if name.startswith("blocks.") and isinstance(mod, torch.nn.Linear):
            lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(256, mod.in_features, generator=g) * 0.01
            lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(mod.out_features, 256, generator=g) * 0.01
    torch.save({"generator_lora": lora}, models / "lora.pt")
    prompts = tmp_path / "longlive_models" / "prompts"
    prompts.mkdir()
    (prompts / "vidprom_filtered_extended.txt").write_text("a red fox in the snow\n")

    out = tmp_path / "x.safetensors"
    assert main(["generate", "--config", str(EXAMPLE), "--preset", "tiny", "--frames", "6", "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    assert cfg["config"] == str(EXAMPLE) and cfg["frames"] == 6 and cfg["lora_rank"] == 256
    assert cfg["stream_config"]["attention_frames"] == 12 and cfg["stream_config"]["denoising_steps"] == [
        1000,
        750,
        500,
        250,
    ]
    assert meta["prompts"] == '["a red fox in the snow"]' and "longlive_base.pt + LoRA" in meta["checkpoint"]
