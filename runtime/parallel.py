"""Ulysses sequence parallel over ``torch.distributed``: tokens split across ranks, a head-sharded cache.

Between the patch embedding and the head every rank holds ``L/N`` consecutive tokens of the
forward (split by tokens, not frames: a rank's tokens may start mid-frame, so the per-frame adaLN
modulation is handed to the blocks per token). Per layer, self-attention projects and q/k-RMS-norms
its local tokens (Wan's norm spans all ``H*D`` features, which a rank only has for its own tokens),
then one packed Q/K/V ``all_to_all_single`` (sequence -> heads) into preallocated buffers gives it
the full sequence for ``H/N`` heads: RoPE, the ring-buffer write and the attention run there, on a
cache that holds those heads only, through the same backends (``eager`` / ``sdpa`` / ``triton``).
One ``all_to_all_single`` back (heads -> sequence) returns the attention output for the local
tokens; output projection, cross-attention and FFN run on them; the head's output is all-gathered.
With ``triton`` the attention is its kernel over ``H/N`` heads, but RoPE and the ring write run in
PyTorch: the fused append kernel always norms, and here q/k arrive normalised.

Every rank must see the same inputs: :meth:`SequenceParallel.broadcast` (noise, prompts, re-noise,
prompt switches) sends rank 0's. Collectives are issued in the same order on every rank; with
``trace=True`` each rank records ``(op, shape, dtype)`` of every one, for tests.

Launch: ``torchrun --nproc_per_node N -m arvid generate ... --sequence-parallel N`` (gloo on the
CPU, NCCL on CUDA). CUDA graphs are not supported with sequence parallel yet.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from arvid.kernels.qk_norm_rope_append import rms_norm_across_heads_ref

from .config import ModelConfig, StreamConfig
from .kv_cache import make_cache


def check_sequence_parallel(
    size: int,
    *,
    num_heads: int,
    chunk_tokens: int,
    world_size: int | None,
    device: torch.device | str = "cpu",
    cuda_devices: int | None = None,
    local_world_size: int | None = None,
) -> None:
    """Reject a sequence-parallel size that cannot run, with one line, before any model loads.

    Parameters
    ----------
    size : ranks per sequence-parallel group (``--sequence-parallel N``).
    num_heads : attention heads of the model (each rank keeps ``num_heads / size``).
    chunk_tokens : tokens of one chunk (``chunk_frames * tokens_per_frame``); every forward is a
        whole number of chunks, so ``size`` dividing it splits every forward evenly.
    world_size : processes in the launch (``None``: not launched by ``torchrun``).
    cuda_devices, local_world_size : on CUDA, the visible GPUs and the processes on this node.
    """
    if size < 1:
        raise ValueError(f"--sequence-parallel {size}: must be >= 1")
    if num_heads % size:
        raise ValueError(f"--sequence-parallel {size}: the model's {num_heads} heads are not divisible by {size}")
    if chunk_tokens % size:
        raise ValueError(f"--sequence-parallel {size}: a chunk's {chunk_tokens} tokens are not divisible by {size}")
    if size == 1:
        return
    if world_size is None:
        raise ValueError(
            f"--sequence-parallel {size} needs {size} processes: launch with torchrun --nproc_per_node {size}"
        )
    if world_size != size:
        raise ValueError(f"--sequence-parallel {size}: the launch has {world_size} processes; it needs exactly {size}")
    if torch.device(device).type == "cuda":
        local = local_world_size if local_world_size is not None else world_size
        have = cuda_devices if cuda_devices is not None else torch.cuda.device_count()
        if local > have:
            raise ValueError(f"--sequence-parallel {size}: {local} ranks on this node but only {have} CUDA devices")


def launch_world() -> tuple[int | None, int, int]:
    """``(world_size or None, rank, local_rank)`` from the ``torchrun`` environment."""
    if "WORLD_SIZE" not in os.environ:
        return None, 0, 0
    return int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def init_sequence_parallel(
    size: int, device: torch.device | str, *, trace: bool = False, timing: bool = False
) -> SequenceParallel:
    """Join (or create) the default process group launched by ``torchrun``: gloo on the CPU, NCCL on CUDA.

    Call :func:`check_sequence_parallel` first; on CUDA the caller places rank ``r`` on ``cuda:LOCAL_RANK``.
    """
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    if dist.get_world_size() != size:
        raise ValueError(f"--sequence-parallel {size}: the process group has {dist.get_world_size()} ranks")
    return SequenceParallel(trace=trace, timing=timing)


def setup_sequence_parallel(
    size: int, *, model_cfg: ModelConfig, stream: StreamConfig, tokens_per_frame: int, device: torch.device
) -> tuple[SequenceParallel | None, torch.device]:
    """Check ``size`` against the model and the ``torchrun`` launch, then join the group.

    Returns ``(None, device)`` for ``size == 1``; else the group and this rank's device (on CUDA,
    ``cuda:LOCAL_RANK``, made current). Every check runs before any model is loaded.
    """
    world, _, local_rank = launch_world()
    check_sequence_parallel(
        size, num_heads=model_cfg.num_heads, chunk_tokens=stream.chunk_frames * tokens_per_frame, world_size=world,
        device=device, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world or 1)),
    )  # fmt: skip
    if size == 1:
        return None, device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return init_sequence_parallel(size, device, timing=True), device


def init_parallel_groups(sp_size: int, *, trace: bool = False) -> SequenceParallel:
    """Sequence parallel x data parallel in one launch: the world's ranks in groups of ``sp_size``.

    Group ``g`` is ranks ``[g * sp_size, (g + 1) * sp_size)``; each runs its own streams (its share
    of the prompts, :meth:`SequenceParallel.shard`) sequence parallel. Needs an initialised default
    process group whose size is a multiple of ``sp_size``; every rank must call it (group creation
    is collective).
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if sp_size < 1 or world % sp_size:
        raise ValueError(f"{world} processes cannot form groups of {sp_size} sequence-parallel ranks")
    groups = [dist.new_group(list(range(g * sp_size, (g + 1) * sp_size))) for g in range(world // sp_size)]
    sp = SequenceParallel(groups[rank // sp_size], trace=trace)
    sp.data_rank, sp.data_size = rank // sp_size, world // sp_size
    return sp


class SequenceParallel:
    """One sequence-parallel group: its collectives, the token split and the head split.

    Parameters
    ----------
    group : a process group (default: the world).
    trace : record ``(op, shape, dtype)`` of every collective in :attr:`trace`.
    timing : time every collective (:meth:`comm_seconds`): host clock around the call on the CPU
        (gloo blocks), CUDA events around it on CUDA (NCCL runs on the stream).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, *, trace: bool = False, timing: bool = False) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.src = dist.get_global_rank(group, 0) if group is not None else 0  # broadcasts send its inputs
        self.trace: list[tuple[str, tuple[int, ...], str]] | None = [] if trace else None
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.timing = timing
        self._comm_s = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        # Data parallel beside it (init_parallel_groups): this group's index among the groups.
        self.data_rank, self.data_size = 0, 1

    @property
    def is_output_rank(self) -> bool:
        """Rank 0 of the group writes the group's outputs (its ranks hold the same latents)."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This group's share of independent work (prompts, seeds): every ``data_size``-th item."""
        return items[self.data_rank :: self.data_size]

    def close(self) -> None:
        """Leave every process group (after the last collective of the launch)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- collectives -------------------------------------------------------------------------
    def _record(self, op: str, t: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace.append((op, tuple(t.shape), str(t.dtype).removeprefix("torch.")))

    def _run(self, op: str, t: torch.Tensor, fn: Callable[[], Any]) -> None:
        """Issue one collective (recorded in the trace, timed if asked)."""
        self._record(op, t)
        if not self.timing:
            fn()
        elif t.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self._comm_s += time.perf_counter() - t0

    def comm_seconds(self) -> float:
        """Seconds spent in collectives so far (with ``timing``; on CUDA this synchronises)."""
        if self._events:
            torch.cuda.synchronize()
            self._comm_s += sum(a.elapsed_time(b) for a, b in self._events) / 1000
            self._events.clear()
        return self._comm_s

    def _buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A preallocated buffer per (name, shape, dtype, device): a stream has a handful of forward shapes."""
        key = (name, shape, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def all_to_all(self, send: torch.Tensor, recv: torch.Tensor) -> torch.Tensor:
        """``recv[i] = send[rank]`` of rank ``i`` (dim 0 has one block per rank)."""
        self._run("all_to_all", send, lambda: dist.all_to_all_single(recv, send, group=self.group))
        return recv

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``x`` on every rank (a contiguous copy; ``x`` must have the same shape everywhere)."""
        out = x.contiguous().clone()
        self._run("broadcast", out, lambda: dist.broadcast(out, src=self.src, group=self.group))
        return out

    def broadcast_source(self, source: Callable[[int, int], torch.Tensor]) -> Callable[[int, int], torch.Tensor]:
        """A re-noise source ``(chunk, step) -> noise`` that returns rank 0's noise everywhere."""
        return lambda ci, si: self.broadcast(source(ci, si))

    def broadcast_prompt_source(
        self, source: Callable[[int], torch.Tensor | None], like: torch.Tensor
    ) -> Callable[[int], torch.Tensor | None]:
        """Rank 0's answer of a prompt source (a switch or ``None``) at every chunk boundary, on every rank.

        Only rank 0's ``source`` decides (e.g. it alone reads a terminal); a flag and the shape go
        first so every rank issues the same collectives. ``like`` gives dtype and device.
        """

        def ask(frame: int) -> torch.Tensor | None:
            p = source(frame) if self.rank == 0 else None
            head = torch.zeros(4, dtype=torch.int64, device=like.device)
            if p is not None:
                if p.dim() != 3:
                    raise ValueError(f"prompt embeddings must be [B, text_len, text_dim], got {tuple(p.shape)}")
                head[0], head[1:] = 1, torch.tensor(p.shape)
            head = self.broadcast(head)
            if not int(head[0]):
                return None
            shape = tuple(int(s) for s in head[1:])
            return self.broadcast(
                p.to(like) if p is not None else torch.empty(shape, dtype=like.dtype, device=like.device)
            )

        return ask

    # -- tokens: sequence split --------------------------------------------------------------
    def local_tokens(self, total: int) -> tuple[int, int]:
        """``(start, count)`` of this rank's tokens out of ``total``."""
        if total % self.size:
            raise ValueError(f"{total} tokens are not divisible by the sequence-parallel size {self.size}")
        n = total // self.size
        return self.rank * n, n

    def split_tokens(
        self, tokens: torch.Tensor, e: torch.Tensor, temb: torch.Tensor, tokens_per_frame: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's tokens ``[B, L/N, dim]`` and their per-token modulation.

        ``e`` ``[B, F, 6, dim]`` and ``temb`` ``[B, F, dim]`` are per frame; a rank's tokens may start
        mid-frame, so each token gets its frame's rows: ``[B, L/N, 6, dim]``, ``[B, L/N, dim]``. The
        blocks then run with one "frame" per token, the same elementwise arithmetic.
        """
        start, n = self.local_tokens(tokens.shape[1])
        frame = torch.arange(start, start + n, device=tokens.device) // tokens_per_frame
        return tokens[:, start : start + n].contiguous(), e[:, frame], temb[:, frame]

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``[B, L/N, C]`` -> the whole ``[B, L, C]`` on every rank."""
        b, n, c = x.shape
        src = x.transpose(0, 1).contiguous()  # [L/N, B, C]: rank blocks concatenate along dim 0
        out = torch.empty(self.size * n, b, c, dtype=x.dtype, device=x.device)
        # all_gather_into_tensor, not all_gather_single: the latter is torch 2.13's, the GPU image runs 2.11.
        self._run("all_gather", src, lambda: dist.all_gather_into_tensor(out, src, group=self.group))
        return out.transpose(0, 1).contiguous()

    # -- heads: the all-to-all of the attention ----------------------------------------------
    def seq_to_heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Local tokens, all heads ``[B, L/N, H, D]`` x 3 -> all tokens, local heads ``[B, L, H/N, D]`` x 3.

        One packed ``all_to_all_single``: send block ``j`` ``[B, L/N, 3, H/N, D]`` holds rank ``j``'s
        heads of q, k, v; received block ``i`` is rank ``i``'s tokens, which come ``i``-th in the
        sequence. With B = 1 the returned q/k/v are views of the receive buffer (valid until the next call).
        """
        b, n, h, d = q.shape
        hn = h // self.size
        shape = (self.size, b, n, 3, hn, d)
        send, recv = self._buffer("qkv_send", shape, q), self._buffer("qkv_recv", shape, q)
        for i, t in enumerate((q, k, v)):
            send[:, :, :, i].copy_(t.view(b, n, self.size, hn, d).permute(2, 0, 1, 3, 4))
        self.all_to_all(send, recv)
        full = recv.permute(1, 0, 2, 3, 4, 5).reshape(b, self.size * n, 3, hn, d)
        return full[:, :, 0], full[:, :, 1], full[:, :, 2]

    def heads_to_seq(self, out: torch.Tensor) -> torch.Tensor:
        """All tokens, local heads ``[B, L, H/N, D]`` -> local tokens, all heads ``[B, L/N, H, D]`` (new tensor)."""
        b, seq, hn, d = out.shape
        n = seq // self.size
        shape = (self.size, b, n, hn, d)
        send, recv = self._buffer("out_send", shape, out), self._buffer("out_recv", shape, out)
        send.copy_(out.view(b, self.size, n, hn, d).transpose(0, 1))
        self.all_to_all(send, recv)
        result = torch.empty(b, n, self.size * hn, d, dtype=out.dtype, device=out.device)
        result.view(b, n, self.size, hn, d).copy_(recv.permute(1, 2, 0, 3, 4))
        return result

    # -- the cache ---------------------------------------------------------------------------
    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """The model config as this rank's cache sees it: ``H/N`` heads of the same head dim."""
        if cfg.num_heads % self.size:
            raise ValueError(
                f"the model's {cfg.num_heads} heads are not divisible by the sequence-parallel size {self.size}"
            )
        heads = cfg.num_heads // self.size
        return dataclasses.replace(cfg, num_heads=heads, dim=heads * cfg.head_dim)

    def make_cache(
        self, backend: Any, model_cfg: ModelConfig, stream_cfg: StreamConfig, **kwargs
    ) -> SequenceParallelCache:
        """The backend's cache (:func:`~arvid.runtime.kv_cache.make_cache`) for this rank's heads, wrapped
        to run the sequence-parallel attention."""
        grid = kwargs["patch_grid"]
        self.local_tokens(stream_cfg.chunk_frames * grid[0] * grid[1])  # every forward is whole chunks
        return SequenceParallelCache(make_cache(backend, self.local_config(model_cfg), stream_cfg, **kwargs), self)


class SequenceParallelCache:
    """A backend's cache for this rank's heads, run by the local tokens' self-attention.

    The model finds :attr:`sequence_parallel` on its cache and splits its tokens; planning,
    activation and commits are the inner cache's (every rank plans the same).
    """

    def __init__(self, inner: Any, sp: SequenceParallel) -> None:
        self.inner = inner
        self.sequence_parallel = sp

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes

    def reset(self) -> None:
        self.inner.reset()

    def plan_chunk(self, frame_start: int):
        return self.inner.plan_chunk(frame_start)

    def plan_recache(self, switch_frame: int):
        return self.inner.plan_recache(switch_frame)

    def activate(self, plan) -> None:
        self.inner.activate(plan)

    def commit(self, plan) -> None:
        self.inner.commit(plan)

    def self_attention(self, layer, q, k, v, norm, rope, plan) -> torch.Tensor:
        """``[B, L/N, H, D]`` local tokens in and out; the inner cache attends over ``[B, L, H/N, D]``."""
        sp = self.sequence_parallel
        # The norm spans all heads: only here, before the all-to-all, does a rank have them all.
        q = rms_norm_across_heads_ref(q, norm.q_weight, norm.eps)
        k = rms_norm_across_heads_ref(k, norm.k_weight, norm.eps)
        q, k, v = sp.seq_to_heads(q, k, v)
        out = self.inner.self_attention(layer, q, k, v, None, rope, plan)  # None: q/k are normalised
        return sp.heads_to_seq(out)
