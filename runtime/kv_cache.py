"""KV caches of the streaming self-attention: the protocol, the ring buffer, and its functional form.

Ring layout: one allocation per tensor, ``k``/``v`` ``[num_layers, B, S, H, D]`` with
``S = attention_frames * tokens_per_frame``, split into chunk slots; the first ``sink_chunks``
slots hold the sink, the rest the window. The cache is always filled as a prefix (fill phase:
chunk i goes to slot i; steady state: every slot is valid), so the keys a query attends to are
exactly slots ``[0, kv_len)``, a view. Softmax attention does not depend on key order, so a new
chunk simply overwrites the slot of the oldest window chunk: nothing is rolled, cloned or
concatenated, and K is stored after RoPE at its absolute frame position.

Planning is host-side (:class:`RingPlanner`: which slot, how many valid tokens) and kept apart
from the per-layer work; each plan carries the same numbers as device scalars at fixed addresses
(:class:`PlanTensors`) for capturable kernels and exported graphs. :class:`PlanTensors` and
:class:`RingLayer` (one layer's buffers) are the kernels' own layout classes
(``arvid.kernels.layouts``), re-exported here: the backends hand them to the kernels as they are.

:class:`FunctionalKVCache` is the form exported graphs use: the cache comes in as an input, the
valid keys are a mask built from the plan scalars, and the forward's own K/V come out for the
host to write into the ring slot. Nothing is written in place (exporters drop or mis-trace
``index_copy_``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from arvid.kernels.layouts import PlanTensors, RingLayer

from .concat_cache import ConcatKVCache
from .config import ModelConfig, StreamConfig
from .devices import check_fits
from .rope import QKNorm, RopeInput, qk_norm_rope

if TYPE_CHECKING:
    from .attention import AttentionBackend


@dataclass
class ForwardPlan:
    """Where one DiT forward reads and writes in the cache (host ints; ``tensors`` on the device).

    frame_start, num_frames : the query frames (absolute latent frame index = RoPE position).
    write_start : first token slot the forward's own K/V are written to.
    kv_len : valid tokens (a prefix of the ring) that the queries attend to, own K/V included.
    filled_after, next_slot_after : the ring's state once the plan is committed.
    """

    frame_start: int
    num_frames: int
    write_start: int
    kv_len: int
    filled_after: int
    next_slot_after: int
    tensors: PlanTensors | None = None

    def load(self, tensors: PlanTensors) -> None:
        """Write this plan's numbers into ``tensors`` in place (what a captured graph then reads)."""
        tensors.fill(self.write_start, self.kv_len, self.frame_start)

    @property
    def frame_offset(self) -> int | torch.Tensor:
        """RoPE frame position of the first query frame: the device scalar once the plan has tensors."""
        return self.frame_start if self.tensors is None else self.tensors.frame_offset


class KVCache(Protocol):
    """What the generator and the model need of a self-attention cache."""

    @property
    def nbytes(self) -> int: ...

    def reset(self) -> None: ...

    def plan_chunk(self, frame_start: int): ...

    def plan_recache(self, switch_frame: int): ...

    def activate(self, plan) -> None:
        """Load the plan into whatever the forwards read (device scalars); before its forwards."""

    def commit(self, plan) -> None:
        """The plan's forwards are done: advance the host-side state."""

    def self_attention(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, norm: QKNorm, rope: RopeInput, plan
    ) -> torch.Tensor:
        """One layer: q/k norm + RoPE, store this forward's K/V, attend; ``[B, L, H, D]`` in and out."""


class RingPlanner:
    """Host-side bookkeeping of the ring: which chunk slot is written next, how many are valid."""

    def __init__(self, stream_cfg: StreamConfig, tokens_per_frame: int) -> None:
        self.stream = stream_cfg
        self.tokens_per_frame = tokens_per_frame
        self.chunk_tokens = stream_cfg.chunk_frames * tokens_per_frame
        self.capacity = stream_cfg.attention_frames * tokens_per_frame
        self.reset()

    def reset(self) -> None:
        self.filled = 0  # chunk slots holding valid K/V (a prefix)
        self.next_slot = 0  # steady state: the window slot holding the oldest chunk

    def _advance(self, filled: int, next_slot: int, chunks: int) -> tuple[int, int]:
        """Ring state after writing ``chunks`` chunk slots starting at the current write position."""
        cfg = self.stream
        for _ in range(chunks):
            if filled < cfg.slot_chunks:
                filled += 1
                next_slot = filled if filled < cfg.slot_chunks else cfg.sink_chunks
            else:
                window = cfg.slot_chunks - cfg.sink_chunks
                next_slot = cfg.sink_chunks + (next_slot - cfg.sink_chunks + 1) % window
        return filled, next_slot

    def _plan(self, frame_start: int, num_frames: int, write_slot: int, filled: int) -> ForwardPlan:
        chunks = num_frames // self.stream.chunk_frames
        filled_after, next_after = self._advance(filled, write_slot, chunks)
        kv_chunks = max(filled_after, write_slot + chunks)
        return ForwardPlan(
            frame_start=frame_start,
            num_frames=num_frames,
            write_start=write_slot * self.chunk_tokens,
            kv_len=kv_chunks * self.chunk_tokens,
            filled_after=filled_after,
            next_slot_after=next_after,
        )

    def plan_chunk(self, frame_start: int) -> ForwardPlan:
        """The next chunk: the next free slot during the fill phase, else the oldest window slot."""
        slot = self.filled if self.filled < self.stream.slot_chunks else self.next_slot
        return self._plan(frame_start, self.stream.chunk_frames, slot, self.filled)

    def plan_recache(self, switch_frame: int) -> ForwardPlan:
        """KV re-cache at a prompt switch before latent frame ``switch_frame``.

        The last ``n = min(attention_frames, switch_frame)`` frames are re-run at t = 0 with the
        new prompt. If the span starts at frame 0, or ``global_sink`` is off, the cache is
        rebuilt from them (their first chunk becomes the sink). Otherwise the sink keeps its
        K/V and only the last ``window_frames`` re-run frames are written; the first
        ``sink_frames`` re-run frames would be computed and discarded (no later query sees
        their K/V), so they are not run at all.
        """
        cfg = self.stream
        n = min(cfg.attention_frames, switch_frame)
        if switch_frame - n == 0 or not cfg.global_sink:
            return self._plan(switch_frame - n, n, 0, 0)
        return self._plan(switch_frame - cfg.window_frames, cfg.window_frames, cfg.sink_chunks, cfg.sink_chunks)

    def commit(self, plan: ForwardPlan) -> None:
        self.filled, self.next_slot = plan.filled_after, plan.next_slot_after


def recache_spans(stream: StreamConfig) -> list[int]:
    """Every span length :meth:`RingPlanner.plan_recache` can ask for: ``min(attention_frames, s)`` for
    switch frames on chunk boundaries, and ``window_frames`` with a kept sink."""
    spans = set(range(stream.chunk_frames, stream.attention_frames + 1, stream.chunk_frames))
    if stream.global_sink:
        spans.add(stream.window_frames)
    return sorted(spans)


def make_cache(
    backend: AttentionBackend,
    model_cfg: ModelConfig,
    stream_cfg: StreamConfig,
    *,
    batch_size: int,
    patch_grid: tuple[int, int],
    device: torch.device | str,
    dtype: torch.dtype,
    kv_dtype: torch.dtype | None = None,
) -> KVCache:
    """The cache ``backend`` reads (its ``cache``: the ring, or the eager baseline's concat cache).

    ``patch_grid`` is the latent frame's token grid ``(H / ph, W / pw)``; ``kv_dtype`` None: the
    model's ``dtype``. Raises ``ValueError`` where the backend's own precondition refuses the KV dtype.
    """
    reason = backend.unavailable(torch.device(device), dtype, kv_dtype) if kv_dtype is not None else None
    if reason:
        raise ValueError(f"attention backend {backend.name!r} cannot run here: {reason}")
    if backend.cache == "concat":
        return ConcatKVCache(
            model_cfg, stream_cfg, batch_size=batch_size, tokens_per_frame=patch_grid[0] * patch_grid[1],
            device=device, dtype=dtype,
        )  # fmt: skip
    return RingKVCache(
        model_cfg, stream_cfg, backend=backend, batch_size=batch_size, patch_grid=patch_grid, device=device,
        dtype=dtype, kv_dtype=kv_dtype,
    )  # fmt: skip


class RingKVCache(RingPlanner):
    """Per-layer ring buffers written in place by a ring backend's ``append``, read by its ``attend``.

    The cache holds the tensors and the plan; the backend computes (and has checked, through its
    ``unavailable``, that it can read a cache of ``kv_dtype`` on ``device``).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        stream_cfg: StreamConfig,
        *,
        backend: AttentionBackend,
        batch_size: int,
        patch_grid: tuple[int, int],
        device: torch.device | str,
        dtype: torch.dtype,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(stream_cfg, patch_grid[0] * patch_grid[1])
        self.backend = backend
        shape = (model_cfg.num_layers, batch_size, self.capacity, model_cfg.num_heads, model_cfg.head_dim)
        kv_dtype = kv_dtype or dtype
        elems = math.prod(shape)
        scales = 2 * 4 * elems // shape[-1] if kv_dtype == torch.float8_e4m3fn else 0
        check_fits(
            2 * elems * kv_dtype.itemsize + scales,
            device,
            f"the KV cache (batch {batch_size}, {self.capacity:,} tokens x {model_cfg.num_layers} layers)",
        )
        self.k = torch.zeros(shape, device=device, dtype=kv_dtype)
        self.v = torch.zeros(shape, device=device, dtype=kv_dtype)
        self.k_scale = self.v_scale = None
        if kv_dtype == torch.float8_e4m3fn:
            self.k_scale = torch.ones(shape[:-1], device=device, dtype=torch.float32)
            self.v_scale = torch.ones(shape[:-1], device=device, dtype=torch.float32)
        self.layers = [
            RingLayer(self.k[i], self.v[i], *((self.k_scale[i], self.v_scale[i]) if self.k_scale is not None else ()))
            for i in range(model_cfg.num_layers)
        ]
        # Kernels and captured graphs read these fixed addresses; activate() refills them.
        self.plan_tensors = PlanTensors.zeros(batch_size, device)

    @property
    def nbytes(self) -> int:
        scales = 0 if self.k_scale is None else self.k_scale.nbytes + self.v_scale.nbytes
        return self.k.nbytes + self.v.nbytes + scales

    def _plan(self, *args) -> ForwardPlan:
        plan = super()._plan(*args)
        plan.tensors = self.plan_tensors
        return plan

    def activate(self, plan: ForwardPlan) -> None:
        plan.load(self.plan_tensors)

    def self_attention(self, layer, q, k, v, norm, rope, plan) -> torch.Tensor:
        ring = self.layers[layer]
        q = self.backend.append(q, k, v, norm, rope, ring, plan)
        return self.backend.attend(q, ring, plan)


class FunctionalKVCache:
    """The cache of one traced forward: read from graph inputs, never written; new K/V collected.

    Parameters
    ----------
    k, v : ``[num_layers, B, S, H, D]`` the ring buffers as they are before the forward.
    write_start : int32 ``[1]``; kv_len : int32 ``[B]`` — the plan's device scalars.

    Each layer attends to ``[cached keys | its own new keys]``: cache token ``p`` is valid iff
    ``p < kv_len`` and ``p`` is outside the slots this forward overwrites,
    ``[write_start, write_start + L)``; the new K/V are always valid. With the write done
    afterwards by the host this equals the in-place ring's attention (softmax ignores key order).
    After the forward, :meth:`new_kv` gives ``[num_layers, B, L, H, D]`` K (rotated) and V.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, write_start: torch.Tensor, kv_len: torch.Tensor) -> None:
        self.k, self.v = k, v
        self.write_start, self.kv_len = write_start, kv_len
        self._new_k: list[torch.Tensor] = []
        self._new_v: list[torch.Tensor] = []
        self._mask: torch.Tensor | None = None

    def mask(self, new_tokens: int) -> torch.Tensor:
        """``[B, 1, 1, S + L]`` bool: the valid keys, built once per forward from the plan scalars."""
        if self._mask is None:
            s = self.k.shape[2]
            pos = torch.arange(s, device=self.k.device, dtype=torch.int32)
            start = self.write_start.to(torch.int32)
            overwritten = (pos >= start) & (pos < start + new_tokens)
            cached = (pos[None, :] < self.kv_len.to(torch.int32)[:, None]) & ~overwritten[None, :]
            own = torch.ones(cached.shape[0], new_tokens, dtype=torch.bool, device=cached.device)
            self._mask = torch.cat([cached, own], dim=1)[:, None, None, :]
        return self._mask

    def self_attention(self, layer, q, k, v, norm, rope, plan) -> torch.Tensor:
        q, k = qk_norm_rope(q, k, norm, rope)
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        self._new_k.append(k)
        self._new_v.append(v)
        keys = torch.cat([self.k[layer], k], dim=1)
        values = torch.cat([self.v[layer], v], dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=self.mask(k.shape[1])
        )
        return out.transpose(1, 2)

    def new_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self._new_k), torch.stack(self._new_v)
