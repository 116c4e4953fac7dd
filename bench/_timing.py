"""What the benchmarks share: the LongLive shapes, the result row, timing, printing, JSON (the kernel
micro-benchmarks), and the device synchronisation every timer needs (the stream bench, the estimate)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from arvid.runtime.files import atomic_write

TOKENS_PER_FRAME = 1560  # 30 x 52 latent patches at 832 x 480
FRAME_GRID = (30, 52)
SINK_TOKENS = 3 * TOKENS_PER_FRAME
CACHE_TOKENS = 12 * TOKENS_PER_FRAME  # 18720


@dataclass
class Row:
    shape: str
    method: str
    batch: int
    lq: int
    kv: int
    heads: int
    head_dim: int
    ms: float | None = None
    tflops: float | None = None
    max_abs_err: float | None = None  # vs the sdpa-gathered output (or the reference on CPU)
    ratio: float | None = None  # append rows: append ms / triton attention ms
    note: str = ""
    extra: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously; a CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls: CUDA events per call on a GPU, else perf_counter."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def print_table(rows: list[Row], title: str) -> None:
    print(f"\n{title}")
    header = f"{'shape':<16}{'method':<34}{'Lq':>7}{'kv':>7}{'ms':>10}{'TFLOP/s':>10}{'max|err|':>11}{'ratio':>8}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        ms = f"{r.ms:.3f}" if r.ms is not None else "-"
        tf = f"{r.tflops:.1f}" if r.tflops is not None else "-"
        err = f"{r.max_abs_err:.2e}" if r.max_abs_err is not None else "-"
        ratio = f"{100 * r.ratio:.1f}%" if r.ratio is not None else "-"
        print(f"{r.shape:<16}{r.method:<34}{r.lq:>7}{r.kv:>7}{ms:>10}{tf:>10}{err:>11}{ratio:>8}  {r.note}")


def environment_info(device: torch.device) -> dict:
    from arvid.bench.env import environment

    return environment(device)


def write_json(path: str, payload: dict) -> None:
    text = json.dumps(payload, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"\nwrote {path}")


def short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {msg[:100]}"
