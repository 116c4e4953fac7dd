"""The stream bench under sequence parallel: every rank's timings of a run gathered after it (outside
the timed region), the whole job's chunk latency (the slowest rank's), and the per-rank record of a
variant in the report.
"""

from __future__ import annotations

import statistics

import torch
import torch.distributed as dist

from arvid.runtime.parallel import SequenceParallel


def gather_ranks(
    run_ms: list[float], run_comm_ms: list[float], sp: SequenceParallel, device: torch.device
) -> tuple[list[list[float]], list[list[float]]]:
    """Every rank's timed chunk latencies and collective ms per chunk of one run (every rank calls it).

    Parameters
    ----------
    run_ms, run_comm_ms : this rank's ``[timed chunks]`` latencies and time in the group's collectives.
    sp : the group the run was split over.
    device : where the group's backend gathers (CUDA for NCCL).

    Returns
    -------
    ``(chunk_ms, comm_ms)``, each ``[ranks][timed chunks]``, in rank order.
    """
    mine = torch.tensor([run_ms, run_comm_ms], dtype=torch.float64, device=device)
    every = [torch.empty_like(mine) for _ in range(sp.size)]
    dist.all_gather(every, mine, group=sp.group)  # not through sp: not charged to the collectives' time
    every_cpu = [t.cpu() for t in every]
    return [t[0].tolist() for t in every_cpu], [t[1].tolist() for t in every_cpu]


def whole_job_ms(rank_chunk_ms: list[list[float]]) -> list[float]:
    """The whole job's latency per chunk, ``[ranks][chunks] -> [chunks]``: the slowest rank's (a chunk is
    done when every rank is)."""
    return [max(ms) for ms in zip(*rank_chunk_ms, strict=True)]


def rank_summary(size: int, job_p50: float, rank_chunk_ms: list[list[float]], rank_comm_ms: list[list[float]]) -> dict:
    """A variant's ``sequence_parallel`` record: each rank's own p50 and collective ms per chunk, over
    every round (``[ranks][timed chunks of all rounds]``), beside the whole job's p50."""
    return {
        "size": size,
        "job_chunk_ms_p50": job_p50,
        "rank_chunk_ms_p50": [statistics.median(ms) for ms in rank_chunk_ms],
        "rank_comm_ms_per_chunk": [statistics.mean(ms) for ms in rank_comm_ms],
        "comm_ms_per_chunk": statistics.mean(x for ms in rank_comm_ms for x in ms),
        "rank_chunk_ms": rank_chunk_ms,
        "rank_comm_ms": rank_comm_ms,
    }
