"""The one owner of the 3D RoPE tables, the per-forward RoPE input the attention backends take, and the
q/k RMSNorm + RoPE every attention runs first (:func:`qk_norm_rope`: the model, the caches, sequence
parallel and the backends all use it, so it lives in this leaf).

Frame positions are absolute latent-frame indices, so a long stream needs a long table: the
tables start at ``rope_max_positions`` (Wan's 1024) and double on demand, in one place
(:meth:`RopeTables.ensure`). Growing replaces the tensors, so whatever captured the old ones
(CUDA graphs) compares :attr:`RopeTables.version` and re-captures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from arvid.kernels.layouts import RopeCosSin
from arvid.kernels.qk_norm_rope_append import rms_norm_across_heads_ref
from arvid.kernels.rope_3d import apply_rope_3d_ref, rope_3d_cos_sin, rope_3d_tables

from .devices import check_fits


def table_rows(rows: int, positions: int) -> int:
    """The rows a table of ``rows`` grows to (doubling) to cover ``positions``."""
    while rows < positions:
        rows *= 2
    return rows


def check_tables_fit(head_dim: int, rows: int, positions: int, device: torch.device | str = "cpu") -> None:
    """Refuse (one-line ``ValueError``) tables grown from ``rows`` to cover ``positions`` that would not
    fit: what :meth:`RopeTables.ensure` checks, and a command before it loads any weights."""
    size = table_rows(rows, positions)
    # the tables are computed in float64 (angles, then cos / sin) and kept in float32: ~24 bytes an entry
    check_fits(
        24 * size * (head_dim // 2),
        "cpu",
        f"the RoPE tables for {positions:,} positions (latent frames; {size:,} rows after doubling)",
    )
    if torch.device(device).type != "cpu":  # then copied there, float32 cos and sin
        check_fits(8 * size * (head_dim // 2), device, f"the RoPE tables for {positions:,} positions")


class RopeTables:
    """float32 ``cos`` / ``sin`` tables ``[P, D/2]`` on one device, grown by doubling."""

    def __init__(self, head_dim: int, positions: int, device: torch.device | str = "cpu") -> None:
        self.head_dim = head_dim
        self.cos, self.sin = rope_3d_tables(head_dim, positions, device=device)
        self.version = 0  # bumped whenever the tensors are replaced

    @property
    def cos_sin(self) -> RopeCosSin:
        """The current tensors as the kernels take them (a view of the owner: re-read after :meth:`ensure`)."""
        return RopeCosSin(self.cos, self.sin)

    @property
    def positions(self) -> int:
        return self.cos.shape[0]

    @property
    def device(self) -> torch.device:
        return self.cos.device

    def ensure(self, positions: int, device: torch.device | str | None = None) -> bool:
        """Cover ``positions`` rows (doubling) on ``device``; returns True if the tensors were replaced."""
        device = torch.device(device) if device is not None else self.device
        size = table_rows(self.positions, positions)
        if size == self.positions and device == self.device:
            return False
        check_tables_fit(self.head_dim, self.positions, positions, device)
        self.cos, self.sin = rope_3d_tables(self.head_dim, size, device=device)
        self.version += 1
        return True


@dataclass
class RopeInput:
    """RoPE for one forward over a block of frames: the tables, the token grid and the frame offset.

    ``frame_offset`` is a host int or an int32 device scalar ``[1]`` (capturable). A fused kernel
    reads the tables and the offset itself; plain-PyTorch paths take :attr:`per_token`, computed
    once per forward and only when asked for.
    """

    tables: RopeCosSin  # cos / sin [P, D/2] float32, handed to the fused kernel as they are
    grid: tuple[int, int, int]  # (F, Hp, Wp) tokens of the forward
    frame_offset: int | torch.Tensor
    _per_token: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[L, D/2]`` for the forward's ``L = F*Hp*Wp`` tokens."""
        if self._per_token is None:
            self._per_token = rope_3d_cos_sin(self.tables.cos, self.tables.sin, self.grid, self.frame_offset)
        return self._per_token


@dataclass(frozen=True)
class QKNorm:
    """The q/k RMSNorm of one self-attention layer: Wan normalises over all ``H*D`` features."""

    q_weight: torch.Tensor  # [H*D]
    k_weight: torch.Tensor  # [H*D]
    eps: float


def qk_norm_rope(
    q: torch.Tensor, k: torch.Tensor, norm: QKNorm | None, rope: RopeInput
) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k RMSNorm then 3D RoPE in plain PyTorch: what the fused append kernel does in one pass.

    ``norm=None``: q/k come normalised already (sequence parallel norms its local tokens over all
    heads before the all-to-all, ``parallel.py``); only RoPE runs.
    """
    cos, sin = rope.per_token
    if norm is not None:
        q = rms_norm_across_heads_ref(q, norm.q_weight, norm.eps)
        k = rms_norm_across_heads_ref(k, norm.k_weight, norm.eps)
    return apply_rope_3d_ref(q, cos, sin), apply_rope_3d_ref(k, cos, sin)
