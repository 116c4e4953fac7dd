"""The tiny bench run the bench test modules read (eager against sdpa, 12 latent frames, 2 rounds,
1 thread): run once per test session rather than once per module, each caller getting its own copy
to change."""

from __future__ import annotations

import copy

import torch

from arvid.bench.stream_bench import run_stream_bench

_memo: dict[str, dict] = {}


def tiny_report() -> dict:
    """A copy of the session's one ``run_stream_bench`` report of the tiny preset (CPU, float32)."""
    if "report" not in _memo:
        _memo["report"] = run_stream_bench(
            "tiny", device=torch.device("cpu"), dtype=torch.float32, backends=["eager", "sdpa"], frames=12, warmup=1,
            rounds=2, threads=1,
        )  # fmt: skip
    return copy.deepcopy(_memo["report"])
