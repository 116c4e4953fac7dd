"""Wan's 3D rotary position embedding: tables and the plain-PyTorch rotation.

The head dim D is split into D/2 complex pairs ``(x[2j], x[2j+1])``; the pairs are shared
out over the three axes as ``c - 2*(c//3)`` frame, ``c//3`` height and ``c//3`` width pairs
(c = D/2), which is Wan's ``d - 4*(d//6), 2*(d//6), 2*(d//6)`` split of the head dim.
A token at latent position (frame f, row h, column w) rotates pair j by
``pos_axis(j) * theta**(-2i/d_axis)`` with i the pair's index inside its axis.
"""

from __future__ import annotations

import torch


def rope_3d_split(head_dim: int) -> tuple[int, int, int]:
    """Number of complex pairs (frame, height, width) for ``head_dim``."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_3d_tables(
    head_dim: int, max_positions: int, theta: float = 10000.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables, each ``[max_positions, head_dim // 2]`` float32.

    Column j holds ``cos/sin(p * freq_j)`` for position p along the axis that owns pair j.
    Angles are computed in float64 (as Wan does) and rounded once to float32.
    """
    cols = []
    for pairs in rope_3d_split(head_dim):
        d_axis = 2 * pairs
        cols.append(theta ** (-torch.arange(0, d_axis, 2, dtype=torch.float64) / d_axis))
    inv_freq = torch.cat(cols)  # [D/2]
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rope_3d_positions(
    grid_sizes: tuple[int, int, int], frame_offset: int | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-token (frame, row, column) positions ``[F*Hp*Wp, 3]`` int64, tokens in (f, h, w) order."""
    f, h, w = grid_sizes
    ff, hh, ww = torch.meshgrid(
        torch.arange(f, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    pos = torch.stack([ff.flatten(), hh.flatten(), ww.flatten()], dim=-1)
    pos[:, 0] += torch.as_tensor(frame_offset, device=device).reshape(()).long()  # device offset: no host sync
    return pos


def rope_3d_cos_sin(
    rope_cos: torch.Tensor,
    rope_sin: torch.Tensor,
    grid_sizes: tuple[int, int, int],
    frame_offset: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the per-token cos/sin ``[L, D/2]`` for a block of frames starting at ``frame_offset``."""
    cf, ch, _ = rope_3d_split(2 * rope_cos.shape[1])
    if isinstance(frame_offset, int):  # checked on the host; a device offset is the caller's to check (no sync)
        top = max(frame_offset + grid_sizes[0], grid_sizes[1], grid_sizes[2]) - 1
        if top >= rope_cos.shape[0]:
            raise ValueError(
                f"RoPE position {top} is past the table's {rope_cos.shape[0]} positions "
                "(raise ModelConfig.rope_max_positions)"
            )
    pos = rope_3d_positions(grid_sizes, frame_offset, rope_cos.device)
    col = torch.arange(rope_cos.shape[1], device=rope_cos.device)
    axis = (col >= cf).long() + (col >= cf + ch).long()  # 0 frame, 1 height, 2 width
    rows = pos[:, axis]  # [L, D/2]
    return rope_cos[rows, col], rope_sin[rows, col]


def apply_rope_3d_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, L, H, D]`` by per-token ``cos/sin`` ``[L, D/2]``; math in float32."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
    return out.to(x.dtype)
