"""What an ``arvid bench --json`` report is: its schema names, the statistic its FPS come from, and
the run's layout that both the timing (``stream_bench.py``) and the readers (``report.py``,
``roofline.py``) need, so none of them imports another to learn it.
"""

from __future__ import annotations

from collections.abc import Sequence

from arvid.runtime.prompts import align_switch_frames

SCHEMA = "arvid.stream_bench/2"
SCHEMAS = ("arvid.stream_bench/1", SCHEMA)  # /1: before the spread statistics; report.py upgrades it on load
STATISTIC = "p50"  # the chunk-latency statistic FPS and speed-ups are computed from


def switch_chunks(switch_frames: Sequence[int], chunk_frames: int, frames: int) -> list[int]:
    """Indices of the chunks whose time includes a prompt switch's KV re-cache (LongLive's alignment)."""
    return [a // chunk_frames for a in align_switch_frames(switch_frames, chunk_frames, frames)]
