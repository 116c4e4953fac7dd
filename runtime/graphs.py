"""The one CUDA-graph capture helper every runner uses (``ChunkRunner``, the ``aoti+graphs`` runner).

What a capture needs, in one place: warm-up runs on a side stream first (Triton autotuning, cuBLAS
workspaces, the allocator's first blocks: none of it may happen inside the capture), then the
capture itself into the caller's memory pool, so all of a runner's graphs share one pool. The
caller loads whatever the body reads from device scalars (the plan) before calling, and keys and
keeps the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def capture_graph(
    body: Callable[[], object], *, device: torch.device | str | None = None, pool=None, warmups: int = 1
) -> torch.cuda.CUDAGraph:
    """Run ``body`` ``warmups`` times on a side stream, then capture it as a CUDA graph in ``pool``.

    ``body`` must be idempotent over its static buffers (the warm-ups run it for real). Pass the
    returned graph's ``pool()`` to the next capture to share memory. ``device``: the GPU the body's
    tensors live on (default the current one); the streams are that device's, since a capture on
    ``cuda:0``'s stream of kernels launched on ``cuda:1`` records nothing. Synchronizes before returning.
    """
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmups):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            body()
        torch.cuda.synchronize()
    return graph
