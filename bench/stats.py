"""Statistics of benchmark samples: the summary of one variant, the warnings that its numbers are
noisy, and the A/B test of two.

One home for the numbers ``arvid bench`` prints and ``arvid report`` compares, so a table, a plot
and a regression gate never disagree on what "p50" or "significant" means.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
import psutil

CV_WARN = 0.10  # coefficient of variation above which a variant's numbers are called noisy
LOAD_WARN = 0.5  # others' load (load average - our threads) above this fraction of the cores: a busy machine


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


def chunk_summary(
    chunk_ms: Sequence[float],
    *,
    host_ms: Sequence[float],
    vae_ms: Sequence[float],
    chunk_frames: int,
    batch_size: int,
    rounds: int,
    steady: Sequence[bool],
) -> dict:
    """Statistics of a variant's timed chunks; FPS from the median latency (frames of every video in the batch).

    Parameters
    ----------
    chunk_ms : ``[rounds * timed chunks]`` latencies, round after round.
    host_ms : host (launch) time per timed chunk; empty where not recorded.
    vae_ms : streaming VAE decode per timed chunk (``--vae``); empty without it.
    chunk_frames, batch_size : latent frames per chunk and videos generated together.
    rounds : how many runs ``chunk_ms`` holds, for the per-round medians.
    steady : per timed chunk of a round, the chunks with a full cache and no re-cache: their
        coefficient of variation (``chunk_ms_cv_steady``) measures noise, not the extra work of
        fill-phase or prompt-switch chunks.
    """
    st = summarize(chunk_ms)
    steady_ms = [ms for i, ms in enumerate(chunk_ms) if steady[i % len(steady)]]
    noise = summarize(steady_ms) if len(steady_ms) >= 2 else st
    latent_fps = batch_size * chunk_frames / (st["p50"] / 1000)
    per_round = len(chunk_ms) // rounds
    end_to_end = [c + v for c, v in zip(chunk_ms, vae_ms, strict=True)] if vae_ms else None
    return {
        "chunk_ms_stats": st,
        "chunk_ms_p50": st["p50"],
        "chunk_ms_p90": st["p90"],
        "chunk_ms_p99": st["p99"],
        "chunk_ms_mean": st["mean"],
        "chunk_ms_std": st["std"],
        "chunk_ms_iqr": st["iqr"],
        "chunk_ms_cv": st["cv"],
        "chunk_ms_cv_steady": noise["cv"],
        "round_p50_ms": [statistics.median(chunk_ms[i * per_round : (i + 1) * per_round]) for i in range(rounds)],
        "latent_fps": latent_fps,
        # Each latent frame decodes to 4 video frames (the video's very first to 1).
        "video_fps_dit_only": 4 * latent_fps,
        "host_ms_p50": statistics.median(host_ms) if host_ms else None,
        "vae_ms_p50": statistics.median(vae_ms) if vae_ms else None,
        "end_to_end_ms_stats": summarize(end_to_end) if end_to_end else None,
        # DiT + VAE decode of the timed chunks, median of their per-chunk sums.
        "video_fps_end_to_end": (
            4 * batch_size * chunk_frames / (statistics.median(end_to_end) / 1000) if end_to_end else None
        ),
    }


def noise_warnings(
    variants: list[dict], loads: list[list[float] | None], threads: int, cores: int | None = None
) -> list[str]:
    """Warnings for a variant whose steady-state chunk latency (``chunk_ms_cv_steady``) has a
    coefficient of variation over :data:`CV_WARN`, and for a busy machine: a 1-minute load average
    (of ``loads``, taken at the start and the end) that exceeds this run's own ``threads`` by more
    than :data:`LOAD_WARN` of the ``cores``."""
    out = [
        f"{v['backend']}: steady-state chunk latency varies by {v['chunk_ms_cv_steady']:.0%} (coefficient of "
        f"variation, over {CV_WARN:.0%}): treat its numbers and ratios as noisy; use more --rounds / --frames or "
        "a quiet machine"
        for v in variants
        if v["chunk_ms_cv_steady"] > CV_WARN
    ]
    cores = cores or psutil.cpu_count() or 1
    busiest = max((load[0] for load in loads if load), default=None)
    if busiest is not None and busiest - threads > LOAD_WARN * cores:
        out.append(
            f"machine busy: load average {busiest:.2f} on {cores} cores while this run used {threads} thread(s); "
            "other processes compete for the CPU and the numbers may not be reproducible"
        )
    return out


def recompile_warnings(variants: list[dict]) -> list[str]:
    """A warning per variant that Dynamo compiled inside its timed chunks: the compile is in its latencies."""
    return [
        f"{v['backend']}: Dynamo compiled {v['recompiles']} time(s) inside timed chunks: its p99, mean and CV "
        "include compile time"
        for v in variants
        if v.get("recompiles")
    ]


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
