"""Sequence-parallel scenarios run by every rank of a gloo group (``test_sequence_parallel.py`` spawns them).

Rank 0 gets the scenario's inputs; the other ranks get different noise, re-noise and prompts on
purpose, so a run only matches the single-process one if the generator broadcasts rank 0's.
Each rank saves what it saw (latents and its cache after every chunk, its collective trace).
"""

from __future__ import annotations

import dataclasses
import os
import traceback

import torch
import torch.distributed as dist

from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset

FRAMES = 18  # 6 chunks: the 4-slot ring fills, wraps and evicts
SWITCHES = (6, 15)  # a re-cache from frame 0 (s <= 12) and one past the sink (s > 12)
# triton runs apart, short (TRITON_FRAMES): under TRITON_INTERPRET=1 a full stream took ~36 s here.
SCENARIOS = [(backend, gs) for backend in ("sdpa", "eager") for gs in (True, False)]


# triton at 4 ranks (one head each), short: under TRITON_INTERPRET=1 a forward takes ~1 s here.
TRITON_FRAMES, TRITON_SWITCHES = 6, (3,)
DP_SEEDS = (7, 8)  # the streams of the two data-parallel groups at 4 ranks


def scenarios_for(size: int) -> list[tuple[str, bool]]:
    """Every scenario at 2 ranks; at 4, sdpa only (eager costs time, not coverage of the split)."""
    return SCENARIOS if size <= 2 else [s for s in SCENARIOS if s[0] == "sdpa"]


def preset_for(size: int):
    """The tiny preset with enough heads for ``size`` ranks (tiny has 2; 4 ranks get 4 heads of 16)."""
    p = get_preset("tiny")
    if p.model.num_heads % size:
        p = dataclasses.replace(p, model=dataclasses.replace(p.model, num_heads=4))
    return p


def inputs(preset, seed: int, frames: int = FRAMES, switches: tuple[int, ...] = SWITCHES):
    """Noise, one prompt per segment and a re-noise generator, all from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    m = preset.model
    noise = torch.randn(1, frames, m.in_dim, preset.latent_height, preset.latent_width, generator=g)
    prompts = [torch.randn(1, m.text_len, m.text_dim, generator=g) for _ in range(len(switches) + 1)]
    return noise, prompts, torch.Generator().manual_seed(seed + 1)


def cache_state(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """``[layers, B, S, H, D]`` K and V of a ring (``RingKVCache``) or the eager baseline's cache."""
    if isinstance(cache.k, list):
        return torch.stack(cache.k).clone(), torch.stack(cache.v).clone()
    return cache.k.clone(), cache.v.clone()


def run_stream(gen: StreamingGenerator, cache, preset, seed: int, frames: int = FRAMES, switches=SWITCHES):
    noise, prompts, renoise = inputs(preset, seed, frames, switches)
    latents, caches = [], []
    for c in gen.stream(noise, prompts, switches, generator=renoise):
        latents.append(c.latents.clone())
        caches.append(cache_state(cache))
    return torch.cat(latents, dim=1), caches


def round_trip(sp, size: int, rank: int) -> dict:
    """seq_to_heads against the slice of the whole tensors; heads_to_seq back is the identity."""
    b, n, h, d = 1, 6, 4 * size, 8
    local = [[torch.randn(b, n, h, d, generator=torch.Generator().manual_seed(100 * r + i)) for i in range(3)]
             for r in range(size)]  # fmt: skip
    q, k, v = sp.seq_to_heads(*local[rank])
    hn = h // size
    want = [torch.cat([local[r][i] for r in range(size)], dim=1)[:, :, rank * hn : (rank + 1) * hn] for i in range(3)]
    heads_ok = all(torch.equal(a, w) for a, w in zip((q, k, v), want, strict=True))
    back = sp.heads_to_seq(q.contiguous())
    # Two rank blocks per rank: tokens not divisible by heads, uneven shapes per collective.
    return {"heads_ok": heads_ok, "back_ok": torch.equal(back, local[rank][0])}


def main(rank: int, size: int, store_path: str, out_dir: str) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", store=dist.FileStore(store_path, size), rank=rank, world_size=size)
        from arvid.runtime.parallel import SequenceParallel

        results: dict = {}
        sp = SequenceParallel(trace=True)
        results["round_trip"] = round_trip(sp, size, rank)
        preset = preset_for(size)
        model = build_model(preset.model, seed=0)
        for backend, global_sink in scenarios_for(size):
            sp = SequenceParallel(trace=True, timing=backend == "sdpa")
            gen = StreamingGenerator(
                model, StreamConfig(global_sink=global_sink), latent_size=(preset.latent_height, preset.latent_width),
                backend=backend, sequence_parallel=sp,
            )  # fmt: skip
            seed = 7 if rank == 0 else 1000 + rank  # other ranks' own inputs must be overridden by rank 0's
            latents, caches = run_stream(gen, gen.executor.cache.inner, preset, seed)
            results[(backend, global_sink)] = {
                "latents": latents,
                "caches": caches,
                "trace": sp.trace,
                "comm_s": sp.comm_seconds(),
            }
        if size == 4:  # sequence parallel x data parallel: two groups of two, each its own stream
            from arvid.runtime.parallel import init_parallel_groups

            dp = init_parallel_groups(2, trace=True)
            gen = StreamingGenerator(
                model, StreamConfig(), latent_size=(preset.latent_height, preset.latent_width), backend="sdpa",
                sequence_parallel=dp,
            )  # fmt: skip
            seed = DP_SEEDS[dp.data_rank] if dp.rank == 0 else 2000 + rank
            latents, caches = run_stream(gen, gen.executor.cache.inner, preset, seed)
            sp = SequenceParallel(trace=True)
            gen = StreamingGenerator(
                model, StreamConfig(), latent_size=(preset.latent_height, preset.latent_width), backend="triton",
                sequence_parallel=sp,
            )  # fmt: skip
            seed = 7 if rank == 0 else 3000 + rank
            got = run_stream(gen, gen.executor.cache.inner, preset, seed, TRITON_FRAMES, TRITON_SWITCHES)
            results["triton"] = {"latents": got[0], "caches": got[1], "trace": sp.trace}
            results["dp"] = {"latents": latents, "caches": caches, "trace": dp.trace, "shard": dp.shard(list(range(5)))}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
