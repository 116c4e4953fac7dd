"""Wan VAE: streaming decode (cache kept across chunks) equals one-shot decode; loaders for both layouts."""

import pytest
import torch

from arvid.runtime.vae import TINY_VAE_CONFIG, StreamingVAEDecoder, load_vae, tiny_vae, video_frames


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(seed=0)


def _one_shot(vae, latents):
    """diffusers' own whole-video decode, after WanPipeline's un-normalisation."""
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(latents.transpose(1, 2) * std + mean, return_dict=False)[0]
    return video.transpose(1, 2)  # [B, T, 3, H, W]


@pytest.mark.parametrize("chunks", [(3, 1, 1), (1, 1, 1, 1, 1)])
def test_streaming_decode_equals_one_shot(vae, chunks):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, sum(chunks), 16, 2, 4, generator=g)
    want = _one_shot(vae, latents)
    dec = StreamingVAEDecoder(vae)
    parts, start = [], 0
    for n in chunks:
        out = dec.decode(latents[:, start : start + n])
        assert out.shape[1] == (video_frames(n) if start == 0 else 4 * n)
        parts.append(out)
        start += n
    got = torch.cat(parts, dim=1)
    assert got.shape == want.shape == (1, video_frames(5), 3, 16, 32)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # reset() starts a new video; a second decoder on the same VAE keeps its own cache
    dec.reset()
    other = StreamingVAEDecoder(vae)
    assert torch.allclose(dec.decode(latents[:, :3]), want[:, : video_frames(3)], atol=1e-5)
    assert torch.allclose(other.decode(latents[:, :3]), want[:, : video_frames(3)], atol=1e-5)


def test_frame_bookkeeping():
    assert [video_frames(f) for f in (0, 1, 2, 3, 21, 120)] == [0, 1, 5, 9, 81, 477]


def test_diffusers_vae_directory(tmp_path, vae):
    vae.save_pretrained(str(tmp_path / "vae"))
    loaded = load_vae(tmp_path / "vae")
    for (k, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def _wan_names(diffusers_sd):
    """Original Wan VAE names for a diffusers state dict: invert diffusers' converter by running it
    over every candidate original name of this structure."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    subs = ["residual.0.gamma", "residual.2.weight", "residual.2.bias", "residual.3.gamma", "residual.6.weight",
            "residual.6.bias", "shortcut.weight", "shortcut.bias", "resample.1.weight", "resample.1.bias",
            "time_conv.weight", "time_conv.bias"]  # fmt: skip
    candidates = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    for part in ("encoder", "decoder"):
        candidates += [f"{part}.conv1.weight", f"{part}.conv1.bias", f"{part}.head.0.gamma"]
        candidates += [f"{part}.head.2.weight", f"{part}.head.2.bias"]
        for m in (0, 2):
            candidates += [f"{part}.middle.{m}.{s}" for s in subs[:6]]
        candidates += [f"{part}.middle.1.{s}" for s in ("norm.gamma", "to_qkv.weight", "to_qkv.bias")]
        candidates += [f"{part}.middle.1.{s}" for s in ("proj.weight", "proj.bias")]
        group = "downsamples" if part == "encoder" else "upsamples"
        candidates += [f"{part}.{group}.{i}.{s}" for i in range(16) for s in subs]
    inverse = {new: old for new, old in convert_wan_vae_to_diffusers({c: c for c in candidates}).items()}
    missing = [k for k in diffusers_sd if k not in inverse]
    assert not missing, missing
    return {inverse[k]: v for k, v in diffusers_sd.items()}


def test_original_wan_vae_pth(tmp_path, vae):
    torch.save(_wan_names(vae.state_dict()), tmp_path / "Wan2.1_VAE.pth")
    loaded = load_vae(tmp_path / "Wan2.1_VAE.pth", config=TINY_VAE_CONFIG)
    for (k, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_bad_vae_files(tmp_path, vae):
    sd = _wan_names(vae.state_dict())
    sd.pop("decoder.head.2.weight")
    torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(ValueError, match=r"(?s)Wan2\.1_VAE\.pth: does not match .*decoder\.conv_out\.weight"):
        load_vae(tmp_path / "Wan2.1_VAE.pth", config=TINY_VAE_CONFIG)
    with pytest.raises(ValueError, match="does not exist"):
        load_vae(tmp_path / "missing.pth")
    (tmp_path / "vae").mkdir()
    with pytest.raises(ValueError, match=r"VAE directory .*vae has no config\.json"):
        load_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match=r"latents must be \[B, F, 16, H, W\]"):
        StreamingVAEDecoder(vae).decode(torch.zeros(1, 3, 8, 4, 4))
