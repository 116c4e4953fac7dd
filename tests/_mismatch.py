"""Where two tensors differ: a readable report for kernel-vs-reference asserts.

Use as ``report = mismatch_report(out, ref, atol=..., rtol=...); assert not report, report``.
"""

from __future__ import annotations

import torch


def mismatch_report(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    name: str = "tensor",
    dims: str = "blhd",
) -> str:
    """Empty string when ``|actual - expected| <= atol + rtol * |expected|`` everywhere (NaN never passes).

    Otherwise: shape, count of mismatching elements, the worst error with its index named by
    ``dims`` (e.g. ``b=0, l=17, h=2, d=5``), the value pair there, and the first few other offenders.
    """
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN in either compares False, so it counts as bad
    n_bad = int(bad.sum())
    if n_bad == 0:
        return ""
    # NaN ranks worst; the report still prints the raw (NaN) error.
    rank = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    worst = int(torch.argmax(torch.where(bad, rank, torch.zeros_like(rank))))
    labels = dims if len(dims) == a.dim() else "".join(f"i{k}" for k in range(a.dim()))

    def where(flat: int) -> str:
        idx = torch.unravel_index(torch.tensor(flat), a.shape)
        return ", ".join(f"{lab}={int(i)}" for lab, i in zip(labels, idx, strict=True))

    lines = [
        f"{name}: {n_bad} of {a.numel()} elements differ (atol={atol:g}, rtol={rtol:g}), shape {tuple(a.shape)}",
        f"  worst |err|={float(err.flatten()[worst]):.4g} at ({where(worst)}): "
        f"actual={float(a.flatten()[worst]):.6g} expected={float(e.flatten()[worst]):.6g}",
    ]
    for flat in bad.flatten().nonzero().flatten()[:5].tolist():
        lines.append(
            f"  e.g. ({where(flat)}): actual={float(a.flatten()[flat]):.6g} expected={float(e.flatten()[flat]):.6g}"
        )
    return "\n".join(lines)
