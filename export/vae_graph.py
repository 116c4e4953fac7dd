"""The streaming Wan VAE decoder step as a functional graph: ``(z, 32 caches) -> (video, 32 caches)``.

``StreamingVAEDecoder`` (runtime/vae.py) decodes one latent frame at a time through causal 3D
convolutions whose last input frames it keeps in a feature cache. From the third latent frame on
(index >= 2) that cache is 32 tensors of fixed shapes, so one static graph decodes every later
frame: the caches come in as inputs and the updated ones come out (no state inside the graph).

Latent frames 0 and 1 are different: frame 0 starts from empty caches (``None``) and the "Rep"
sentinel of the upsamplers, frame 1 sees single-frame caches. They stay **eager**
(:class:`GraphVAEDecoder` runs them through the VAE itself, then hands the caches to the graph);
the manifest of a ``vae-step`` export says so (``meta["eager_frames"] = [0, 1]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arvid.runtime.vae import StreamingVAEDecoder

EAGER_FRAMES = 2  # latent frames 0 and 1 are decoded eagerly


class VAEStepGraph(nn.Module):
    """One latent frame (index >= 2) of the streaming decode.

    forward(z, *caches) -> (video, *new_caches)
      z      [B, 1, C, H, W] float32, the DiT's normalised latent frame
      caches 32 tensors, the causal-conv caches (shapes from :meth:`cache_shapes`)
      video  [B, 4, 3, 8H, 8W] float32 in [-1, 1]
    """

    def __init__(self, vae) -> None:
        super().__init__()
        if getattr(vae.config, "patch_size", None) is not None:
            raise ValueError("the VAE step graph supports the Wan2.1 VAE (no patch_size)")
        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.register_buffer("std", torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.num_slots = len(vae._feat_map)

    def forward(self, z: torch.Tensor, *caches: torch.Tensor):
        dtype = self.vae.post_quant_conv.weight.dtype
        x = z.transpose(1, 2).float() * self.std + self.mean
        x = self.vae.post_quant_conv(x.to(dtype))
        feat = [*caches, *([None] * (self.num_slots - len(caches)))]
        video = self.vae.decoder(x, feat_cache=feat, feat_idx=[0], first_chunk=False)
        video = video.float().clamp(-1.0, 1.0).transpose(1, 2)
        return (video, *feat[: len(caches)])


def warm_caches(vae, latents: torch.Tensor) -> tuple[list[torch.Tensor], StreamingVAEDecoder]:
    """Decode the first two latent frames eagerly; returns the 32 caches the graph continues from."""
    dec = StreamingVAEDecoder(vae)
    dec.decode(latents[:, :EAGER_FRAMES])
    caches = [t for t in dec._feat_map if isinstance(t, torch.Tensor)]
    if len(caches) != sum(t is not None for t in dec._feat_map):
        raise ValueError("the VAE cache holds non-tensor entries after two frames: not a Wan2.1 decoder")
    return caches, dec


def vae_step_example(vae, latent_size: tuple[int, int], *, batch_size: int = 1, seed: int = 0):
    """``(graph, example_inputs, spec)`` for the VAE step, the caches warmed on seeded latents."""

    g = torch.Generator().manual_seed(seed)
    param = next(vae.parameters())
    lat = torch.randn(batch_size, EAGER_FRAMES + 1, vae.config.z_dim, *latent_size, generator=g).to(param.device)
    caches, _ = warm_caches(vae, lat)
    graph = VAEStepGraph(vae).eval()
    inputs = (lat[:, EAGER_FRAMES:], *caches)
    with torch.no_grad():
        outs = graph(*inputs)
    spec = {
        "name": "vae-step",
        "inputs": [{"name": "z", "shape": tuple(inputs[0].shape), "dtype": inputs[0].dtype}]
        + [{"name": f"cache_{i}", "shape": tuple(c.shape), "dtype": c.dtype} for i, c in enumerate(caches)],
        "outputs": [{"name": "video", "shape": tuple(outs[0].shape), "dtype": outs[0].dtype}]
        + [{"name": f"new_cache_{i}", "shape": tuple(c.shape), "dtype": c.dtype} for i, c in enumerate(outs[1:])],
        "meta": {
            "eager_frames": list(range(EAGER_FRAMES)),
            "note": "latent frames 0 and 1 are decoded eagerly (empty / single-frame caches); the graph "
            "decodes every later frame",
        },
    }
    return graph, inputs, spec


class GraphVAEDecoder:
    """``StreamingVAEDecoder``'s API with frames >= 2 run by ``step`` (an ORT / TensorRT / AOTI callable
    taking ``(z, *caches)`` and returning ``(video, *caches)``); frames 0 and 1 run eagerly."""

    def __init__(self, vae, step: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        self.eager = StreamingVAEDecoder(vae)
        self.step = step
        self.reset()

    def reset(self) -> None:
        self.eager.reset()
        self.caches: list[torch.Tensor] | None = None
        self.latent_frames = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(latents.shape[1]):
            frame = latents[:, i : i + 1]
            if self.latent_frames < EAGER_FRAMES:
                outs.append(self.eager.decode(frame))
                if self.eager.latent_frames == EAGER_FRAMES:
                    self.caches = [t for t in self.eager._feat_map if isinstance(t, torch.Tensor)]
            else:
                video, *self.caches = self.step(frame.float(), *self.caches)
                outs.append(video)
            self.latent_frames += 1
        return torch.cat(outs, dim=1)
