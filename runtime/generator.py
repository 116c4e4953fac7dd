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
from typing import TYPE_CHECKING

import torch

from .attention import backend_names, default_backend, get_backend
from .chunk_runner import ChunkExecutor, ChunkRunner, executor_names, get_executor
from .config import StreamConfig
from .model import CausalWanModel
from .scheduler import FlowMatchScheduler

if TYPE_CHECKING:
    from .parallel import SequenceParallel


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
    """Runs the streaming algorithm with one model and one chunk executor.

    Parameters
    ----------
    model : the causal Wan DiT.
    stream : streaming settings (defaults: LongLive's).
    latent_size : ``(H, W)`` of the latents, e.g. ``(60, 104)`` for 832x480 video.
    batch_size : videos generated together.
    backend : an attention backend (``"eager"``, the reference-style baseline; ``"sdpa"``;
        ``"triton"``), an engine registered with ``register_executor`` (``"functional"``, and with
        ``arvid.export`` imported ``"ort"``, ``"aoti"``, ...), or ``None`` for the fastest attention
        backend that runs on the model's device.
    cuda_graphs : capture each chunk's work (4 denoising forwards, re-noising, clean-context
        update) as a CUDA graph and replay it (see ``chunk_runner.py``). Without it the same static
        code runs eagerly.
    graph_granularity : ``"chunk"`` (one graph per chunk) or ``"step"`` (one per forward).
    kv_cache_dtype : ``torch.float8_e4m3fn`` for an FP8 KV cache (ring backends), else the model's.
    engine_flags, engine_options : passed to an engine's factory (e.g. ``{"int8"}`` for ``ort+int8``).
    sequence_parallel : run every forward Ulysses sequence parallel over this group (``parallel.py``):
        each rank's cache holds its heads only; the inputs of :meth:`stream` are rank 0's on every
        rank (broadcast). Attention backends only, no CUDA graphs.
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
        engine_flags: frozenset[str] | set[str] = frozenset(),
        engine_options: dict | None = None,
        sequence_parallel: SequenceParallel | None = None,
    ) -> None:
        self.model = model
        self.sequence_parallel = sequence_parallel
        self.stream_cfg = stream or StreamConfig()
        self.scheduler = FlowMatchScheduler(self.stream_cfg)
        param = model.patch_embedding.weight
        self.device, self.dtype = param.device, param.dtype
        h, w = latent_size
        _, ph, pw = model.cfg.patch_size
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        self.latent_size = (h, w)
        self.batch_size = batch_size
        name = backend or default_backend(self.device, self.dtype)
        engine = get_executor(name)
        if sequence_parallel is not None and (engine is not None or cuda_graphs):
            raise ValueError("sequence parallel runs the attention backends eagerly: no engines, no CUDA graphs yet")
        if engine is not None:
            if cuda_graphs or kv_cache_dtype is not None:
                raise ValueError(f"engine {name!r}: CUDA graphs and the KV-cache dtype are the engine's own options")
            self.backend_name = name
            self.executor: ChunkExecutor = engine.factory(
                model, self.stream_cfg, latent_size=self.latent_size, batch_size=batch_size,
                flags=frozenset(engine_flags), **(engine_options or {}),
            )  # fmt: skip
            return
        if name not in backend_names():
            raise ValueError(
                f"unknown attention backend or engine {name!r}; choose one of {backend_names() + executor_names()}"
            )
        if engine_flags or engine_options:
            raise ValueError(f"attention backend {name!r} takes no engine options")
        attn = get_backend(name, self.device, self.dtype)
        self.backend_name = attn.name
        make_cache = (
            attn.make_cache
            if sequence_parallel is None
            else lambda *a, **kw: sequence_parallel.make_cache(attn, *a, **kw)
        )
        cache = make_cache(
            model.cfg, self.stream_cfg, batch_size=batch_size, patch_grid=(h // ph, w // pw),
            device=self.device, dtype=self.dtype, kv_dtype=kv_cache_dtype,
        )  # fmt: skip
        self.executor = ChunkRunner(
            model, cache, attn, self.stream_cfg, latent_size=self.latent_size, batch_size=batch_size,
            cuda_graphs=cuda_graphs, granularity=graph_granularity,
        )  # fmt: skip

    # -- what benchmarks read ----------------------------------------------------------------
    @property
    def kv_cache_nbytes(self) -> int:
        return self.executor.kv_cache_nbytes

    @property
    def last_host_ms(self) -> float:
        """Host time of the last chunk (launches or graph replays, no sync)."""
        return self.executor.last_host_ms

    @torch.no_grad()
    def capture(self, prompt: torch.Tensor) -> float:
        """Capture CUDA graphs up front with ``prompt`` ``[B, text_len, text_dim]``; returns seconds
        (0 where the executor captures nothing). Streams after it replay them without capturing."""
        self._check_prompts([prompt])
        self.executor.set_prompt(self.model.text_kv(prompt.to(self.device)))
        return self.executor.capture()

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
        sp = self.sequence_parallel
        if sp is not None:  # every rank runs rank 0's inputs, whatever its own RNG or terminal gave
            noise, prompts = sp.broadcast(noise.to(self.device)), [sp.broadcast(p.to(self.device)) for p in prompts]
            local_renoise, device = renoise_fn, self.device
            renoise_fn = sp.broadcast_source(lambda ci, si: local_renoise(ci, si).to(device))
            prompt_source = sp.broadcast_prompt_source(prompt_source, prompts[0])

        runner = self.executor
        runner.prepare(num_frames)
        runner.set_prompt(self.model.text_kv(prompts[0].to(self.device)))
        # The last attention_frames generated latents, for a re-cache: memory flat in video length.
        history = torch.zeros(self.batch_size, cfg.attention_frames, *noise.shape[2:], device=self.device)
        for ci in range(num_chunks):
            fs = ci * chunk
            new_prompt = prompt_source(fs) if ci > 0 else None
            if new_prompt is not None:
                self._check_prompts([new_prompt])
                runner.set_prompt(self.model.text_kv(new_prompt.to(self.device)))
                runner.recache(fs, history)
            renoise_chunk = [renoise_fn(ci, si) for si in range(len(self.scheduler) - 1)]
            x0 = runner.run_chunk(noise[:, fs : fs + chunk], renoise_chunk, fs).clone()
            history = torch.cat([history[:, chunk:], x0], dim=1)
            yield ChunkOutput(ci, fs, x0, new_prompt is not None)

    def generate(self, noise: torch.Tensor, prompts, switch_frames: Sequence[int] = (), **kwargs) -> torch.Tensor:
        """Run :meth:`stream` to the end; returns the latents ``[B, F, C, H, W]`` (float32)."""
        return torch.cat([c.latents for c in self.stream(noise, prompts, switch_frames, **kwargs)], dim=1)

    # -- pieces ------------------------------------------------------------------------------
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
