"""The streaming generator: chunk by chunk, few-step denoising over the KV cache, prompt switches.

Per chunk (LongLive's Algorithm 2): for each denoising step run the DiT on the chunk's noisy
latents (its own K/V are written into its cache slots and attended to, bidirectionally within
the chunk), convert the flow to x0 and re-noise to the next step; the last x0 is the chunk's
output; one more forward on that clean x0 at t = context_noise overwrites the chunk's slots
with clean K/V. At a prompt switch the cross-attention K/V are recomputed from the new prompt
and the self-attention cache is re-built from the last frames (KV re-cache, see
``RingKVCache.plan_recache``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .attention import default_backend, get_backend
from .baseline import ConcatKVCache
from .config import StreamConfig
from .graphs import ChunkRunner
from .kv_cache import RingKVCache
from .model import CausalWanModel
from .scheduler import FlowMatchScheduler


@dataclass
class ChunkOutput:
    index: int  # chunk index
    frame_start: int  # first latent frame of the chunk
    latents: torch.Tensor  # [B, chunk_frames, C, H, W] float32, the chunk's x0
    recached: bool  # a prompt switch (KV re-cache) happened right before this chunk


def validate_schedule(num_frames: int, num_prompts: int, switch_frames: Sequence[int], chunk: int) -> list[int]:
    """Check a prompt schedule; returns the switch frames as a list."""
    switches = [int(s) for s in switch_frames]
    if num_prompts < 1:
        raise ValueError("at least one prompt is needed")
    if len(switches) != num_prompts - 1:
        raise ValueError(f"{num_prompts} prompts need {num_prompts - 1} switch frames, got {len(switches)}")
    prev = 0
    for s in switches:
        if not prev < s < num_frames:
            raise ValueError(
                f"switch frame {s} out of range: switch frames must increase strictly inside (0, {num_frames})"
            )
        if s % chunk:
            raise ValueError(f"switch frame {s} is not on a chunk boundary (chunk = {chunk} latent frames)")
        prev = s
    return switches


class StreamingGenerator:
    """Runs the streaming algorithm with one model, one cache and one attention backend.

    Parameters
    ----------
    model : the causal Wan DiT.
    stream : streaming settings (defaults: LongLive's).
    latent_size : ``(H, W)`` of the latents, e.g. ``(60, 104)`` for 832x480 video.
    batch_size : videos generated together.
    backend : ``"eager"`` (the reference-style baseline), ``"sdpa"``, ``"triton"``, ... or ``None``
        for the fastest that runs on the model's device.
    cuda_graphs : capture each chunk's work (4 denoising forwards, re-noising, clean-context
        update) as a CUDA graph and replay it (see ``graphs.py``). Without it the same static
        code runs eagerly.
    """

    def __init__(
        self,
        model: CausalWanModel,
        stream: StreamConfig | None = None,
        *,
        latent_size: tuple[int, int],
        batch_size: int = 1,
        backend: str | None = None,
        cuda_graphs: bool = False,
        graph_granularity: str = "chunk",
        kv_cache_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.stream_cfg = stream or StreamConfig()
        self.scheduler = FlowMatchScheduler(self.stream_cfg)
        param = model.patch_embedding.weight
        self.device, self.dtype = param.device, param.dtype
        self.backend = get_backend(backend or default_backend(self.device, self.dtype), self.device, self.dtype)
        h, w = latent_size
        _, ph, pw = model.cfg.patch_size
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        self.latent_size = (h, w)
        self.batch_size = batch_size
        self.tokens_per_frame = (h // ph) * (w // pw)
        if self.backend.ring:
            self.cache: RingKVCache | ConcatKVCache = RingKVCache(
                model.cfg, self.stream_cfg, batch_size=batch_size, patch_grid=(h // ph, w // pw),
                backend=self.backend, rope_tables=model.rope_tables(), device=self.device, dtype=self.dtype,
                kv_dtype=kv_cache_dtype,
            )  # fmt: skip
        else:
            if kv_cache_dtype not in (None, self.dtype):
                raise ValueError(f"backend {self.backend.name!r} keeps the KV cache in the model's dtype only")
            self.cache = ConcatKVCache(
                model.cfg, self.stream_cfg, batch_size=batch_size, tokens_per_frame=self.tokens_per_frame,
                device=self.device, dtype=self.dtype,
            )  # fmt: skip
        if cuda_graphs and not self.backend.ring:
            raise ValueError(
                f"backend {self.backend.name!r} keeps host-side state per layer: it cannot be graph-captured"
            )
        self.runner = ChunkRunner(self, cuda_graphs=cuda_graphs, granularity=graph_granularity)

    # -- input checks ------------------------------------------------------------------------
    def _check_noise(self, noise: torch.Tensor) -> None:
        c = self.model.cfg.in_dim
        h, w = self.latent_size
        chunk = self.stream_cfg.chunk_frames
        if noise.dim() != 5 or noise.shape[0] != self.batch_size or noise.shape[2:] != (c, h, w):
            raise ValueError(
                f"noise must be [B, F, C, H, W] = [{self.batch_size}, F, {c}, {h}, {w}], got {tuple(noise.shape)}"
            )
        f = noise.shape[1]
        if f == 0 or f % chunk:
            raise ValueError(f"frame count {f} is not a positive multiple of the chunk ({chunk} latent frames)")

    def _check_prompts(self, prompts: Sequence[torch.Tensor]) -> None:
        cfg = self.model.cfg
        for i, p in enumerate(prompts):
            if p.dim() != 3 or p.shape[0] != self.batch_size or p.shape[2] != cfg.text_dim:
                raise ValueError(
                    f"prompt {i} embeddings must be [B, text_len, text_dim] = "
                    f"[{self.batch_size}, {cfg.text_len}, {cfg.text_dim}], got {tuple(p.shape)}"
                )

    # -- the loop ----------------------------------------------------------------------------
    @torch.no_grad()
    def stream(
        self,
        noise: torch.Tensor,
        prompts: torch.Tensor | Sequence[torch.Tensor],
        switch_frames: Sequence[int] = (),
        *,
        prompt_source: Callable[[int], torch.Tensor | None] | None = None,
        renoise: torch.Tensor | Callable[[int, int], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[ChunkOutput]:
        """Generate chunk by chunk, yielding each chunk's latents as soon as it is done.

        Parameters
        ----------
        noise : ``[B, F, C, H, W]`` the initial noise of every latent frame; F sets the length.
        prompts : one ``[B, text_len, text_dim]`` embedding, or one per prompt segment.
        switch_frames : latent frames where prompt i+1 takes over (chunk boundaries, increasing).
        prompt_source : instead of a fixed schedule, ``prompt_source(frame_start)`` is asked at every
            chunk boundary after the first; embeddings switch the prompt there (KV re-cache, as a
            scheduled switch does), ``None`` keeps the current one. ``prompts`` is then the first prompt.
        renoise : the noise for each re-noising between steps: a tensor
            ``[num_chunks, steps - 1, B, chunk, C, H, W]`` or a callable ``(chunk, step) -> noise``.
            Default: drawn from ``generator`` (or the global RNG) on the model's device.
        """
        cfg = self.stream_cfg
        prompts = [prompts] if isinstance(prompts, torch.Tensor) else list(prompts)
        self._check_noise(noise)
        self._check_prompts(prompts)
        num_frames = noise.shape[1]
        chunk = cfg.chunk_frames
        num_chunks = num_frames // chunk
        if prompt_source is not None:
            if switch_frames or len(prompts) != 1:
                raise ValueError("with a prompt_source give exactly one starting prompt and no switch_frames")
        else:
            switches = validate_schedule(num_frames, len(prompts), switch_frames, chunk)
            prompt_source = dict(zip(switches, prompts[1:], strict=True)).get
        renoise_fn = self._renoise_source(renoise, num_chunks, noise, generator)
        self._ensure_rope(max(num_frames, *self.latent_size))

        self.cache.reset()
        self.runner.set_prompt(self.model.text_kv(prompts[0].to(self.device)))
        # The last attention_frames generated latents, for a re-cache: memory flat in video length.
        history = torch.zeros(self.batch_size, cfg.attention_frames, *noise.shape[2:], device=self.device)
        for ci in range(num_chunks):
            fs = ci * chunk
            new_prompt = prompt_source(fs) if ci > 0 else None
            if new_prompt is not None:
                self._check_prompts([new_prompt])
                self.runner.set_prompt(self.model.text_kv(new_prompt.to(self.device)))
                self.runner.recache(fs, history)
            renoise_chunk = [renoise_fn(ci, si) for si in range(len(self.scheduler) - 1)]
            x0 = self.runner.run_chunk(noise[:, fs : fs + chunk], renoise_chunk, fs).clone()
            history = torch.cat([history[:, chunk:], x0], dim=1)
            yield ChunkOutput(ci, fs, x0, new_prompt is not None)

    def generate(self, noise: torch.Tensor, prompts, switch_frames: Sequence[int] = (), **kwargs) -> torch.Tensor:
        """Run :meth:`stream` to the end; returns the latents ``[B, F, C, H, W]`` (float32)."""
        return torch.cat([c.latents for c in self.stream(noise, prompts, switch_frames, **kwargs)], dim=1)

    # -- pieces ------------------------------------------------------------------------------
    def _ensure_rope(self, positions: int) -> None:
        """Grow the RoPE tables to cover ``positions`` before any chunk (graphs hold the old ones)."""
        tables = self.model.rope_tables(positions)
        if getattr(self.cache, "rope_tables", tables) is not tables:
            self.cache.rope_tables = tables
            self.runner.graphs.clear()

    def _renoise_source(self, renoise, num_chunks: int, noise: torch.Tensor, generator: torch.Generator | None):
        cfg = self.stream_cfg
        shape = (self.batch_size, cfg.chunk_frames, *noise.shape[2:])
        if renoise is None:
            dev = generator.device if generator is not None else self.device
            return lambda ci, si: torch.randn(shape, generator=generator, device=dev)
        if callable(renoise):
            return renoise
        steps = len(self.scheduler) - 1
        want = (num_chunks, steps, *shape)
        if tuple(renoise.shape) != want:
            raise ValueError(
                f"renoise must be [num_chunks, steps - 1, B, chunk, C, H, W] = {want}, got {tuple(renoise.shape)}"
            )
        return lambda ci, si: renoise[ci, si]
