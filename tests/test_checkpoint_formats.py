"""DiT checkpoint formats: Wan2.1 original (single / sharded), diffusers, LongLive base.pt, peft LoRA merged."""

import json

import pytest
import torch
from _builders import diffusers_wan_transformer
from safetensors.torch import save_file

from arvid.runtime import build_model, get_preset
from arvid.runtime.checkpoint import load_longlive_state_dict, load_lora, model_config_from_json
from arvid.runtime.loaders import find_model_files, load_dit

TINY = get_preset("tiny")
CFG = TINY.model
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
WAN_CONFIG = {
    "_class_name": "WanModel",
    "model_type": "t2v",
    "dim": CFG.dim,
    "ffn_dim": CFG.ffn_dim,
    "num_heads": CFG.num_heads,
    "num_layers": CFG.num_layers,
    "freq_dim": CFG.freq_dim,
    "text_dim": CFG.text_dim,
    "text_len": CFG.text_len,
    "in_dim": CFG.in_dim,
    "out_dim": CFG.out_dim,
    "patch_size": list(CFG.patch_size),
    "eps": CFG.eps,
}


def _sd(seed=3):
    return {k: v.contiguous() for k, v in build_model(CFG, seed=seed).state_dict().items()}


def _write_wan_dir(root, sd, *, sharded=False, config=WAN_CONFIG):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if not sharded:
        save_file(sd, str(root / "diffusion_pytorch_model.safetensors"))
        return root
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = keys[1::2]
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(root / name))
        weight_map.update(dict.fromkeys(ks, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return root


def _assert_same(model, sd):
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("sharded", [False, True])
def test_wan_original_layout(tmp_path, sharded):
    sd = _sd()
    root = _write_wan_dir(tmp_path / "Wan2.1-T2V-tiny", sd, sharded=sharded)
    files = find_model_files(root)
    assert files.layout == "wan" and files.vae is None and files.text_encoder is None
    model = load_dit(model_dir=root)
    assert model.cfg == CFG
    _assert_same(model, sd)


def test_wan_config_defaults_and_required_keys(tmp_path):
    minimal = {k: WAN_CONFIG[k] for k in ("dim", "ffn_dim", "num_heads", "num_layers")}
    (tmp_path / "config.json").write_text(json.dumps(minimal))
    cfg = model_config_from_json(tmp_path / "config.json")  # the rest: Wan's WanModel defaults
    assert (cfg.text_dim, cfg.text_len, cfg.in_dim, cfg.patch_size) == (4096, 512, 16, (1, 2, 2))
    del minimal["ffn_dim"]
    (tmp_path / "config.json").write_text(json.dumps(minimal))
    with pytest.raises(ValueError, match=r"config\.json: missing key 'ffn_dim'"):
        model_config_from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({**WAN_CONFIG, "model_type": "i2v"}))
    with pytest.raises(ValueError, match="i2v"):
        model_config_from_json(tmp_path / "config.json")


def test_diffusers_layout(tmp_path):
    ref = diffusers_wan_transformer(CFG)
    ref.save_pretrained(str(tmp_path / "transformer"))
    assert find_model_files(tmp_path).layout == "diffusers"
    model = load_dit(model_dir=tmp_path, config=None)
    assert model.cfg.dim == CFG.dim and model.cfg.num_layers == CFG.num_layers and model.cfg.text_dim == CFG.text_dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, CFG.in_dim, 8, 8, generator=g)
    text = torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        want = ref(x.transpose(1, 2), t, text, return_dict=False)[0].transpose(1, 2)
        out = model(x, t[:, None].expand(1, 2), text)
    assert torch.allclose(out, want, atol=1e-4, rtol=1e-4)


def test_longlive_base_pt_entries_and_prefixes(tmp_path):
    gen, ema = _sd(seed=1), _sd(seed=2)
    path = tmp_path / "longlive_base.pt"
    torch.save(
        {
            "generator": {f"model.{k}": v for k, v in gen.items()},
            "generator_ema": {f"model._fsdp_wrapped_module.{k}": v for k, v in ema.items()},
        },
        path,
    )
    # default: 'generator' (LongLive's shipped configs have use_ema: false)
    _assert_same(load_dit(config=CFG, longlive_ckpt=path), gen)
    _assert_same(load_dit(config=CFG, longlive_ckpt=path, longlive_weights="generator_ema"), ema)
    # a bare {"model": ...} checkpoint, and one holding only the EMA weights
    torch.save({"model": gen}, tmp_path / "m.pt")
    _assert_same(load_dit(config=CFG, longlive_ckpt=tmp_path / "m.pt"), gen)
    torch.save({"generator_ema": ema}, tmp_path / "e.pt")
    _assert_same(load_dit(config=CFG, longlive_ckpt=tmp_path / "e.pt"), ema)
    with pytest.raises(ValueError, match=r"e\.pt: no 'generator' entry"):
        load_longlive_state_dict(tmp_path / "e.pt", "generator")


def test_longlive_over_model_dir_uses_its_config(tmp_path):
    root = _write_wan_dir(tmp_path / "wan", _sd(seed=1))
    torch.save({"generator": {f"model.{k}": v for k, v in _sd(seed=5).items()}}, tmp_path / "base.pt")
    _assert_same(load_dit(model_dir=root, longlive_ckpt=tmp_path / "base.pt"), _sd(seed=5))


LORA_TARGETS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.v", "ffn.0"]


def test_lora_merge_equals_peft_unmerged_adapter(tmp_path):
    """LoRA r=4, alpha=8 merged by arvid gives what peft's unmerged adapter computes."""
    peft = pytest.importorskip("peft")
    base = _sd(seed=4)
    torch.save({"generator": {f"model.{k}": v for k, v in base.items()}}, tmp_path / "base.pt")

    wrapped = peft.get_peft_model(
        build_model(CFG, state_dict=base).requires_grad_(True),
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peft zero-initialises B; give both factors real values
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    lora_sd = peft.get_peft_model_state_dict(wrapped)
    assert any(k.startswith("base_model.model.blocks.0.self_attn.q.lora_A") for k in lora_sd)
    torch.save({"generator_lora": lora_sd, "critic_lora": {}}, tmp_path / "lora.pt")

    merged = load_dit(config=CFG, longlive_ckpt=tmp_path / "base.pt", lora=tmp_path / "lora.pt", lora_alpha=8)
    x = torch.randn(1, 3, CFG.in_dim, 8, 8, generator=g)
    text = torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)
    t = torch.full((1, 3), 750.0)
    with torch.no_grad():
        want = wrapped.eval()(x, t, text)
        got = merged(x, t, text)
        plain = build_model(CFG, state_dict=base)(x, t, text)
    assert (want - plain).abs().max() > 1e-2, "the adapter must change the output for the test to mean anything"
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_lora_alpha_from_adapter_config_and_default(tmp_path):
    a, b = torch.randn(2, CFG.dim), torch.randn(CFG.dim, 2)
    key = "base_model.model.blocks.0.self_attn.q"
    save_file({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, str(tmp_path / "adapter_model.safetensors"))
    lora = load_lora(tmp_path / "adapter_model.safetensors")
    assert lora.rank == 2 and lora.alpha is None  # merge_lora_ then uses alpha = rank
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 16}))
    assert load_lora(tmp_path / "adapter_model.safetensors").alpha == 16
    model = build_model(CFG, seed=0)
    w0 = model.blocks[0].self_attn.q.weight.clone()
    from arvid.runtime.checkpoint import merge_lora_

    assert merge_lora_(model, load_lora(tmp_path / "adapter_model.safetensors")) == 8.0
    assert torch.allclose(model.blocks[0].self_attn.q.weight, w0 + 8.0 * b @ a, atol=1e-5)


# -- bad input: one clear error naming the file and the key ----------------------------------------
def test_missing_and_unrecognised_directories(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dit(model_dir=tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=f"{tmp_path} is not a Wan2.1 model directory"):
        load_dit(model_dir=tmp_path)
    (tmp_path / "transformer").mkdir()
    with pytest.raises(ValueError, match=r"transformer: a diffusers transformer folder needs config\.json"):
        load_dit(model_dir=tmp_path)


def test_shape_mismatch_names_file_and_key(tmp_path):
    sd = _sd()
    sd["blocks.1.ffn.0.weight"] = torch.zeros(CFG.ffn_dim + 1, CFG.dim)
    root = _write_wan_dir(tmp_path / "w", sd)
    with pytest.raises(ValueError) as e:
        load_dit(model_dir=root)
    msg = str(e.value)
    assert "diffusion_pytorch_model.safetensors" in msg and "blocks.1.ffn.0.weight" in msg and "shape" in msg


def test_missing_and_unexpected_keys(tmp_path):
    sd = _sd()
    sd.pop("head.head.bias")
    sd["blocks.0.extra"] = torch.zeros(1)
    torch.save({"generator": sd}, tmp_path / "base.pt")
    with pytest.raises(ValueError) as e:
        load_dit(config=CFG, longlive_ckpt=tmp_path / "base.pt")
    msg = str(e.value)
    assert "base.pt" in msg and "head.head.bias" in msg and "blocks.0.extra" in msg


def test_missing_shard_is_named(tmp_path):
    root = _write_wan_dir(tmp_path / "w", _sd(), sharded=True)
    (root / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"shard diffusion_pytorch_model-00002-of-00002\.safetensors does not exist"):
        load_dit(model_dir=root)


def test_lora_errors(tmp_path):
    a, b = torch.randn(4, CFG.dim), torch.randn(CFG.dim, 4)
    key = "base_model.model.blocks.0.self_attn.q"
    torch.save({"generator_lora": {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}}, tmp_path / "lora.pt")
    with pytest.raises(ValueError, match=r"lora\.pt: LoRA rank mismatch: the file has rank 4, expected 256"):
        load_dit(config=CFG, lora=tmp_path / "lora.pt", lora_rank=256)
    torch.save({f"{key}.lora_A.weight": a}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match=r"half\.pt: blocks\.0\.self_attn\.q\.lora_B\.weight is missing"):
        load_lora(tmp_path / "half.pt")
    torch.save({"base_model.model.blocks.9.self_attn.q.lora_A.weight": a,
                "base_model.model.blocks.9.self_attn.q.lora_B.weight": b}, tmp_path / "far.pt")  # fmt: skip
    with pytest.raises(ValueError, match=r"far\.pt: LoRA does not fit the model.*blocks\.9\.self_attn\.q"):
        load_dit(config=CFG, lora=tmp_path / "far.pt")
    torch.save({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": torch.randn(CFG.dim + 2, 4)}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"s\.pt: LoRA does not fit the model.*blocks\.0\.self_attn\.q: B @ A"):
        load_dit(config=CFG, lora=tmp_path / "s.pt")
    torch.save({f"{key}.weight": a}, tmp_path / "notlora.pt")
    with pytest.raises(ValueError, match=r"notlora\.pt: key .*self_attn\.q\.weight' is not a LoRA factor"):
        load_lora(tmp_path / "notlora.pt")


def test_unreadable_files_are_clear_errors(tmp_path):
    bad = tmp_path / "base.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"base\.pt: not a readable PyTorch checkpoint"):
        load_dit(config=CFG, longlive_ckpt=bad)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"x\.safetensors: not a readable safetensors file"):
        load_dit(config=CFG, checkpoint=bad)


# -- whole model directories through `arvid generate` -----------------------------------------------
def _tiny_parts():
    """A tiny DiT state dict, tiny umT5 (+ tokenizer) and tiny VAE, as transformers / diffusers build them."""
    from arvid.runtime.text_encoder import TextEncoder
    from arvid.runtime.vae import tiny_vae

    enc = TextEncoder.tiny_random(CFG.text_dim, text_len=CFG.text_len, seed=1)
    return _sd(seed=7), enc.model, enc.tokenizer, tiny_vae(seed=2)


def _invert(convert, candidates):
    """Original names for converted ones: run the converter over candidate original names."""
    return {new: old for new, old in convert({c: c for c in candidates}).items()}


def _write_wan_model_dir(root, dit, t5, tok, vae):
    from test_vae import _wan_names  # the VAE's original names, from diffusers' own converter

    from arvid.runtime.text_encoder import wan_t5_to_umt5_state_dict

    _write_wan_dir(root, dit)
    t5_sd = t5.state_dict()
    names = ["token_embedding.weight", "norm.weight"]
    names += [f"blocks.{i}.{s}" for i in range(t5.config.num_layers) for s in (
        "attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight", "norm1.weight", "norm2.weight",
        "ffn.gate.0.weight", "ffn.fc1.weight", "ffn.fc2.weight", "pos_embedding.embedding.weight")]  # fmt: skip
    inverse = _invert(wan_t5_to_umt5_state_dict, names)
    torch.save({inverse[k]: v for k, v in t5_sd.items() if k != "encoder.embed_tokens.weight"},
               root / "models_t5_umt5-xxl-enc-bf16.pth")  # fmt: skip
    tok.save_pretrained(str(root / "google" / "umt5-xxl"))
    torch.save(_wan_names(vae.state_dict()), root / "Wan2.1_VAE.pth")


def _write_diffusers_model_dir(root, dit, t5, tok, vae):
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=CFG.patch_size, num_attention_heads=CFG.num_heads, attention_head_dim=CFG.head_dim,
        in_channels=CFG.in_dim, out_channels=CFG.out_dim, text_dim=CFG.text_dim, freq_dim=CFG.freq_dim,
        ffn_dim=CFG.ffn_dim, num_layers=CFG.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=CFG.eps,
    )  # fmt: skip
    transformer.save_pretrained(str(root / "transformer"))
    t5.save_pretrained(str(root / "text_encoder"))
    tok.save_pretrained(str(root / "tokenizer"))
    vae.save_pretrained(str(root / "vae"))


@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_cli_generate_from_model_directory(tmp_path, layout):
    from arvid.cli import main
    from arvid.runtime.video import read_video_info

    root = tmp_path / layout
    (_write_wan_model_dir if layout == "wan" else _write_diffusers_model_dir)(root, *_tiny_parts())
    out = tmp_path / "v.mp4"
    args = ["generate", "--model", str(root), "--preset", "tiny", "--frames", "3", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert read_video_info(out)[:3] == (9, 64, 64)


def test_weight_source_resolves_the_model_directory_once(tmp_path, monkeypatch):
    """The CLI's preset, label and DiT load share one WeightSource: the directory is found once per run."""
    import argparse

    from arvid.commands import _common
    from arvid.runtime import loaders

    root = _write_wan_dir(tmp_path / "wan", _sd(seed=4))
    calls = []
    find = loaders.find_model_files
    monkeypatch.setattr(loaders, "find_model_files", lambda r: calls.append(r) or find(r))
    args = argparse.Namespace(
        model=str(root), checkpoint=None, longlive_ckpt=None, longlive_weights="auto", lora=None, lora_alpha=None,
        lora_rank=None, seed=0, preset="tiny",
    )  # fmt: skip
    preset, files = _common.model_preset(args)
    model = _common.load_model_from_args(args, preset, device="cpu", dtype=torch.float32)
    assert files.root == root and _common.weights_label(args) == str(root)
    assert len(calls) == 1
    _assert_same(model, _sd(seed=4))
    # the keyword form and the source form are the same loader
    source = loaders.WeightSource(model_dir=root)
    _assert_same(load_dit(source=source), _sd(seed=4))
    with pytest.raises(ValueError, match="not both"):
        load_dit(source=source, checkpoint=root / "diffusion_pytorch_model.safetensors")
