"""The chunk step: one DiT forward over explicit state, and the whole chunk built from it.

:func:`denoise_step` is the one forward every executor runs: latents, timesteps (or their
sinusoid), the text K/V, a KV cache and the plan's frame offset in; x0 out, and the forward's own
K/V stored by the cache (written in place by a ring cache, collected by a functional one).
:func:`chunk_loop` is the one chunk built from it (denoising steps -> re-noise -> clean-context
pass). Eager runs, CUDA-graph capture, ``torch.compile``, ONNX, AOTInductor and TensorRT all run
them, so parity with the eager baseline carries over to every artifact.

:class:`FunctionalStep` and :class:`FunctionalChunk` are that function with the cache as explicit
tensors (``FunctionalKVCache``): everything in, ``(x0, new_k, new_v)`` out, no in-place writes,
static shapes for every fill state. They are what ``arvid.export`` traces, and, run eagerly, the
reference every engine is compared with (executor ``functional``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from .config import StreamConfig
from .kv_cache import FunctionalKVCache, KVCache
from .model import CausalWanModel, sinusoidal_embedding
from .scheduler import FlowMatchScheduler

_T = TypeVar("_T")


def denoise_step(
    model: CausalWanModel,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    text_kv: list[tuple[torch.Tensor, torch.Tensor]],
    cache: KVCache,
    plan,
    *,
    frame_offset: int | torch.Tensor,
    t: torch.Tensor | None = None,
    t_freq: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DiT forward on the frames ``x`` ``[B, F, C, H, W]``; returns ``x0 = x - sigma * flow``.

    The cache stores the frames' K/V (RoPE at ``frame_offset``) per ``plan`` and the queries
    attend to the plan's valid keys, their own included. Timesteps come as ``t`` ``[B, F]`` or as
    their sinusoid ``t_freq`` ``[B, F, freq_dim]``.
    """
    flow = model(x, t, text_kv, frame_offset=frame_offset, cache=cache, plan=plan, t_freq=t_freq)
    return FlowMatchScheduler.flow_to_x0(x, flow, sigma)


def denoise_and_renoise(
    scheduler: FlowMatchScheduler,
    forward: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    si: int,
    renoise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Denoising step ``si`` of a chunk: ``x0 = forward(x, si)``, then, unless it is the last step,
    re-noise ``x0`` to the next step's sigma with ``renoise`` ``[B, F, C, H, W]``.

    Returns ``(x0, x of step si + 1)`` (``None`` after the last step). One step of :func:`chunk_loop`:
    runners that run (or capture) a chunk step by step call it directly.
    """
    x0 = forward(x, si)
    if si + 1 >= len(scheduler):
        return x0, None
    return x0, scheduler.add_noise(x0, renoise, scheduler.sigmas[si + 1])


def chunk_loop(
    scheduler: FlowMatchScheduler,
    forward: Callable[[torch.Tensor, int], torch.Tensor],
    clean: Callable[[torch.Tensor], _T],
    x: torch.Tensor,
    renoise: Sequence[torch.Tensor],
) -> _T:
    """The chunk, written once (LongLive's Algorithm 2): every denoising step (:func:`denoise_and_renoise`)
    from the chunk's noise ``x``, re-noising between steps with ``renoise[si]``, then the clean-context
    pass ``clean(x0)`` on the last x0, whose result is returned.

    ``forward(x, si)`` is one DiT forward at step ``si`` returning x0; what it runs on (a ring cache
    written in place, a functional cache, an engine's graph) is the caller's. Every executor runs
    this: :class:`~arvid.runtime.chunk_runner.ChunkRunner` (eager and CUDA graphs, one step at a
    time), :class:`~arvid.runtime.chunk_runner.GraphRunner` (engines) and :class:`FunctionalChunk`
    (what exporters trace).
    """
    x0 = x
    for si in range(len(scheduler)):
        x0, x = denoise_and_renoise(scheduler, forward, x, si, renoise[si] if si + 1 < len(scheduler) else None)
    return clean(x0)


def _text_kv(text_k: torch.Tensor, text_v: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(text_k.unbind(0), text_v.unbind(0), strict=True))


class FunctionalStep(nn.Module):
    """One forward of ``num_frames`` latent frames over a functional cache (a denoising step, the
    clean-context update, or a KV re-cache span).

    ``forward(x, t_freq, sigma, text_k, text_v, cache_k, cache_v, write_start, kv_len, frame_offset)``
    -> ``(x0, new_k, new_v)``:

    ============  ======================  ===========================================================
    x             [B, F, C, H, W] f32     latents
    t_freq        [B, F, freq_dim] f32    :func:`~arvid.runtime.model.sinusoidal_embedding` of the
                                          timesteps, computed on the host (float64 stays out)
    sigma         [1] f32                 x0 = x - sigma * flow (0 where only the K/V matter)
    text_k/v      [L, B, H, Lt, D]        cross-attention K/V per layer, model dtype
    cache_k/v     [L, B, S, H, D]         the ring buffers before the forward, model dtype
    write_start   [1] int32               first token slot the new K/V go to
    kv_len        [B] int32               valid tokens, new ones included
    frame_offset  [1] int32               absolute latent frame of ``x[:, 0]`` (RoPE position)
    x0            [B, F, C, H, W] f32
    new_k/v       [L, B, F*T, H, D]       K (rotated) and V of the frames, for the host's ring write
    ============  ======================  ===========================================================
    """

    def __init__(self, model: CausalWanModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, t_freq, sigma, text_k, text_v, cache_k, cache_v, write_start, kv_len, frame_offset):
        cache = FunctionalKVCache(cache_k, cache_v, write_start, kv_len)
        x0 = denoise_step(
            self.model, x, sigma, _text_kv(text_k, text_v), cache, None, frame_offset=frame_offset, t_freq=t_freq
        )
        return (x0, *cache.new_kv())


class FunctionalChunk(nn.Module):
    """A whole chunk over a functional cache: every denoising step (timesteps baked in), re-noising
    between them, then the clean-context forward whose K/V come out.

    ``forward(x, renoise, text_k, text_v, cache_k, cache_v, write_start, kv_len, frame_offset)``
    -> ``(x0, new_k, new_v)``; ``renoise`` ``[steps - 1, B, F, C, H, W]`` f32, the rest as in
    :class:`FunctionalStep`. The denoising steps' own K/V need no ring write: each step attends
    to them directly and the next overwrites them, so only the clean pass's K/V leave the graph.
    """

    def __init__(self, model: CausalWanModel, stream: StreamConfig, batch_size: int = 1) -> None:
        super().__init__()
        self.model = model
        self.scheduler = FlowMatchScheduler(stream)
        b, f = batch_size, stream.chunk_frames
        freq = lambda t: sinusoidal_embedding(model.cfg.freq_dim, torch.full((b, f), t))
        self.register_buffer("t_freq", torch.stack([freq(t) for t in self.scheduler.timesteps]), persistent=False)
        self.register_buffer("t_freq_context", freq(self.scheduler.context_timestep), persistent=False)

    def forward(self, x, renoise, text_k, text_v, cache_k, cache_v, write_start, kv_len, frame_offset):
        sched, text_kv = self.scheduler, _text_kv(text_k, text_v)
        t_freq, t_ctx = self.t_freq.to(x.device), self.t_freq_context.to(x.device)

        def forward(x: torch.Tensor, si: int) -> torch.Tensor:
            # the denoising steps' own K/V are not kept: each step attends to them directly
            cache = FunctionalKVCache(cache_k, cache_v, write_start, kv_len)
            sigma = sched.sigmas[si]
            return denoise_step(
                self.model, x, sigma, text_kv, cache, None, frame_offset=frame_offset, t_freq=t_freq[si]
            )

        def clean(x0: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cache = FunctionalKVCache(cache_k, cache_v, write_start, kv_len)
            denoise_step(self.model, x0, 0.0, text_kv, cache, None, frame_offset=frame_offset, t_freq=t_ctx)
            return (x0, *cache.new_kv())

        return chunk_loop(sched, forward, clean, x, renoise)
