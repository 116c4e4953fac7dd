"""Statistics of benchmark samples (NumPy only): the summary of one variant and the A/B test of two.

One home for the numbers ``arvid bench`` prints and ``arvid report`` compares, so a table, a plot
and a regression gate never disagree on what "p50" or "significant" means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CV_WARN = 0.10  # coefficient of variation above which a variant's numbers are called noisy


def summarize(samples: Sequence[float]) -> dict:
    """Mean, standard deviation, coefficient of variation, IQR and percentiles of ``samples``.

    Percentiles are NumPy's default (linear interpolation between closest ranks); ``std`` is the
    sample standard deviation (``ddof=1``; 0 for a single sample); ``cv`` = std / mean.

    Raises
    ------
    ValueError : no samples.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    p25, p50, p75, p90, p99 = np.percentile(x, [25, 50, 75, 90, 99])
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {
        "n": int(x.size),
        "mean": mean,
        "std": std,
        "cv": std / mean if mean else float("nan"),
        "min": float(x.min()),
        "max": float(x.max()),
        "p25": float(p25),
        "p50": float(p50),
        "p75": float(p75),
        "p90": float(p90),
        "p99": float(p99),
        "iqr": float(p75 - p25),
    }


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test that ``a`` and ``b`` come from one distribution.

    Normal approximation with tie correction and continuity correction (what SciPy's
    ``mannwhitneyu(method="asymptotic")`` computes); adequate from about 8 samples a side, which
    a default bench run (3 rounds of the timed chunks) gives. Returns 1.0 when every sample is tied.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        raise ValueError(f"Mann-Whitney needs samples on both sides, got {n1} and {n2}")
    both = np.concatenate([x, y])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty_like(both)
    ranks[order] = np.arange(1, both.size + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # average ranks of tied values
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    tie = (counts**3 - counts).sum() / (n * (n - 1))
    var = n1 * n2 / 12 * ((n + 1) - tie)
    if var <= 0:
        return 1.0
    mu = n1 * n2 / 2
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    return float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


def bootstrap_ratio_ci(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``median(b) / median(a)`` (resampling each side)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mx = np.median(rng.choice(x, size=(resamples, x.size)), axis=1)
    my = np.median(rng.choice(y, size=(resamples, y.size)), axis=1)
    lo, hi = np.percentile(my / mx, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
