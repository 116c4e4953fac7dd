"""The Wan2.1 VAE (diffusers' ``AutoencoderKLWan``) and its streaming decoder.

``AutoencoderKLWan._decode`` decodes one latent frame at a time through causal 3D convolutions
whose last input frames are kept in a feature cache (``_feat_map``). Decoding a whole video resets
that cache once; :class:`StreamingVAEDecoder` keeps it alive across chunks instead, so each chunk
of latents is turned into video frames as soon as the DiT finishes it, and the frames equal those
of a one-shot decode of the whole latent video. Latent frame 0 gives 1 video frame, every later one
gives 4: F latent frames -> 1 + 4 (F - 1) video frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_state_dict, state_dict_mismatch
from .optional import require

# Wan2.1's VAE (wan/modules/vae.py: _video_vae with dim 96, z_dim 16); latents_mean / latents_std
# are left to AutoencoderKLWan's defaults, which are Wan2.1's per-channel statistics.
WAN21_VAE_CONFIG = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)
# The tiny preset's VAE: Wan2.1's structure (same temporal / spatial strides), 12x fewer channels.
TINY_VAE_CONFIG = dict(WAN21_VAE_CONFIG, base_dim=8)


def video_frames(latent_frames: int) -> int:
    """Video frames decoded from ``latent_frames`` latent frames: 1 + 4 (F - 1)."""
    return 0 if latent_frames <= 0 else 1 + 4 * (latent_frames - 1)


def latent_frames_for_seconds(seconds: float, fps: int, chunk: int) -> int:
    """Latent frames for at least ``seconds`` of video: 1 + 4 (F - 1) >= seconds * fps, rounded up to
    whole chunks."""
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    want = max(1, round(seconds * fps))
    frames = 1 + -(-(want - 1) // 4)
    return -(-frames // chunk) * chunk


def load_vae(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: dict | None = None,
):
    """Wan2.1's VAE from a diffusers ``vae/`` directory, or from the original ``Wan2.1_VAE.pth``
    (converted with diffusers' ``convert_wan_vae_to_diffusers``). The original file has no config:
    unless ``config`` is given it is Wan2.1's structure with ``base_dim`` / ``z_dim`` read off the
    weights, passed explicitly so nothing is fetched."""
    AutoencoderKLWan = require("diffusers", "AutoencoderKLWan", purpose="the Wan VAE")

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"VAE directory {path} has no config.json")
        try:
            vae = AutoencoderKLWan.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{path}: cannot load the Wan VAE ({e})") from None
        return nn.Module.to(vae, device).eval().requires_grad_(False)
    convert_wan_vae_to_diffusers = require(
        "diffusers.loaders.single_file_utils", "convert_wan_vae_to_diffusers", purpose="the Wan VAE"
    )

    sd = convert_wan_vae_to_diffusers(load_state_dict(path))
    if config is None:  # Wan2.1's structure; the widths read off the weights
        try:
            widths = dict(base_dim=sd["encoder.conv_in.weight"].shape[0], z_dim=sd["post_quant_conv.weight"].shape[0])
        except KeyError as e:
            raise ValueError(f"{path}: not a Wan VAE checkpoint (no {e.args[0]!r} after conversion)") from None
        config = dict(WAN21_VAE_CONFIG, **widths)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    problems = state_dict_mismatch(vae.state_dict(), sd)
    if problems:
        raise ValueError(
            f"{path}: does not match Wan2.1's VAE (keys named after diffusers' conversion)"
            + "".join(f"\n  {p}" for p in problems)
        )
    vae.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, assign=True)
    return vae.eval().requires_grad_(False)


def tiny_vae(*, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A small random ``AutoencoderKLWan`` (:data:`TINY_VAE_CONFIG`) for the tiny preset: no files."""
    AutoencoderKLWan = require("diffusers", "AutoencoderKLWan", purpose="the Wan VAE (decoding video)")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**TINY_VAE_CONFIG)
    # nn.Module.to: diffusers' ModelMixin.to warns about dtype casts that do not concern this VAE
    return nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)


class StreamingVAEDecoder:
    """Decode latents chunk by chunk with the causal-convolution cache kept across chunks.

    Parameters
    ----------
    vae : diffusers ``AutoencoderKLWan`` (Wan2.1 layout: no patchify).

    Call :meth:`reset` before a new video; then :meth:`decode` each chunk in order. The cache is
    the decoder's own, so several decoders may share one VAE.
    """

    def __init__(self, vae) -> None:
        if getattr(vae.config, "patch_size", None) is not None:
            raise ValueError("streaming decode supports the Wan2.1 VAE (no patch_size); got a patchified VAE")
        self.vae = vae
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        z = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.reset()

    def reset(self) -> None:
        # The causal-conv cache lives here, not in the VAE: decoders can share one VAE's weights.
        self.vae.clear_cache()
        self._feat_map: list = [None] * len(self.vae._feat_map)
        self.latent_frames = 0  # latent frames decoded so far in this video

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames of the video.

        Parameters
        ----------
        latents : ``[B, F, C, H, W]`` the DiT's (normalised) latents, frame-major as the generator yields them.

        Returns
        -------
        ``[B, T, 3, 8H, 8W]`` float32 in [-1, 1]; T = 1 + 4 (F - 1) for the first chunk, 4 F after.
        """
        if latents.dim() != 5 or latents.shape[2] != self.vae.config.z_dim:
            raise ValueError(f"latents must be [B, F, {self.vae.config.z_dim}, H, W], got {tuple(latents.shape)}")
        z = latents.transpose(1, 2).float()  # [B, C, F, H, W]
        z = z * self.std.to(z.device) + self.mean.to(z.device)  # un-normalise, as WanPipeline does
        x = self.vae.post_quant_conv(z.to(self.device, self.dtype))  # 1x1x1: no temporal context
        outs = []
        for i in range(x.shape[2]):
            outs.append(
                self.vae.decoder(
                    x[:, :, i : i + 1], feat_cache=self._feat_map, feat_idx=[0], first_chunk=self.latent_frames == 0
                )
            )
            self.latent_frames += 1
        video = torch.cat(outs, dim=2).float().clamp_(-1.0, 1.0)  # [B, 3, T, H, W]
        return video.transpose(1, 2)
