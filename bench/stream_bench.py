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
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from arvid.runtime import GeneratorOptions, StreamConfig, StreamingGenerator, get_preset
from arvid.runtime.config import Preset, check_frames
from arvid.runtime.loaders import load_dit
from arvid.runtime.model import CausalWanModel
from arvid.runtime.parallel import SequenceParallel
from arvid.runtime.prompts import align_switch_frames, placeholder_prompt_embeds
from arvid.runtime.vae import StreamingVAEDecoder
from arvid.runtime.variants import QUANT_FLAGS

from .env import environment, load_average
from .stats import CV_WARN, summarize

SCHEMA = "arvid.stream_bench/2"
STATISTIC = "p50"  # the chunk-latency statistic FPS and speed-ups are computed from
LOAD_WARN = 0.5  # others' load (load average - our threads) above this fraction of the cores: a busy machine
ESTIMATE_LIMIT_S = 600.0  # runs estimated longer than this need --yes


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

    def summary(self, chunk_frames: int, batch_size: int, rounds: int, steady: list[bool]) -> dict:
        """Statistics of the timed chunks; FPS from the median latency (frames of every video in the batch).

        ``steady`` marks, per timed chunk of a round, the chunks with a full cache and no re-cache:
        their coefficient of variation (``chunk_ms_cv_steady``) measures noise, not the extra work
        of fill-phase or prompt-switch chunks.
        """
        st = summarize(self.chunk_ms)
        steady_ms = [ms for i, ms in enumerate(self.chunk_ms) if steady[i % len(steady)]]
        noise = summarize(steady_ms) if len(steady_ms) >= 2 else st
        latent_fps = batch_size * chunk_frames / (st["p50"] / 1000)
        per_round = len(self.chunk_ms) // rounds
        end_to_end = [c + v for c, v in zip(self.chunk_ms, self.vae_ms, strict=True)] if self.vae_ms else None
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
            "round_p50_ms": [
                statistics.median(self.chunk_ms[i * per_round : (i + 1) * per_round]) for i in range(rounds)
            ],
            "latent_fps": latent_fps,
            # Each latent frame decodes to 4 video frames (the video's very first to 1).
            "video_fps_dit_only": 4 * latent_fps,
            "host_ms_p50": statistics.median(self.host_ms) if self.host_ms else None,
            "vae_ms_p50": statistics.median(self.vae_ms) if self.vae_ms else None,
            "end_to_end_ms_stats": summarize(end_to_end) if end_to_end else None,
            # DiT + VAE decode of the timed chunks, median of their per-chunk sums.
            "video_fps_end_to_end": (
                4 * batch_size * chunk_frames / (statistics.median(end_to_end) / 1000) if end_to_end else None
            ),
        }


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


def split_variant(spec: str) -> tuple[str, str | None]:
    """``"sdpa@out/int8"`` -> ``("sdpa", "out/int8")``: the generator variant and a saved quantized model."""
    variant, sep, directory = spec.partition("@")
    if sep and not directory:
        raise ValueError(f"variant {spec!r}: no directory after '@' (BACKEND@DIR, a model written by arvid quantize)")
    return variant, directory or None


def torchao_missing() -> str | None:
    """Why torchao's kernels cannot be used here (its import error), or None."""
    try:
        import torchao  # noqa: F401
    except Exception as e:  # an ImportError, or a torchao built for another torch failing at import
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def check_variants(backends: list[str], device: torch.device | None = None) -> None:
    """Each variant string parses and is named once (a repeat would merge two runs into one record);
    a ``@DIR`` names a directory written by ``arvid quantize``.

    On CUDA a quantized variant must run real low-precision kernels: arvid's emulation multiplies in
    float32 (``quant/fp8.py`` even rebuilds a float32 weight per call), so timing it would pass an
    fp32 GEMM off as ``+int8`` / ``+fp8``. Without torchao, and for saved (emulated) models, refused.
    """
    from arvid.quant.serialize import read_quant_config

    for spec in backends:
        variant, directory = split_variant(spec)
        opts = GeneratorOptions.from_variant(variant)
        if directory is not None:
            if opts.quant is not None:
                raise ValueError(f"variant {spec!r}: a saved model is already quantized; drop +{opts.quant}")
            if not Path(directory).is_dir():
                raise FileNotFoundError(f"variant {spec!r}: {directory} is not a directory")
            read_quant_config(directory)
            if device is not None and device.type == "cuda":
                raise ValueError(
                    f"variant {spec!r}: a saved model runs arvid's float32 emulation, not a quantized kernel, so "
                    f"its CUDA timing would not be the variant's; time {variant}+<int8|int8wo|fp8> (torchao) instead"
                )
        elif opts.quant is not None and device is not None and device.type == "cuda":
            missing = torchao_missing()
            if missing:
                raise ValueError(
                    f"variant {spec!r} on CUDA needs torchao's kernels (arvid's emulation would time a float32 "
                    f"GEMM as +{opts.quant}); torchao does not import ({missing}): pip install 'arvid[quant]'"
                )
    twice = sorted({b for b in backends if backends.count(b) > 1})
    if twice:
        raise ValueError(f"variant(s) {', '.join(twice)} named more than once: each variant runs once per round")


def switch_chunks(switch_frames, chunk_frames: int, frames: int) -> list[int]:
    """Indices of the chunks whose time includes a prompt switch's KV re-cache (LongLive's alignment)."""
    return [a // chunk_frames for a in align_switch_frames(switch_frames, chunk_frames, frames)]


def dynamo_compiles() -> int:
    """Frames Dynamo has compiled in this process so far (0 while torch._dynamo is not imported)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return int(utils.counters["frames"]["ok"]) if utils is not None else 0


def recompile_warnings(variants: list[dict]) -> list[str]:
    """A warning per variant that Dynamo compiled inside its timed chunks: the compile is in its latencies."""
    return [
        f"{v['backend']}: Dynamo compiled {v['recompiles']} time(s) inside timed chunks: its p99, mean and CV "
        "include compile time"
        for v in variants
        if v.get("recompiles")
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.2) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype``: an upper bound for what the DiT reaches."""
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (first call allocates, picks a kernel)
    _sync(device)
    iters, t0 = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * n**3 * iters / elapsed


def measured_conv_seconds(
    convs: list[tuple[int, int, int, int, int, int]],
    device: torch.device,
    dtype: torch.dtype,
    *,
    max_flops: float = 2e8,
) -> float:
    """Seconds the convolutions ``(cin, cout, taps, frames, pixels, calls)`` take, each timed on
    ``device``: a small convolution (the tiny VAE's 8 to 32 channels) runs at a few percent of a
    matmul's FLOP rate on a CPU, so FLOPs over the matmul rate would be no estimate of a VAE. A
    convolution above ``max_flops`` is timed on fewer pixels and scaled up by the pixel count."""
    total = 0.0
    for cin, cout, taps, frames, pixels, calls in convs:
        kernel = {27: (3, 3, 3), 9: (1, 3, 3), 3: (3, 1, 1), 1: (1, 1, 1)}[taps]
        side = max(4, min(math.isqrt(pixels), math.isqrt(int(max_flops / (2 * cin * cout * taps * frames)) or 1)))
        layer = torch.nn.Conv3d(cin, cout, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        layer = layer.to(device=device, dtype=dtype)
        x = torch.randn(1, cin, frames + kernel[0] - 1, side, side, device=device, dtype=dtype)
        with torch.no_grad():
            layer(x)  # warm-up (first call allocates, picks a kernel)
            _sync(device)
            iters, t0 = 0, time.perf_counter()
            while iters < 3 or time.perf_counter() - t0 < 0.01:
                layer(x)
                iters += 1
            _sync(device)
            per_call = (time.perf_counter() - t0) / iters
        total += per_call * pixels / (side * side) * calls
    return total


def vae_chunk_seconds(
    preset: str | Preset, device: torch.device, dtype: torch.dtype, *, chunk_frames: int = 3, batch_size: int = 1
) -> float:
    """Seconds the streaming VAE of ``bench --vae`` (the tiny preset's small one, else Wan2.1's) takes
    per chunk on ``device``: its convolutions (:func:`~arvid.bench.roofline.wan_vae_decode_work`) timed
    one shape at a time by :func:`measured_conv_seconds`. Norms, activations, the middle block's
    attention and the frame caches are not counted; on the CPU (tiny, 3 latent frames) it came to
    0.97 s against a measured 0.62 s decode: an estimate, not a lower bound."""
    from arvid.runtime.vae import TINY_VAE_CONFIG, WAN21_VAE_CONFIG

    from .roofline import wan_vae_decode_work

    p = get_preset(preset) if isinstance(preset, str) else preset
    dim = (TINY_VAE_CONFIG if p.name == "tiny" else WAN21_VAE_CONFIG)["base_dim"]  # as _random_vae builds it
    work = wan_vae_decode_work(p.latent_height, p.latent_width, latent_frames=1, dim=dim)
    max_flops = 2e11 if device.type == "cuda" else 2e8  # a GPU reaches its rate only on large problems
    # the decoder runs one latent frame per call, every video of the batch
    return chunk_frames * batch_size * measured_conv_seconds(work["convs"], device, dtype, max_flops=max_flops)


def estimate_seconds(
    preset: str | Preset,
    *,
    device: torch.device,
    dtype: torch.dtype,
    variants: int,
    frames: int | None = None,
    warmup: int = 2,
    rounds: int = 3,
    stream: StreamConfig | None = None,
    batch_size: int = 1,
    vae: bool = False,
    flops_per_s: float | None = None,
    vae_seconds_per_chunk: float | None = None,
) -> dict:
    """An estimate of a benchmark's timed work; for the DiT a lower bound: roofline FLOPs over a measured
    matmul rate.

    Every chunk is counted at the steady state (full attention span) and every DiT FLOP at the rate of
    a large square matmul (``flops_per_s``, measured when not given), so real runs take longer: eager
    attention, re-caches and set-up are slower than that. Model loading is not counted. With ``vae``
    each chunk's decode adds ``vae_seconds_per_chunk`` (:func:`vae_chunk_seconds` when not given): its
    convolutions timed on the device, an estimate rather than a bound (small convolutions run far below
    the matmul rate, so FLOPs over that rate would be no estimate of the VAE).
    """
    from .roofline import chunk_work

    p = get_preset(preset) if isinstance(preset, str) else preset
    stream = stream or StreamConfig()
    frames = frames or default_frames(p, stream, warmup)
    work = chunk_work(p, stream, batch_size)
    chunks = frames // stream.chunk_frames * variants * rounds
    flops = work["flops_per_chunk_total"] * chunks
    rate = flops_per_s or measured_matmul_flops(device, dtype)
    out = {"seconds": flops / rate, "dit_seconds": flops / rate, "flops": flops, "flops_per_s": rate, "chunks": chunks}
    if vae:
        if vae_seconds_per_chunk is None:
            vae_seconds_per_chunk = vae_chunk_seconds(
                p, device, dtype, chunk_frames=stream.chunk_frames, batch_size=batch_size
            )
        out["vae_seconds"] = vae_seconds_per_chunk * chunks
        out["seconds"] += out["vae_seconds"]
    return out


def check_host_memory(preset: str | Preset, *, frames: int, batch_size: int, variants: int) -> None:
    """Refuse, before the model loads, a run whose latents do not fit in RAM: the noise of every frame,
    each variant's latents (kept to compare with the baseline) and one concatenation, in float32."""
    from arvid.runtime.devices import check_fits

    p = get_preset(preset) if isinstance(preset, str) else preset
    video = batch_size * frames * p.model.in_dim * p.latent_height * p.latent_width * 4
    check_fits(
        (variants + 2) * video,
        "cpu",
        f"the noise and latents of {frames:,} latent frames x batch {batch_size} for {variants} variant(s)",
    )


def default_frames(p: Preset, stream: StreamConfig, warmup: int) -> int:
    """The preset's video length, at least 8 timed chunks after the warm-up."""
    return max(p.default_frames, stream.chunk_frames * (warmup + 8))


def check_estimate(estimate: dict, yes: bool) -> None:
    """Refuse (ValueError) a run estimated above :data:`ESTIMATE_LIMIT_S` unless ``yes``."""
    s = estimate["seconds"]
    if s > ESTIMATE_LIMIT_S and not yes:
        vae = estimate.get("vae_seconds")
        vae_part = f"; the VAE decode about {vae / 60:,.0f} min of it, its convolutions timed here" if vae else ""
        raise ValueError(
            f"this run would take {'about' if vae else 'at least'} {s / 60:,.0f} min ({estimate['chunks']} chunks "
            f"at {estimate['flops'] / estimate['chunks'] / 1e12:.2f} TFLOP of DiT each, "
            f"{estimate['flops_per_s'] / 1e9:,.0f} GFLOP/s measured{vae_part}): pass --yes to run it, "
            "or use a smaller --preset / fewer --frames / --rounds"
        )


def _quantized(model: CausalWanModel, scheme: str, device: torch.device) -> tuple[CausalWanModel, dict]:
    """A quantized copy of ``model``: torchao's kernels on CUDA, arvid's emulation on the CPU."""
    from arvid.quant import config_for_scheme, quantize_

    backend = "torchao" if device.type == "cuda" else "emulate"  # check_variants refused CUDA without torchao
    quantized = quantize_(copy.deepcopy(model), config_for_scheme(scheme, backend=backend))
    return quantized, {"scheme": scheme, "backend": backend, "source": "quantized in-process"}


def noise_warnings(variants: list[dict], loads: list[list[float] | None], threads: int,
                   cores: int | None = None) -> list[str]:  # fmt: skip
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
    """Run every variant on the same inputs; returns a JSON-ready dict (see ``format_table``).

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

    from arvid.quant.serialize import load_quantized

    # The model each variant runs: the float model, a quantized copy per scheme, or a saved model.
    models: dict[str, CausalWanModel] = {}
    quant_info: dict[str, dict | None] = {}
    by_scheme: dict[str, tuple[CausalWanModel, dict]] = {}
    for spec in backends:
        variant, directory = split_variant(spec)
        opts = GeneratorOptions.from_variant(variant)
        if directory is not None:
            saved = load_quantized(directory, device=device)
            if saved.cfg != model.cfg:
                raise ValueError(f"variant {spec!r}: {directory} was quantized from another model config")
            models[spec] = saved
            quant_info[spec] = {"scheme": saved.arvid_quant.config.scheme, "backend": "emulate", "source": directory}
        elif opts.quant is not None:
            scheme = QUANT_FLAGS[opts.quant]
            if scheme not in by_scheme:
                by_scheme[scheme] = _quantized(model, scheme, device)
            models[spec], quant_info[spec] = by_scheme[scheme]
        else:
            models[spec], quant_info[spec] = model, None
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
            _sync(device)
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
                _sync(device)
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
                    _sync(device)
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
            res.chunk_ms += run_ms if sp is None else _whole_job(res, run_ms, run_comm_ms, sp, device)
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
        row = {**asdict(res), **res.summary(stream.chunk_frames, batch_size, rounds, steady)}
        variants.append(row)
    for row in variants:
        row["speedup_vs_baseline"] = variants[0]["chunk_ms_p50"] / row["chunk_ms_p50"]
        rank_ms, rank_comm = row.pop("rank_chunk_ms"), row.pop("rank_comm_ms")
        if sp is not None:
            row["sequence_parallel"] = {
                "size": sp.size,
                "job_chunk_ms_p50": row["chunk_ms_p50"],
                "rank_chunk_ms_p50": [statistics.median(ms) for ms in rank_ms],
                "rank_comm_ms_per_chunk": [statistics.mean(ms) for ms in rank_comm],
                "comm_ms_per_chunk": statistics.mean(x for ms in rank_comm for x in ms),
                "rank_chunk_ms": rank_ms,
                "rank_comm_ms": rank_comm,
            }
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


def _whole_job(res: VariantResult, run_ms: list[float], run_comm_ms: list[float], sp: SequenceParallel,
               device: torch.device) -> list[float]:  # fmt: skip
    """Gather every rank's chunk latencies and collective ms of one run (into ``res``); returns the
    whole job's latency per chunk, the maximum over the ranks."""
    mine = torch.tensor([run_ms, run_comm_ms], dtype=torch.float64, device=device)
    every = [torch.empty_like(mine) for _ in range(sp.size)]
    dist.all_gather(every, mine, group=sp.group)  # not through sp: not charged to the collectives' time
    every_cpu = [t.cpu() for t in every]
    if not res.rank_chunk_ms:
        res.rank_chunk_ms, res.rank_comm_ms = [[] for _ in every_cpu], [[] for _ in every_cpu]
    for r, t in enumerate(every_cpu):
        res.rank_chunk_ms[r] += t[0].tolist()
        res.rank_comm_ms[r] += t[1].tolist()
    return torch.stack(every_cpu)[:, 0].amax(dim=0).tolist()


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def format_table(report: dict) -> str:
    """Two Markdown tables (latency statistics; FPS, memory and set-up), the warnings, and the method."""
    env = report["environment"]
    git = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    lines = [
        f"arvid bench: preset {report['preset']}, {report['dtype']}, batch {report['batch_size']}, "
        f"{report['latent_frames']} latent frames = {report['chunks']} chunks "
        f"({report['warmup_chunks']} warm-up chunks excluded), {report['rounds']} round(s), "
        f"switches at {report['switch_frames'] or 'none'}",
        f"device: {env['device_name']} ({env['device']}), {env.get('torch_threads', '?')} thread(s), "
        f"load {env.get('load_average') or '?'}; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}, driver {env['driver']}; arvid {env.get('arvid', '?')}, commit {git}",
        "",
        "| variant | p50 ms | mean ms | std | CV | CV steady | IQR | p90 | p99 | video FPS (DiT, p50) "
        "| vs baseline (p50) | max diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report["variants"]:
        lines.append(
            f"| {v['backend']} | {v['chunk_ms_p50']:.2f} | {v['chunk_ms_mean']:.2f} | {v['chunk_ms_std']:.2f} "
            f"| {v['chunk_ms_cv']:.1%} | {v['chunk_ms_cv_steady']:.1%} | {v['chunk_ms_iqr']:.2f} "
            f"| {v['chunk_ms_p90']:.2f} | {v['chunk_ms_p99']:.2f} "
            f"| {v['video_fps_dit_only']:.2f} | {v['speedup_vs_baseline']:.2f}x | {v['max_abs_diff_vs_baseline']:.1e} |"
        )
    lines += [
        "",
        "| variant | first chunk ms | capture s | host ms p50 | VAE ms p50 | video FPS end to end | peak MiB "
        "| cache MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report["variants"]:
        lines.append(
            f"| {v['backend']} | {v['first_chunk_ms']:.1f} | {v['capture_seconds']:.2f} | {_fmt(v['host_ms_p50'])} "
            f"| {_fmt(v['vae_ms_p50'])} | {_fmt(v['video_fps_end_to_end'])} | {_mib(v['peak_memory_bytes'])} "
            f"| {_mib(v['cache_bytes'])} |"
        )
    if report.get("sequence_parallel", 1) > 1:
        lines += [
            "",
            f"sequence parallel over {report['sequence_parallel']} ranks (chunk latency: the whole job's, max over "
            "ranks)",
            "",
            "| variant | whole-job p50 ms | per-rank p50 ms | comm ms/chunk (mean over ranks) |",
            "|---|---:|---|---:|",
        ]
        for v in report["variants"]:
            spv = v["sequence_parallel"]
            ranks = ", ".join(f"{ms:.2f}" for ms in spv["rank_chunk_ms_p50"])
            lines.append(
                f"| {v['backend']} | {spv['job_chunk_ms_p50']:.2f} | {ranks} | {spv['comm_ms_per_chunk']:.2f} |"
            )
    lines.append(
        f"\npeak memory: {report['variants'][0]['memory_kind']}; CV steady: over the chunks with a full cache "
        "and no prompt switch (the noise, not the extra work of fill-phase or re-cache chunks)"
    )
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    # Plain text in the terminal, Markdown and HTML alike; reports written before it was plain kept
    # reStructuredText literals (``warmup``), shown here without their backticks.
    lines += ["", " ".join(report["methodology"].split("\n\n")[1].replace("``", "").split())]
    return "\n".join(lines)
