"""Parity of an exported artifact against the eager graph on the same inputs, in terms a reader can judge.

The max abs difference alone misleads at the real size: one rounding step at the largest values is
6.25e-2 in bf16 between 8 and 16 (8 significant bits), so it is reported beside the relative L2
error, to be read against the dtype's unit roundoff (fp32 6.0e-8, bf16 3.9e-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Matmul rates of this project's 2-core AVX2 CPU (one 4680 x 1536 x 1536 matmul, measured 2026-12-07): bf16 has
# no fast kernel there. What an eager reference costs on a CPU, to decide before running it.
CPU_MATMUL_FLOPS = {torch.float32: 8.9e9, torch.bfloat16: 0.3e9, torch.float16: 0.3e9}
# The longest eager reference (and as long again for the artifact's own run) an export spends on parity.
PARITY_MAX_S = 300.0


def too_slow_for_parity(device: torch.device | str, dtype: torch.dtype, flops: float) -> str | None:
    """Why the eager reference of a graph of ``flops`` is not run on ``device``, or ``None``.

    On a CPU the forward is timed by the rates above: the 1.3B step (about 28 TFLOP) would take
    about a day in bf16 and 50 minutes in fp32; the tiny graphs take milliseconds. GPUs always run it."""
    if torch.device(device).type != "cpu":
        return None
    seconds = flops / CPU_MATMUL_FLOPS.get(dtype, CPU_MATMUL_FLOPS[torch.float32])
    if seconds <= PARITY_MAX_S:
        return None
    return (
        f"the eager reference ({flops / 1e12:.1f} TFLOP in {str(dtype).removeprefix('torch.')}) would take about "
        f"{seconds / 60:.0f} min on this CPU; measure the parity on a GPU"
    )


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
