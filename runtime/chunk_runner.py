"""Chunk executors: what runs one chunk (4 denoising forwards, re-noising, the clean-context update)
and a KV re-cache for :class:`~arvid.runtime.generator.StreamingGenerator`.

:class:`ChunkRunner` runs the chunk step on a backend's KV cache over static buffers, optionally
captured as CUDA graphs. A 5-forward chunk of a 30-layer model launches hundreds of small kernels
per forward; replaying a captured graph removes the Python and launch overhead between them.
Everything the captured work reads or writes lives at a fixed address: the chunk's input noise
and re-noise, the timesteps, the text K/V, the ring caches and the plan's device scalars (write
offset, valid length, RoPE frame offset). Per chunk only buffer contents change (``copy_`` /
``fill_``), so there is no ``.item()``, no host sync and no Python branch on a device value inside
a chunk. Graphs are keyed by what changes the captured work: the write slot is a device scalar,
so the steady state's rotating slot is one graph; a backend that slices the valid cache prefix by
a host int (``sdpa``) needs one graph per fill state (1..4 valid chunks), one that reads the valid
length on the device (``triton``) needs one graph in all. Warm-up (Triton autotuning, cuBLAS
workspaces) runs on a side stream before each capture; all graphs share one memory pool. The KV
re-cache at a prompt switch runs eagerly: it happens once per switch.

:class:`GraphRunner` runs the functional step (``chunk_step.FunctionalStep`` or an engine built
from it: ONNX Runtime, AOTInductor, TensorRT) over a host-owned ring: the engine returns the new
K/V, the runner writes them into the plan's slots. Engines register a factory with
``arvid.runtime.executors.register_executor``; ``build_executor`` finds them there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from .attention import AttentionBackend
from .chunk_step import chunk_loop, denoise_and_renoise, denoise_step
from .config import StreamConfig
from .graphs import capture_graph
from .kv_cache import KVCache, PlanTensors, RingPlanner
from .model import CausalWanModel, sinusoidal_embedding
from .scheduler import FlowMatchScheduler


class ChunkExecutor(Protocol):
    """What the generator asks of an executor."""

    name: str  # the backend or engine, for reports (set by build_executor)
    capture_seconds: float  # warm-up + capture time spent so far (0 where nothing is captured)
    last_host_ms: float  # host time of the last run_chunk (launches / replays, no sync)

    @property
    def kv_cache_nbytes(self) -> int: ...

    def prepare(self, num_frames: int) -> None:
        """Before a stream of ``num_frames`` latent frames: reset the cache, check limits."""

    def extend(self, num_frames: int) -> None:
        """An endless stream reaches ``num_frames`` latent frames: grow or check the RoPE positions, cache untouched."""

    def set_prompt(self, text_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None: ...

    def run_chunk(self, noise: torch.Tensor, renoise: Sequence[torch.Tensor], frame_start: int) -> torch.Tensor:
        """One chunk from its initial noise; returns its x0 ``[B, chunk, C, H, W]`` (may be a static buffer)."""

    def recache(self, switch_frame: int, history: torch.Tensor) -> None:
        """KV re-cache before ``switch_frame`` from the last ``attention_frames`` generated latents."""

    def capture(self) -> float:
        """Capture whatever can be captured up front (after ``set_prompt``); returns seconds."""


def _history_span(history: torch.Tensor, switch_frame: int, stream: StreamConfig, frame_start: int, n: int):
    """Frames ``[frame_start, frame_start + n)`` out of ``history`` (the last attention_frames before the switch)."""
    first = frame_start - (switch_frame - stream.attention_frames)
    return history[:, first : first + n]


class ChunkRunner:
    """Runs chunks of :func:`~arvid.runtime.chunk_step.denoise_step` on a backend's cache, on static buffers.

    ``granularity="chunk"`` captures a chunk's 5 forwards as one graph; ``"step"`` captures each
    denoising step (forward, x0, re-noise) and the clean-context update as graphs of their own,
    replayed in sequence: fewer, larger graphs against smaller ones that share more memory; which
    is faster is a measurement (``arvid bench`` variants ``+graphs`` and ``+stepgraphs``).
    """

    def __init__(
        self,
        model: CausalWanModel,
        cache: KVCache,
        backend: AttentionBackend,
        stream: StreamConfig,
        *,
        latent_size: tuple[int, int],
        batch_size: int,
        cuda_graphs: bool = False,
        granularity: str = "chunk",
    ) -> None:
        device = model.patch_embedding.weight.device
        if cuda_graphs and not backend.capturable:
            raise ValueError(f"backend {backend.name!r} keeps host-side state per layer: it cannot be graph-captured")
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {device}")
        if granularity not in ("chunk", "step"):
            raise ValueError(f"graph granularity must be 'chunk' or 'step', got {granularity!r}")
        self.name = backend.name
        self.model, self.cache, self.stream = model, cache, stream
        self.scheduler = sched = FlowMatchScheduler(stream)
        self.cuda_graphs, self.granularity = cuda_graphs, granularity
        self.kv_len_on_device = backend.kv_len_on_device
        self.batch_size = b = batch_size
        shape = (b, stream.chunk_frames, model.cfg.in_dim, *latent_size)
        self.x_in = torch.zeros(shape, device=device)
        self.renoise = torch.zeros(max(len(sched) - 1, 1), *shape, device=device)
        self.x0_out = torch.zeros(shape, device=device)
        # Step si reads x_steps[si] and writes x_steps[si + 1]: every step is idempotent, so the
        # warm-up runs before a capture cannot feed a step its own output.
        self.x_steps = [self.x_in] + [torch.zeros(shape, device=device) for _ in range(len(sched) - 1)]
        self.t_steps = [torch.full((b, stream.chunk_frames), t, device=device) for t in sched.timesteps]
        self.t_context = torch.full((b, stream.chunk_frames), sched.context_timestep, device=device)
        self.text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}
        self._graph_rope_version = -1  # the RoPE tables the graphs were captured with
        self._pool = None
        self.capture_seconds = 0.0
        self.last_host_ms = 0.0

    @property
    def kv_cache_nbytes(self) -> int:
        return self.cache.nbytes

    def prepare(self, num_frames: int) -> None:
        self.extend(num_frames)
        self.cache.reset()

    def extend(self, num_frames: int) -> None:
        # RoPE positions are absolute: grow the model's table before any chunk that needs it.
        rope = self.model.rope
        rope.ensure(max(num_frames, *self.x_in.shape[-2:]))
        if rope.version != self._graph_rope_version:  # graphs hold the old tables' addresses
            self.graphs.clear()
            self._graph_rope_version = rope.version

    # -- static inputs -----------------------------------------------------------------------
    def set_prompt(self, text_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy a prompt's cross-attention K/V into the static buffers (a switch changes contents only)."""
        same = self.text_kv is not None and all(
            a.shape == k.shape for (a, _), (k, _) in zip(self.text_kv, text_kv, strict=True)
        )
        if not same:  # first prompt, or another text length: new buffers, so old graphs are stale
            self.text_kv = [(k.clone(), v.clone()) for k, v in text_kv]
            self.graphs.clear()
            return
        for (dk, dv), (k, v) in zip(self.text_kv, text_kv, strict=True):
            dk.copy_(k)
            dv.copy_(v)

    # -- the chunk ---------------------------------------------------------------------------
    def _step(self, plan, si: int) -> None:
        """Denoising step ``si`` (forward, x0, re-noise: :func:`~arvid.runtime.chunk_step.denoise_and_renoise`),
        or with ``si == len(scheduler)`` the clean-context update that overwrites the chunk's slots with
        the K/V of its clean output: :func:`~arvid.runtime.chunk_step.chunk_loop` one step at a time, on
        static buffers (step ``si`` reads ``x_steps[si]``, writes ``x0_out`` and ``x_steps[si + 1]``)."""
        sched = self.scheduler
        if si == len(sched):
            self._forward(plan, self.x0_out, si)
            return
        renoise = self.renoise[si] if si + 1 < len(sched) else None
        x0, x_next = denoise_and_renoise(sched, lambda x, i: self._forward(plan, x, i), self.x_steps[si], si, renoise)
        self.x0_out.copy_(x0)
        if x_next is not None:
            self.x_steps[si + 1].copy_(x_next)

    def _forward(self, plan, x: torch.Tensor, si: int) -> torch.Tensor:
        """One forward of the chunk on the backend's cache: step ``si``, or the clean-context pass."""
        if si == len(self.scheduler):
            sigma, t = 0.0, self.t_context
        else:
            sigma, t = self.scheduler.sigmas[si], self.t_steps[si]
        return denoise_step(self.model, x, sigma, self.text_kv, self.cache, plan, frame_offset=plan.frame_offset, t=t)

    def run_plan(self, plan, step: int | None = None) -> None:
        """Run an activated plan's chunk work eagerly on the static buffers: what a graph captures.

        ``step=None``: the whole chunk (4 denoising steps + the clean-context update); ``step=si``:
        one of them (``si == len(scheduler)`` is the clean-context update). Reads ``x_in`` /
        ``renoise`` and the prompt, writes ``x0_out`` and the plan's cache slots; never commits.
        Running it again on the same buffers gives the same result (the warm-up before a capture).
        """
        steps = range(len(self.scheduler) + 1) if step is None else (step,)
        for si in steps:
            self._step(plan, si)

    def run_chunk(self, noise: torch.Tensor, renoise: Sequence[torch.Tensor], frame_start: int) -> torch.Tensor:
        """Run one chunk starting at latent frame ``frame_start``; returns the static x0 buffer."""
        t0 = time.perf_counter()
        cache = self.cache
        self.x_in.copy_(noise, non_blocking=True)
        for si, r in enumerate(renoise):
            self.renoise[si].copy_(r, non_blocking=True)
        plan = cache.plan_chunk(frame_start)
        cache.activate(plan)
        if self.cuda_graphs:
            for key in self.graph_keys(plan):
                (self.graphs.get(key) or self._capture(key, plan)).replay()
        else:
            self.run_plan(plan)
        cache.commit(plan)
        self.last_host_ms = (time.perf_counter() - t0) * 1000
        return self.x0_out

    def recache(self, switch_frame: int, history: torch.Tensor) -> None:
        """KV re-cache before ``switch_frame`` from the last generated latents ``history`` (eager)."""
        cache = self.cache
        plan = cache.plan_recache(switch_frame)
        cache.activate(plan)
        x = _history_span(history, switch_frame, self.stream, plan.frame_start, plan.num_frames)
        t = torch.zeros(self.batch_size, plan.num_frames, device=x.device)
        denoise_step(self.model, x, 0.0, self.text_kv, cache, plan, frame_offset=plan.frame_offset, t=t)
        cache.commit(plan)

    # -- capture -----------------------------------------------------------------------------
    @torch.no_grad()
    def capture(self) -> float:
        """Capture the graph of every fill state and the steady state up front; returns seconds.

        Runs the chunk body on whatever the buffers hold and resets the cache afterwards: each
        graph writes its chunk's slots before reading them, and slots past the valid prefix are
        never read, so the garbage it leaves is never seen. Without ``cuda_graphs``: nothing, 0 s.
        """
        if not self.cuda_graphs:
            return 0.0
        if self.text_kv is None:
            raise ValueError("capture needs a prompt (set_prompt) first")
        cache = self.cache
        t0 = time.perf_counter()
        cache.reset()
        for _ in range(self.stream.slot_chunks + 1):
            plan = cache.plan_chunk(0)
            cache.activate(plan)
            for key in self.graph_keys(plan):
                if key not in self.graphs:
                    self._capture(key, plan)
            cache.commit(plan)
        cache.reset()
        return time.perf_counter() - t0

    def graph_keys(self, plan) -> list[tuple[int, int, int]]:
        """(frames, valid length or -1, step or -1) of the graphs that make up this plan's chunk.

        In order; a key's work is ``run_plan(plan, step=None if key[2] < 0 else key[2])``.
        """
        kv = -1 if self.kv_len_on_device else plan.kv_len
        if self.granularity == "chunk":
            return [(plan.num_frames, kv, -1)]
        return [(plan.num_frames, kv, si) for si in range(len(self.scheduler) + 1)]

    def _capture(self, key: tuple[int, int, int], plan) -> torch.cuda.CUDAGraph:
        t0 = time.perf_counter()
        step = None if key[2] < 0 else key[2]
        # two warm-ups: autotuning, workspaces, allocator
        graph = capture_graph(lambda: self.run_plan(plan, step), device=self.x_in.device, pool=self._pool, warmups=2)
        self._pool = graph.pool()
        self.graphs[key] = graph
        self._graph_rope_version = self.model.rope.version  # prepare() keeps graphs of these tables
        self.capture_seconds += time.perf_counter() - t0
        return graph


# A functional step or chunk: tensors in the order of chunk_step.FunctionalStep / FunctionalChunk,
# (x0, new_k, new_v) out.
GraphFn = Callable[..., Sequence[torch.Tensor]]


class GraphRunner:
    """Runs functional graphs (the chunk step as explicit tensors) over a ring the host owns.

    Parameters
    ----------
    step : the one-forward graph at ``chunk_frames`` frames
        ``(x, t_freq, sigma, text_k, text_v, cache_k, cache_v, write_start, kv_len, frame_offset)``.
    chunk : optional whole-chunk graph ``(x, renoise, text_k, ..., frame_offset)``; without it the
        chunk is ``step`` called once per denoising step plus once for the clean-context update.
    recache_steps : one-forward graphs per re-cache span length in frames (``plan_recache`` asks
        for ``min(attention_frames, s)`` frames, or ``window_frames`` with a kept sink); a missing
        length is an error naming it. ``step`` serves spans of ``chunk_frames``.
    rope_positions : rows of the RoPE table baked into the graphs; frames past it are refused.
    """

    def __init__(
        self,
        model_cfg,
        stream: StreamConfig,
        *,
        latent_size: tuple[int, int],
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
        step: GraphFn,
        chunk: GraphFn | None = None,
        recache_steps: dict[int, GraphFn] | None = None,
        rope_positions: int,
    ) -> None:
        _, ph, pw = model_cfg.patch_size
        h, w = latent_size
        self.patch_grid = (h // ph, w // pw)
        self.planner = RingPlanner(stream, (h // ph) * (w // pw))
        self.stream, self.model_cfg = stream, model_cfg
        self.scheduler = FlowMatchScheduler(stream)
        self.step, self.chunk = step, chunk
        self.recache_steps = {stream.chunk_frames: step, **(recache_steps or {})}
        self.rope_positions = rope_positions
        self.batch_size = batch_size
        self.device = torch.device(device)
        shape = (model_cfg.num_layers, batch_size, self.planner.capacity, model_cfg.num_heads, model_cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.plan_tensors = PlanTensors.zeros(batch_size, device)
        self.text_k = self.text_v = None
        f = stream.chunk_frames
        self.t_freq = [self._t_freq(t, f) for t in self.scheduler.timesteps]
        self.t_freq_context = self._t_freq(self.scheduler.context_timestep, f)
        self.sigmas = [torch.tensor([s], device=device) for s in self.scheduler.sigmas]
        self.sigma_zero = torch.zeros(1, device=device)
        self.capture_seconds = 0.0
        self.last_host_ms = 0.0

    def _t_freq(self, t: float, frames: int) -> torch.Tensor:
        full = torch.full((self.batch_size, frames), float(t), device=self.device)
        return sinusoidal_embedding(self.model_cfg.freq_dim, full)

    @property
    def kv_cache_nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def prepare(self, num_frames: int) -> None:
        self.extend(num_frames)
        self.planner.reset()

    def extend(self, num_frames: int) -> None:
        # The graphs gather RoPE rows at a device offset, with no bounds check: check on the host.
        if max(num_frames, *self.patch_grid) > self.rope_positions:
            raise ValueError(
                f"{num_frames} latent frames ({self.patch_grid[0]}x{self.patch_grid[1]} tokens per frame) are past "
                f"the {self.rope_positions} RoPE positions baked into the graphs; export them again for a longer stream"
            )

    def set_prompt(self, text_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.text_k = torch.stack([k for k, _ in text_kv])
        self.text_v = torch.stack([v for _, v in text_kv])

    def capture(self) -> float:
        return 0.0

    def _state(self, plan) -> tuple[torch.Tensor, ...]:
        plan.load(self.plan_tensors)
        pt = self.plan_tensors
        return (self.text_k, self.text_v, self.k, self.v, pt.write_start, pt.kv_len, pt.frame_offset)

    def _write_slots(self, plan, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """The ring write, on the host side of the graph: the new K/V into the plan's slots (no commit)."""
        end = plan.write_start + new_k.shape[2]
        self.k[:, :, plan.write_start : end] = new_k
        self.v[:, :, plan.write_start : end] = new_v

    def _write(self, plan, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        self._write_slots(plan, new_k, new_v)
        self.planner.commit(plan)

    def run_chunk(self, noise: torch.Tensor, renoise: Sequence[torch.Tensor], frame_start: int) -> torch.Tensor:
        t0 = time.perf_counter()
        plan = self.planner.plan_chunk(frame_start)
        x0, new_k, new_v = self.chunk_outputs(plan, noise, renoise)
        self._write(plan, new_k, new_v)
        self.last_host_ms = (time.perf_counter() - t0) * 1000
        return x0

    def chunk_outputs(
        self, plan, noise: torch.Tensor, renoise: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One planned chunk's (x0, new K, new V); writes nothing and leaves the planner as it is,
        so a captured body can run it for a given plan (warm-up and capture alike)."""
        state = self._state(plan)
        x = noise.to(self.device, torch.float32).contiguous()
        if self.chunk is not None:
            stacked = torch.stack([r.to(self.device, torch.float32) for r in renoise])
            x0, new_k, new_v = self.chunk(x, stacked, *state)
            return x0, new_k, new_v

        def clean(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # A copy: an engine may hand out its output buffer, which its next call overwrites.
            x0 = x0.clone()
            _, new_k, new_v = self.step(x0, self.t_freq_context, self.sigma_zero, *state)
            return x0, new_k, new_v

        forward = lambda x, si: self.step(x, self.t_freq[si], self.sigmas[si], *state)[0]
        renoise = [r.to(self.device, torch.float32) for r in renoise]
        return chunk_loop(self.scheduler, forward, clean, x, renoise)

    def recache(self, switch_frame: int, history: torch.Tensor) -> None:
        plan = self.planner.plan_recache(switch_frame)
        n = plan.num_frames
        if n not in self.recache_steps:
            raise ValueError(f"no re-cache graph for a {n}-frame span (have {sorted(self.recache_steps)})")
        x = _history_span(history, switch_frame, self.stream, plan.frame_start, n).contiguous()
        _, new_k, new_v = self.recache_steps[n](x, self._t_freq(0.0, n), self.sigma_zero, *self._state(plan))
        self._write(plan, new_k, new_v)
