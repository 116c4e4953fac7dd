"""The ring-buffer KV cache: fixed slots for the sink and the window, written by index.

Layout: one allocation per tensor, ``k``/``v`` ``[num_layers, B, S, H, D]`` with
``S = attention_frames * tokens_per_frame``, split into chunk slots; the first ``sink_chunks``
slots hold the sink, the rest the window. The cache is always filled as a prefix (fill phase:
chunk i goes to slot i; steady state: every slot is valid), so the keys a query attends to are
exactly slots ``[0, kv_len)``, a view. Softmax attention does not depend on key order, so a new
chunk simply overwrites the slot of the oldest window chunk: nothing is rolled, cloned or
concatenated, and K is stored after RoPE at its absolute frame position.

Planning is host-side (which slot, how many valid tokens) and kept apart from the per-layer
work; each plan also carries the same numbers as device tensors for capturable kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import AttentionBackend
from .config import ModelConfig, StreamConfig


@dataclass
class ForwardPlan:
    """Where one DiT forward reads and writes in the cache.

    frame_start, num_frames : the query frames (absolute latent frame index = RoPE position).
    write_start : first token slot the forward's own K/V are written to.
    kv_len : valid tokens (a prefix of the ring) that the queries attend to, own K/V included.
    """

    frame_start: int
    num_frames: int
    write_start: int
    kv_len: int
    filled_after: int  # ring state after commit()
    next_slot_after: int
    kind: str = "chunk"  # "chunk" | "recache"
    # write_start [1], kv_len [B], frame_offset [1] int32 on the cache's device: the same numbers,
    # at fixed addresses shared by every plan of a cache; valid once RingKVCache.activate(plan) ran.
    device_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class RingKVCache:
    """Per-layer ring buffers plus the host-side bookkeeping of which chunk sits in which slot."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        stream_cfg: StreamConfig,
        *,
        batch_size: int,
        patch_grid: tuple[int, int],
        backend: AttentionBackend,
        rope_tables: tuple[torch.Tensor, torch.Tensor],
        device: torch.device | str,
        dtype: torch.dtype,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        if not backend.ring:
            raise ValueError(f"backend {backend.name!r} does not use the ring-buffer cache")
        self.cfg = stream_cfg
        self.backend = backend
        self.rope_tables = rope_tables
        self.patch_grid = patch_grid  # (Hp, Wp) tokens of a latent frame
        tokens_per_frame = patch_grid[0] * patch_grid[1]
        self.tokens_per_frame = tokens_per_frame
        self.chunk_tokens = stream_cfg.chunk_frames * tokens_per_frame
        self.capacity = stream_cfg.attention_frames * tokens_per_frame
        shape = (model_cfg.num_layers, batch_size, self.capacity, model_cfg.num_heads, model_cfg.head_dim)
        kv_dtype = kv_dtype or dtype
        if kv_dtype not in (dtype, torch.float8_e4m3fn):
            raise ValueError(f"KV cache dtype must be the model's ({dtype}) or torch.float8_e4m3fn, got {kv_dtype}")
        self.k = torch.zeros(shape, device=device, dtype=kv_dtype)
        self.v = torch.zeros(shape, device=device, dtype=kv_dtype)
        # FP8: one float32 dequantization scale per token and head (x ~= x8 * scale).
        self.k_scale = self.v_scale = None
        if kv_dtype == torch.float8_e4m3fn:
            dev = torch.device(device)
            if backend.name == "triton" and dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (8, 9):
                raise ValueError("an FP8 KV cache with the triton backend needs an sm_89+ GPU (Ada, Hopper, Blackwell)")
            self.k_scale = torch.ones(shape[:-1], device=device, dtype=torch.float32)
            self.v_scale = torch.ones(shape[:-1], device=device, dtype=torch.float32)
        # The plan as device scalars at fixed addresses: kernels and captured graphs read these,
        # activate() refills them (fill_, no host sync) before the forwards of each plan.
        self.plan_tensors = {
            "write_start": torch.zeros(1, dtype=torch.int32, device=device),
            "kv_len": torch.zeros(batch_size, dtype=torch.int32, device=device),
            "frame_offset": torch.zeros(1, dtype=torch.int32, device=device),
        }
        self.reset()

    # -- host-side planning ------------------------------------------------------------------
    def reset(self) -> None:
        self.filled = 0  # chunk slots holding valid K/V (a prefix)
        self.next_slot = 0  # steady state: the window slot holding the oldest chunk

    @property
    def nbytes(self) -> int:
        scales = 0 if self.k_scale is None else self.k_scale.nbytes + self.v_scale.nbytes
        return self.k.nbytes + self.v.nbytes + scales

    def _advance(self, filled: int, next_slot: int, chunks: int) -> tuple[int, int]:
        """Ring state after writing ``chunks`` chunk slots starting at the current write position."""
        cfg = self.cfg
        for _ in range(chunks):
            if filled < cfg.slot_chunks:
                filled += 1
                next_slot = filled if filled < cfg.slot_chunks else cfg.sink_chunks
            else:
                window = cfg.slot_chunks - cfg.sink_chunks
                next_slot = cfg.sink_chunks + (next_slot - cfg.sink_chunks + 1) % window
        return filled, next_slot

    def _plan(self, frame_start: int, num_frames: int, write_slot: int, filled: int, kind: str) -> ForwardPlan:
        chunks = num_frames // self.cfg.chunk_frames
        filled_after, next_after = self._advance(filled, write_slot, chunks)
        kv_chunks = max(filled_after, write_slot + chunks)
        return ForwardPlan(
            frame_start=frame_start,
            num_frames=num_frames,
            write_start=write_slot * self.chunk_tokens,
            kv_len=kv_chunks * self.chunk_tokens,
            filled_after=filled_after,
            next_slot_after=next_after,
            kind=kind,
            device_tensors=self.plan_tensors,
        )

    def plan_chunk(self, frame_start: int) -> ForwardPlan:
        """The next chunk: the next free slot during the fill phase, else the oldest window slot."""
        slot = self.filled if self.filled < self.cfg.slot_chunks else self.next_slot
        return self._plan(frame_start, self.cfg.chunk_frames, slot, self.filled, "chunk")

    def plan_recache(self, switch_frame: int) -> ForwardPlan:
        """KV re-cache at a prompt switch before latent frame ``switch_frame``.

        The last ``n = min(attention_frames, switch_frame)`` frames are re-run at t = 0 with the
        new prompt. If the span starts at frame 0, or ``global_sink`` is off, the cache is
        rebuilt from them (their first chunk becomes the sink). Otherwise the sink keeps its
        K/V and only the last ``window_frames`` re-run frames are written; the first
        ``sink_frames`` re-run frames would be computed and discarded (no later query sees
        their K/V), so they are not run at all.
        """
        cfg = self.cfg
        n = min(cfg.attention_frames, switch_frame)
        if switch_frame - n == 0 or not cfg.global_sink:
            return self._plan(switch_frame - n, n, 0, 0, "recache")
        start = switch_frame - cfg.window_frames
        return self._plan(start, cfg.window_frames, cfg.sink_chunks, cfg.sink_chunks, "recache")

    def activate(self, plan: ForwardPlan) -> None:
        """Load ``plan`` into the device scalars that the forwards read (``plan.device_tensors``)."""
        self.plan_tensors["write_start"].fill_(plan.write_start)
        self.plan_tensors["kv_len"].fill_(plan.kv_len)
        self.plan_tensors["frame_offset"].fill_(plan.frame_start)

    def frame_offset(self, plan: ForwardPlan) -> torch.Tensor:
        """RoPE frame offset of the plan's first query frame, as the device scalar (capturable)."""
        return self.plan_tensors["frame_offset"]

    def commit(self, plan: ForwardPlan) -> None:
        self.filled, self.next_slot = plan.filled_after, plan.next_slot_after

    # -- per-layer work ----------------------------------------------------------------------
    def self_attention(
        self,
        layer: int,
        plan: ForwardPlan,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        q = self.backend.append(q, k, v, attn, self, layer, plan, rope)
        return self.backend.attend(q, self, layer, plan)
