"""The per-chunk work on static buffers, optionally captured as CUDA graphs.

A 5-forward chunk of a 30-layer model launches hundreds of small kernels per forward; replaying a
captured graph removes the Python and launch overhead between them. Everything the captured
work reads or writes lives at a fixed address: the chunk's input noise and re-noise, the
timesteps, the text K/V, the ring caches and the plan's device scalars (write offset, valid
length, RoPE frame offset). Per chunk only buffer contents change (``copy_`` / ``fill_``), so
there is no ``.item()``, no host sync and no Python branch on a device value inside a chunk.

Graphs are keyed by what changes the captured work: the write slot is a device scalar, so the
steady state's rotating slot is one graph; a backend that slices the valid cache prefix by a
host int (``sdpa``) needs one graph per fill state (1..4 valid chunks), one that reads the
valid length on the device (``triton``) needs one graph in all. Warm-up (Triton autotuning,
cuBLAS workspaces) runs on a side stream before each capture; all graphs share one memory pool.
The KV re-cache at a prompt switch runs eagerly: it happens once per switch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .generator import StreamingGenerator


class ChunkRunner:
    """Runs chunks on static buffers.

    ``granularity="chunk"`` captures a chunk's 5 forwards as one graph; ``"step"`` captures each
    denoising step (forward, x0, re-noise) and the clean-context update as graphs of their own,
    replayed in sequence: fewer, larger graphs against smaller ones that share more memory; which
    is faster is a measurement (``arvid bench`` variants ``+graphs`` and ``+stepgraphs``).
    """

    def __init__(self, gen: StreamingGenerator, *, cuda_graphs: bool = False, granularity: str = "chunk") -> None:
        if cuda_graphs and gen.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {gen.device}")
        if granularity not in ("chunk", "step"):
            raise ValueError(f"graph granularity must be 'chunk' or 'step', got {granularity!r}")
        self.gen = gen
        self.cuda_graphs = cuda_graphs
        self.granularity = granularity
        cfg, sched = gen.stream_cfg, gen.scheduler
        b, chunk = gen.batch_size, cfg.chunk_frames
        shape = (b, chunk, gen.model.cfg.in_dim, *gen.latent_size)
        dev = gen.device
        self.x_in = torch.zeros(shape, device=dev)
        self.renoise = torch.zeros(max(len(sched) - 1, 1), *shape, device=dev)
        self.x0_out = torch.zeros(shape, device=dev)
        # Step si reads x_steps[si] and writes x_steps[si + 1]: every step is idempotent, so the
        # warm-up runs before a capture cannot feed a step its own output.
        self.x_steps = [self.x_in] + [torch.zeros(shape, device=dev) for _ in range(len(sched) - 1)]
        self.t_steps = [torch.full((b, chunk), t, device=dev) for t in sched.timesteps]
        self.t_context = torch.full((b, chunk), sched.context_timestep, device=dev)
        self.text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}
        self._pool = None
        self.capture_seconds = 0.0  # total time spent warming up + capturing graphs
        self.last_host_ms = 0.0  # host time of the last run_chunk (launch/replay, no sync)

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
        """Denoising step ``si`` (forward, x0, re-noise), or with ``si == len(scheduler)`` the
        clean-context update that overwrites the chunk's slots with the K/V of its clean output."""
        gen = self.gen
        model, cache, sched = gen.model, gen.cache, gen.scheduler
        offset = cache.frame_offset(plan)
        if si == len(sched):
            model(self.x0_out, self.t_context, self.text_kv, frame_offset=offset, cache=cache, plan=plan)
            return
        x = self.x_steps[si]
        flow = model(x, self.t_steps[si], self.text_kv, frame_offset=offset, cache=cache, plan=plan)
        x0 = sched.flow_to_x0(x, flow, sched.sigmas[si])
        self.x0_out.copy_(x0)
        if si + 1 < len(sched):
            self.x_steps[si + 1].copy_(sched.add_noise(x0, self.renoise[si], sched.sigmas[si + 1]))

    def _body(self, plan) -> None:
        """The whole chunk: 4 denoising steps + the clean-context update, on static buffers."""
        for si in range(len(self.gen.scheduler) + 1):
            self._step(plan, si)

    def run_chunk(self, noise: torch.Tensor, renoise: list[torch.Tensor], frame_start: int) -> torch.Tensor:
        """Run one chunk starting at latent frame ``frame_start``; returns the static x0 buffer."""
        t0 = time.perf_counter()
        cache = self.gen.cache
        self.x_in.copy_(noise, non_blocking=True)
        for si, r in enumerate(renoise):
            self.renoise[si].copy_(r, non_blocking=True)
        plan = cache.plan_chunk(frame_start)
        cache.activate(plan)
        if self.cuda_graphs:
            for key in self._keys(plan):
                (self.graphs.get(key) or self._capture(key, plan)).replay()
        else:
            self._body(plan)
        cache.commit(plan)
        self.last_host_ms = (time.perf_counter() - t0) * 1000
        return self.x0_out

    def recache(self, switch_frame: int, history: torch.Tensor) -> None:
        """KV re-cache before ``switch_frame`` from the last generated latents ``history`` (eager)."""
        gen = self.gen
        cache = gen.cache
        plan = cache.plan_recache(switch_frame)
        cache.activate(plan)
        first = plan.frame_start - (switch_frame - gen.stream_cfg.attention_frames)  # index into history
        x = history[:, first : first + plan.num_frames]
        t = torch.zeros(gen.batch_size, plan.num_frames, device=gen.device)
        gen.model(x, t, self.text_kv, frame_offset=cache.frame_offset(plan), cache=cache, plan=plan)
        cache.commit(plan)

    # -- capture -----------------------------------------------------------------------------
    @torch.no_grad()
    def capture_all(self) -> float:
        """Capture the graph of every fill state and the steady state up front; returns seconds.

        Runs the chunk body on whatever the buffers hold and resets the cache afterwards: each
        graph writes its chunk's slots before reading them, and slots past the valid prefix are
        never read, so the garbage it leaves is never seen.
        """
        if not self.cuda_graphs or self.text_kv is None:
            raise ValueError("capture_all needs cuda_graphs=True and a prompt (set_prompt) first")
        cache = self.gen.cache
        t0 = time.perf_counter()
        cache.reset()
        for _ in range(self.gen.stream_cfg.slot_chunks + 1):
            plan = cache.plan_chunk(0)
            cache.activate(plan)
            for key in self._keys(plan):
                if key not in self.graphs:
                    self._capture(key, plan)
            cache.commit(plan)
        cache.reset()
        return time.perf_counter() - t0

    def _keys(self, plan) -> list[tuple[int, int, int]]:
        """(frames, valid length or -1, step or -1) of the graphs that make up this plan's chunk."""
        # A backend reading the valid length on the device needs one graph for all fill states.
        kv = -1 if self.gen.backend.kv_len_on_device else plan.kv_len
        if self.granularity == "chunk":
            return [(plan.num_frames, kv, -1)]
        return [(plan.num_frames, kv, si) for si in range(len(self.gen.scheduler) + 1)]

    def _capture(self, key: tuple[int, int, int], plan) -> torch.cuda.CUDAGraph:
        t0 = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        work = self._body if key[2] < 0 else (lambda p: self._step(p, key[2]))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up before capture: autotuning, workspaces, allocator
                work(plan)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            work(plan)
        self._pool = graph.pool()
        self.graphs[key] = graph
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - t0
        return graph
