"""Loader hardening (issue 14, items 5 and 6): wrapper prefixes accepted and stripped, then strict;
integer weights, string LoRA alphas, shards outside the model folder, bad configs, truncated or
malformed quantized variants and malicious pickles refused in one line naming the file and key."""

from __future__ import annotations

import copy
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from arvid.runtime import build_model, get_preset
from arvid.runtime.checkpoint import load_lora, load_state_dict, model_config_from_json, torch_load
from arvid.runtime.loaders import load_dit

CFG = get_preset("tiny").model
LORA_KEY = "blocks.0.self_attn.q"


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in build_model(CFG, seed=3).state_dict().items()}


def _same(model, sd) -> None:
    got = model.state_dict()
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], v) for k, v in sd.items())


@pytest.mark.parametrize("prefix", ["model.", "_fsdp_wrapped_module.", "model._fsdp_wrapped_module."])
def test_flat_prefixed_state_dict_loads_by_both_flags(tmp_path, sd, prefix):
    flat = {prefix + k: v for k, v in sd.items()}
    torch.save(flat, tmp_path / "flat.pt")
    save_file(flat, str(tmp_path / "flat.safetensors"))
    _same(load_dit(config=CFG, checkpoint=tmp_path / "flat.safetensors"), sd)
    _same(load_dit(config=CFG, checkpoint=tmp_path / "flat.pt"), sd)
    _same(load_dit(config=CFG, longlive_ckpt=tmp_path / "flat.pt"), sd)


def test_fsdp_prefix_inside_the_key_path_is_stripped(tmp_path, sd):
    """FSDP wraps each block: `blocks.0._fsdp_wrapped_module.self_attn...`."""
    inner = {k.replace("blocks.0.", "blocks.0._fsdp_wrapped_module."): v for k, v in sd.items()}
    torch.save({"generator": {"model." + k: v for k, v in inner.items()}}, tmp_path / "base.pt")
    _same(load_dit(config=CFG, longlive_ckpt=tmp_path / "base.pt"), sd)


def test_stripping_stays_strict(tmp_path, sd):
    flat = {"model." + k: v for k, v in sd.items()}
    del flat["model.head.head.weight"]
    flat["model.blocks.0.extra"] = torch.zeros(1)
    torch.save(flat, tmp_path / "flat.pt")
    for kw in ({"checkpoint": tmp_path / "flat.pt"}, {"longlive_ckpt": tmp_path / "flat.pt"}):
        with pytest.raises(
            ValueError, match=r"(?s)flat\.pt: checkpoint does not match.*missing keys.*head\.head\.weight"
        ):
            load_dit(config=CFG, **kw)
    both = dict(sd) | {"model.head.head.weight": sd["head.head.weight"]}
    torch.save(both, tmp_path / "both.pt")
    with pytest.raises(ValueError, match=r"both\.pt: keys 'head\.head\.weight' and 'model\.head\.head\.weight' both"):
        load_dit(config=CFG, checkpoint=tmp_path / "both.pt")


def test_integer_weights_are_refused(tmp_path, sd):
    bad = dict(sd) | {"blocks.0.ffn.0.weight": sd["blocks.0.ffn.0.weight"].to(torch.int8)}
    save_file(bad, str(tmp_path / "int.safetensors"))
    with pytest.raises(ValueError, match=r"int\.safetensors: weight 'blocks\.0\.ffn\.0\.weight' has dtype int8"):
        load_dit(config=CFG, checkpoint=tmp_path / "int.safetensors")


def test_a_longlive_file_given_as_checkpoint_says_what_it_is(tmp_path, sd):
    torch.save({"generator": sd}, tmp_path / "base.pt")
    with pytest.raises(ValueError, match=r"base\.pt: 'generator' is a dict, not a tensor \(a LongLive file"):
        load_dit(config=CFG, checkpoint=tmp_path / "base.pt")


def test_lora_alpha_must_be_a_number(tmp_path):
    a, b = torch.randn(4, CFG.dim), torch.zeros(CFG.dim, 4)
    factors = {f"{LORA_KEY}.lora_A.weight": a, f"{LORA_KEY}.lora_B.weight": b}
    torch.save(factors | {"lora_alpha": "256"}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"s\.pt: 'lora_alpha' is '256' \(str\); expected a number"):
        load_lora(tmp_path / "s.pt")
    torch.save(factors | {"lora_alpha": 8}, tmp_path / "n.pt")
    assert load_lora(tmp_path / "n.pt").alpha == 8.0
    (tmp_path / "ok").mkdir()
    torch.save(factors, tmp_path / "ok" / "lora.pt")
    (tmp_path / "ok" / "adapter_config.json").write_text(json.dumps({"lora_alpha": "16"}))
    with pytest.raises(ValueError, match=r"adapter_config\.json: 'lora_alpha' is '16' \(str\)"):
        load_lora(tmp_path / "ok" / "lora.pt")
    torch.save({k: v.to(torch.int8) for k, v in factors.items()}, tmp_path / "i.pt")
    with pytest.raises(ValueError, match=r"i\.pt: blocks\.0\.self_attn\.q: LoRA factors have dtype torch\.int8"):
        load_lora(tmp_path / "i.pt")


def test_shards_linked_from_the_model_folder_load(tmp_path, sd):
    """Hugging Face cache snapshots link each shard to ../../blobs/<hash>: the names are inside, so it loads."""
    blobs, folder = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    folder.mkdir(parents=True)
    save_file(sd, str(blobs / "hash1"))
    (folder / "model-1.safetensors").symlink_to(blobs / "hash1")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(sd, "model-1.safetensors")}))
    assert set(load_state_dict(index)) == set(sd)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/abs/outside.safetensors", "sub/../../x.safetensors"])
def test_shards_outside_the_model_folder_are_refused(tmp_path, shard):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ValueError, match=r"index\.json: shard .* is outside the model folder"):
        load_state_dict(index)


def test_config_values_of_the_wrong_type_name_file_and_key(tmp_path):
    cfg = {"dim": "big", "ffn_dim": CFG.ffn_dim, "num_heads": CFG.num_heads, "num_layers": CFG.num_layers}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: 'dim' is 'big'; expected an integer"):
        model_config_from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"dim": 1.5}))
    with pytest.raises(ValueError, match=r"config\.json: 'dim' is 1\.5"):
        model_config_from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"config\.json:1: not UTF-8 text \(byte 0xff at offset 0\)"):
        model_config_from_json(tmp_path / "config.json")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo arvid-test-should-never-run",))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_naming_the_global(tmp_path, legacy, capfd):
    path = tmp_path / "evil.pt"
    # legacy: torch's old non-zip format, which cannot be memory-mapped (torch_load's second path)
    torch.save({"w": torch.zeros(2), "x": _Evil()}, path, _use_new_zipfile_serialization=not legacy)
    msg = r"evil\.pt: refused: the file needs the global posix\.system; only tensors are loaded"
    with pytest.raises(ValueError, match=msg):
        torch_load(path)
    with pytest.raises(ValueError, match=msg):
        load_dit(config=CFG, longlive_ckpt=path)
    assert "arvid-test-should-never-run" not in capfd.readouterr().out
    path.write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))  # a plain pickle, no torch at all
    with pytest.raises(ValueError, match=msg):
        torch_load(path)


def test_refused_global_reads_both_torch_wordings():
    from arvid.runtime.checkpoint import refused_global

    new = "Weights only load failed.\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked."
    old = "Unsupported global: GLOBAL __main__.Foo was not an allowed global by default. Please use ..."
    assert refused_global(new) == "posix.system" and refused_global(old) == "__main__.Foo"
    assert refused_global("WeightsUnpickler error: Unsupported operand 149") is None


# -- quantized variants on disk --------------------------------------------------------------------
@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    from arvid.quant import Int8Config, quantize_, save_quantized

    d = tmp_path_factory.mktemp("variant") / "v"
    save_quantized(quantize_(build_model(CFG, seed=1), Int8Config()), d)
    return d


def _copy(variant, tmp_path):
    import shutil

    return shutil.copytree(variant, tmp_path / "v")


def test_truncated_variant_weights_are_one_line(variant, tmp_path):
    from arvid.quant import load_quantized

    d = _copy(variant, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load_quantized(d)


def test_variant_config_not_json_or_without_model_config(variant, tmp_path):
    from arvid.quant import load_quantized

    d = _copy(variant, tmp_path)
    doc = json.loads((d / "quant_config.json").read_text())
    (d / "quant_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"quant_config\.json: not valid JSON"):
        load_quantized(d)
    (d / "quant_config.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "model_config"}))
    with pytest.raises(ValueError, match=r"quant_config\.json: missing key\(s\) \['model_config'\]"):
        load_quantized(d)
    bad = copy.deepcopy(doc)
    bad["model_config"]["dim"] = "big"
    (d / "quant_config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"quant_config\.json: model_config 'dim' is 'big'; expected an integer"):
        load_quantized(d)
    (d / "quant_config.json").write_text(json.dumps(doc))
    assert load_quantized(d) is not None  # the untouched file still loads


def test_quality_with_a_truncated_variant_is_one_line_exit_2(variant, tmp_path, capsys):
    from arvid.cli import main

    d = _copy(variant, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:100])
    assert (
        main(["quality", "--preset", "tiny", "--variant", str(d), "--frames", "3", "--out", str(tmp_path / "q")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.safetensors: not a readable safetensors file" in err, err
