"""The causal Wan DiT: parity with diffusers' WanTransformer3DModel, names, shapes, errors."""

import pytest
import torch
from _builders import diffusers_wan_transformer
from conftest import assert_close

from arvid.runtime import build_model, get_preset
from arvid.runtime.checkpoint import diffusers_to_wan_state_dict
from arvid.runtime.model import sinusoidal_embedding

TINY = get_preset("tiny")


def _diffusers_model(cfg):
    return diffusers_wan_transformer(cfg, randomize=True)


def _arvid_from_diffusers(ref):
    sd = diffusers_to_wan_state_dict(ref.state_dict())
    return build_model(TINY.model, state_dict=sd)


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_full_sequence_forward_matches_diffusers(frames):
    cfg = TINY.model
    ref = _diffusers_model(cfg)
    model = _arvid_from_diffusers(ref)
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, frames, cfg.in_dim, TINY.latent_height, TINY.latent_width, generator=g)
    text = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.tensor([937.5, 250.0])
    with torch.no_grad():
        want = ref(x.transpose(1, 2), t, text, return_dict=False)[0].transpose(1, 2)
        out = model(x, t[:, None].expand(2, frames), text)
    assert out.shape == want.shape
    assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_per_frame_timesteps_match_diffusers_per_token_timesteps():
    """Per-frame modulation: arvid's [B, F] timesteps equal diffusers' per-token timesteps."""
    cfg = TINY.model
    ref = _diffusers_model(cfg)
    model = _arvid_from_diffusers(ref)
    frames = 3
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, frames, cfg.in_dim, TINY.latent_height, TINY.latent_width, generator=g)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.tensor([[1000.0, 625.0, 0.0]])
    per_token = t.repeat_interleave(TINY.tokens_per_frame, dim=1)  # [1, F * tokens_per_frame]
    with torch.no_grad():
        want = ref(x.transpose(1, 2), per_token, text, return_dict=False)[0].transpose(1, 2)
        out = model(x, t, text)
    assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_diffusers_names_cover_every_wan_parameter():
    ref = _diffusers_model(TINY.model)
    converted = set(diffusers_to_wan_state_dict(ref.state_dict()))
    model = build_model(TINY.model)
    assert converted == set(model.state_dict())


def test_original_wan_parameter_names():
    names = set(build_model(TINY.model).state_dict())
    for key in [
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "text_embedding.2.weight",
        "time_embedding.0.weight",
        "time_embedding.2.weight",
        "time_projection.1.weight",
        "blocks.0.self_attn.q.weight",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.0.self_attn.norm_k.weight",
        "blocks.1.cross_attn.o.bias",
        "blocks.1.cross_attn.norm_k.weight",
        "blocks.0.norm3.weight",
        "blocks.0.ffn.0.weight",
        "blocks.0.ffn.2.weight",
        "blocks.0.modulation",
        "head.head.weight",
        "head.modulation",
    ]:
        assert key in names, key


def test_real_preset_builds_on_meta_with_1_3b_parameters():
    from arvid.runtime.model import CausalWanModel

    with torch.device("meta"):
        model = CausalWanModel(get_preset("wan2.1-t2v-1.3b").model)
    n = sum(p.numel() for p in model.parameters())
    assert 1.2e9 < n < 1.5e9, n
    assert get_preset("wan2.1-t2v-1.3b").tokens_per_frame == 1560


def test_timestep_embedding_is_cos_then_sin():
    emb = sinusoidal_embedding(8, torch.tensor([0.0, 1.0]))
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(1.0)))


def test_checkpoint_mismatch_is_named():
    sd = build_model(TINY.model).state_dict()
    sd.pop("head.head.weight")
    sd["blocks.0.extra"] = torch.zeros(1)
    sd["blocks.0.ffn.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"missing keys.*head\.head\.weight(.|\n)*unexpected(.|\n)*shape"):
        build_model(TINY.model, state_dict=sd)


def test_bad_latents_are_rejected():
    model = build_model(TINY.model)
    text = torch.zeros(1, TINY.model.text_len, TINY.model.text_dim)
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 1, 4, 8, 8), torch.zeros(1, 1), text)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.zeros(1, 1, 16, 7, 8), torch.zeros(1, 1), text)
    with pytest.raises(ValueError, match="text embeddings"):
        model(torch.zeros(1, 1, 16, 8, 8), torch.zeros(1, 1), torch.zeros(1, 4, 5))
