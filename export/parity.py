"""Parity of an exported artifact against the eager graph on the same inputs, in terms a reader can judge.

The max abs difference alone misleads at the real size: one rounding step at the largest values is
6.25e-2 in bf16 between 8 and 16 (8 significant bits), so it is reported beside the relative L2
error, to be read against the dtype's unit roundoff (fp32 6.0e-8, bf16 3.9e-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _blocks(o: torch.Tensor, r: torch.Tensor, size: int = 1 << 22):
    """Float64 blocks of both, flattened: the 1.3B step's K/V outputs are 215M values each, and one float64
    copy of them would be 1.7 GB."""
    o, r = o.detach().cpu().reshape(-1), r.detach().cpu().reshape(-1)
    for i in range(0, o.numel(), size):
        yield o[i : i + size].double(), r[i : i + size].double()


def max_abs_diff(outs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
    """Max abs difference per named output."""
    return {
        n: max((float((a - b).abs().max()) for a, b in _blocks(o, r)), default=0.0)
        for n, o, r in zip(names, outs, reference, strict=True)
    }


def relative_l2(outs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
    """``||out - ref|| / ||ref||`` per named output (``||out - ref||`` where ``ref`` is all zeros)."""
    result = {}
    for n, o, r in zip(names, outs, reference, strict=True):
        err = ref = 0.0
        for a, b in _blocks(o, r):
            err += float((a - b).square().sum())
            ref += float(b.square().sum())
        result[n] = (err / ref) ** 0.5 if ref > 0 else err**0.5
    return result
