"""End-to-end streaming benchmark: several variants on the same model and inputs, in one process.

What is timed: the DiT work of each chunk (4 denoising forwards + the clean-context update, and
the KV re-cache where a prompt switch falls before the chunk), from the chunk's start to its
latents being ready (CUDA synchronised). CUDA-graph capture (variants with +graphs) happens
before the first chunk and is reported apart; host time is the launch/replay time per chunk.
With --vae, each chunk's streaming VAE decode is timed apart (after the DiT's latents are
ready) and gives the end-to-end FPS. Not timed: text encoding (embeddings are given). The
first --warmup chunks of every run are left out of the statistics; each variant runs
--rounds times, the variants interleaved round by round. FPS and the speed-up over the
baseline both come from the median (p50) chunk latency over all timed chunks of all rounds.

With sequence parallel (``--sequence-parallel N`` under torchrun), every rank runs the same variants
in the same order; a chunk's latency is the whole job's, the maximum over the ranks of each rank's
time for it (gathered after each run, outside the timed region). Each rank's own p50 and its time in
the group's collectives per chunk (host clock around gloo calls, CUDA events around NCCL's) are
reported per variant under ``sequence_parallel``. No speed-up over one rank is measured in the job.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import psutil
import torch

from arvid.runtime import GeneratorOptions, StreamConfig, StreamingGenerator, get_preset
from arvid.runtime.config import Preset, check_frames
from arvid.runtime.loaders import load_dit
from arvid.runtime.model import CausalWanModel
from arvid.runtime.parallel import SequenceParallel
from arvid.runtime.prompts import placeholder_prompt_embeds
from arvid.runtime.vae import StreamingVAEDecoder

from ._timing import sync
from .env import environment, load_average
from .estimate import check_host_memory, default_frames
from .schema import SCHEMA, STATISTIC, switch_chunks
from .sequence_parallel import gather_ranks, rank_summary, whole_job_ms
from .stats import chunk_summary, noise_warnings, recompile_warnings
from .variants import check_variants, split_variant, variant_models


@dataclass
class VariantResult:
    backend: str  # the variant spec, e.g. "triton+graphs" or "sdpa@quantized/int8"
    chunk_ms: list[float] = field(default_factory=list)  # timed chunks over all rounds, round after round
    first_chunk_ms: float = 0.0  # first chunk of the first round (includes lazy set-up)
    peak_memory_bytes: int = 0
    peak_reserved_bytes: int | None = None
    memory_kind: str = ""
    cache_bytes: int = 0
    max_abs_diff_vs_baseline: float | None = None
    host_ms: list[float] = field(default_factory=list)  # host time per timed chunk (launches, no sync)
    memory_bytes_per_chunk: list[int] = field(default_factory=list)  # after each chunk, first round
    capture_seconds: float = 0.0  # CUDA-graph warm-up + capture, before the first chunk
    vae_ms: list[float] = field(default_factory=list)  # streaming VAE decode per timed chunk (with --vae)
    quant: dict | None = None  # how the DiT was quantized (scheme, backend, source), None for the float model
    recompiles: int = 0  # Dynamo frame compilations inside timed chunks, all rounds (should be 0)
    # Sequence parallel: per rank, its own timed chunk latencies and collective ms per timed chunk.
    rank_chunk_ms: list[list[float]] = field(default_factory=list)
    rank_comm_ms: list[list[float]] = field(default_factory=list)


def _random_vae(preset, device: torch.device, dtype: torch.dtype, seed: int):
    """A random-weight streaming Wan VAE: the tiny preset's small one, else Wan2.1's structure."""
    from arvid.runtime.optional import require
    from arvid.runtime.vae import WAN21_VAE_CONFIG, tiny_vae

    AutoencoderKLWan = require("diffusers", "AutoencoderKLWan", purpose="--vae")

    if preset.name == "tiny":
        return tiny_vae(seed=seed, device=device, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoencoderKLWan(**WAN21_VAE_CONFIG)
    return torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def dynamo_compiles() -> int:
    """Frames Dynamo has compiled in this process so far (0 while torch._dynamo is not imported)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return int(utils.counters["frames"]["ok"]) if utils is not None else 0


@contextlib.contextmanager
def torch_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``torch.set_num_threads(threads)`` for CPU work (restored after); None leaves it as is.

    Single-threaded CPU timing (the CLI's default) is far less sensitive to other processes on a
    shared machine than a run that competes for every core.
    """
    if threads is None or device.type != "cpu":
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_stream_bench(
    preset: str | Preset = "tiny",
    *,
    device: torch.device,
    dtype: torch.dtype,
    backends: list[str],
    frames: int | None = None,
    warmup: int = 2,
    rounds: int = 3,
    switch_frames: tuple[int, ...] = (),
    seed: int = 0,
    model: CausalWanModel | None = None,
    stream: StreamConfig | None = None,
    batch_size: int = 1,
    vae: bool = False,
    threads: int | None = None,
    progress: bool = False,
    sequence_parallel: SequenceParallel | None = None,
) -> dict:
    """Run every variant on the same inputs; returns a JSON-ready dict (printed by ``report.format_table``).

    Parameters
    ----------
    backends : variant strings, baseline first (``BACKEND[+FLAG...]``, see
        :mod:`arvid.runtime.variants`); ``+int8`` / ``+int8wo`` / ``+fp8`` time a copy of the model
        quantized here, ``BACKEND@DIR`` a model saved by ``arvid quantize``.
    vae : also decode every chunk with a streaming Wan VAE of the preset's size (random weights:
        the speed does not depend on them), timed apart, for end-to-end FPS.
    threads : CPU threads for the timed work (``torch.set_num_threads``, restored after); None
        leaves the process's setting. The count used is recorded in the environment.
    progress : a progress bar per variant and round (tqdm, on stderr).
    sequence_parallel : run every variant sequence parallel over this group (every rank calls this
        with the same arguments); chunk latencies become the whole job's (max over ranks).
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    stream = stream or StreamConfig()
    check_variants(backends, device)
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    if frames is None:
        frames = default_frames(p, stream, warmup)
    check_frames(frames, stream.chunk_frames)
    if frames // stream.chunk_frames <= warmup:
        raise ValueError(f"{frames} frames give no timed chunk after {warmup} warm-up chunks")
    check_host_memory(p, frames=frames, batch_size=batch_size, variants=len(backends))
    if model is None:  # random weights: speed does not depend on them
        model = load_dit(config=p.model, device=device, dtype=dtype, seed=seed)
    with torch_threads(threads, device):
        return _run(p, device, dtype, backends, frames, warmup, rounds, switch_frames, seed, model, stream,
                    batch_size, vae, progress, sequence_parallel)  # fmt: skip


def _run(p, device, dtype, backends, frames, warmup, rounds, switch_frames, seed, model, stream, batch_size, vae,
         progress, sp) -> dict:  # fmt: skip
    from tqdm import tqdm

    models, quant_info = variant_models(backends, model, device)
    compiled: dict[int, CausalWanModel] = {}

    def make_generator(spec: str) -> StreamingGenerator:
        # Built per run and freed after it, so a variant's peak memory holds its own cache and
        # graphs only (a +compile variant keeps one compiled copy of its model for the process).
        opts = GeneratorOptions.from_variant(split_variant(spec)[0])
        m = models[spec]
        if opts.compile:  # compiled copy, so the other variants keep running the eager model
            m = compiled.setdefault(id(m), copy.deepcopy(m))
        return opts.build(
            m, stream, latent_size=(p.latent_height, p.latent_width), batch_size=batch_size, sequence_parallel=sp
        )

    vae_model = _random_vae(p, device, dtype, seed) if vae else None
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch_size, frames, p.model.in_dim, p.latent_height, p.latent_width, generator=g)
    prompts = [placeholder_prompt_embeds(f"prompt {i}", p, batch_size) for i in range(len(switch_frames) + 1)]
    results = {b: VariantResult(b, quant=quant_info[b]) for b in backends}
    outputs: dict[str, torch.Tensor] = {}
    proc = psutil.Process()
    chunks_total = frames // stream.chunk_frames
    load_start = load_average()

    for r in range(rounds):
        for b in backends:
            res = results[b]
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            gen = make_generator(b)
            sync(device)
            capture = gen.capture(prompts[0])
            res.capture_seconds = capture if r == 0 else res.capture_seconds
            chunks, peak_rss = [], proc.memory_info().rss
            run_ms, run_comm_ms = [], []  # this run's timed chunks (sequence parallel)
            comm0 = sp.comm_seconds() if sp is not None else 0.0
            bar = tqdm(total=chunks_total, desc=f"round {r + 1}/{rounds} {b}", unit="chunk", file=sys.stderr,
                       disable=not progress, leave=False, dynamic_ncols=True)  # fmt: skip
            t0 = time.perf_counter()
            renoise_gen = torch.Generator(device=device).manual_seed(seed + 1)
            decoder = StreamingVAEDecoder(vae_model) if vae_model is not None else None
            compiles0 = dynamo_compiles()
            for i, c in enumerate(gen.stream(noise, prompts, switch_frames, generator=renoise_gen)):
                sync(device)
                t1 = time.perf_counter()
                ms = (t1 - t0) * 1000
                if r == 0 and i == 0:
                    res.first_chunk_ms = ms
                if i >= warmup:
                    run_ms.append(ms)
                    res.host_ms.append(gen.last_host_ms)
                    res.recompiles += dynamo_compiles() - compiles0
                if sp is not None:  # after the clock stopped: on CUDA this reads (and syncs) the events
                    comm1 = sp.comm_seconds()
                    if i >= warmup:
                        run_comm_ms.append((comm1 - comm0) * 1000)
                    comm0 = comm1
                if decoder is not None:
                    decoder.decode(c.latents)
                    sync(device)
                    if i >= warmup:
                        res.vae_ms.append((time.perf_counter() - t1) * 1000)
                chunks.append(c.latents.cpu())
                rss = proc.memory_info().rss
                peak_rss = max(peak_rss, rss)
                if r == 0:
                    res.memory_bytes_per_chunk.append(
                        torch.cuda.memory_allocated(device) if device.type == "cuda" else rss
                    )
                bar.update()
                compiles0 = dynamo_compiles()
                t0 = time.perf_counter()  # host-side bookkeeping above is not charged to the next chunk
            bar.close()
            if sp is None:
                res.chunk_ms += run_ms
            else:
                rank_ms, rank_comm = gather_ranks(run_ms, run_comm_ms, sp, device)
                res.chunk_ms += whole_job_ms(rank_ms)
                if r == 0:
                    res.rank_chunk_ms, res.rank_comm_ms = rank_ms, rank_comm
                else:  # each rank's list runs on over the rounds, as chunk_ms does
                    for mine, more in zip(res.rank_chunk_ms + res.rank_comm_ms, rank_ms + rank_comm, strict=True):
                        mine += more
            if device.type == "cuda":
                res.memory_kind = "cuda_max_allocated"
                res.peak_memory_bytes = max(res.peak_memory_bytes, torch.cuda.max_memory_allocated(device))
                res.peak_reserved_bytes = max(res.peak_reserved_bytes or 0, torch.cuda.max_memory_reserved(device))
            else:
                res.memory_kind = "process_rss"
                res.peak_memory_bytes = max(res.peak_memory_bytes, peak_rss)
            res.cache_bytes = gen.kv_cache_nbytes
            outputs[b] = torch.cat(chunks, dim=1)
            del gen

    env = environment(device)
    env["load_average_start"] = load_start
    switches = set(switch_chunks(switch_frames, stream.chunk_frames, frames))
    steady = [i >= stream.slot_chunks - 1 and i not in switches for i in range(warmup, chunks_total)]
    base = backends[0]
    variants = []
    for b in backends:
        res = results[b]
        res.max_abs_diff_vs_baseline = float((outputs[b] - outputs[base]).abs().max())
        summary = chunk_summary(res.chunk_ms, host_ms=res.host_ms, vae_ms=res.vae_ms, chunk_frames=stream.chunk_frames,
                                batch_size=batch_size, rounds=rounds, steady=steady)  # fmt: skip
        row = {**asdict(res), **summary}
        variants.append(row)
    for row in variants:
        row["speedup_vs_baseline"] = variants[0]["chunk_ms_p50"] / row["chunk_ms_p50"]
        rank_ms, rank_comm = row.pop("rank_chunk_ms"), row.pop("rank_comm_ms")
        if sp is not None:
            row["sequence_parallel"] = rank_summary(sp.size, row["chunk_ms_p50"], rank_ms, rank_comm)
    warnings = noise_warnings(variants, [load_start, env["load_average"]], torch.get_num_threads())
    warnings += recompile_warnings(variants)
    n_params = sum(t.numel() for t in model.parameters())
    return {
        "schema": SCHEMA,
        "methodology": __doc__.strip(),
        "statistic": STATISTIC,
        "preset": p.name,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "latent_frames": frames,
        "chunks": chunks_total,
        "warmup_chunks": warmup,
        "rounds": rounds,
        "vae_decode_timed": vae,
        "switch_frames": list(switch_frames),
        "stream": asdict(stream),
        "model_parameters": n_params,
        "model_bytes": sum(t.nbytes for t in model.parameters()),
        "baseline": base,
        "sequence_parallel": sp.size if sp is not None else 1,
        "environment": env,
        "warnings": warnings,
        "variants": variants,
    }
