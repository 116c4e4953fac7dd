"""What a long export says while it works: each stage when it starts and how long it took, and the
process's peak memory at the end. A 1.3B export runs for minutes on a CPU and is never silent."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@contextlib.contextmanager
def stage(log: Callable[[str], None], what: str) -> Iterator[None]:
    """``log`` when a stage of a long export starts and how long it took: minutes of a 1.3B export
    are never silent."""
    log(f"{what} ...")
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.1f} s")
