"""End-to-end streaming benchmark: several backends on the same model and inputs, in one process.

What is timed: the DiT work of each chunk (4 denoising forwards + the clean-context update, and
the KV re-cache where a prompt switch falls before the chunk), from the chunk's start to its
latents being ready (CUDA synchronised). CUDA-graph capture (variants with +graphs) happens
before the first chunk and is reported apart; host time is the launch/replay time per chunk.
With --vae, each chunk's streaming VAE decode is timed apart (after the DiT's latents are
ready) and gives the end-to-end FPS. Not timed: text encoding (embeddings are given). The
first ``warmup`` chunks of every run are left out of the statistics; each variant runs
``rounds`` times, the variants interleaved round by round.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from dataclasses import asdict, dataclass, field

import psutil
import torch

from arvid.runtime import GeneratorOptions, StreamConfig, StreamingGenerator, get_preset
from arvid.runtime.config import Preset, check_frames
from arvid.runtime.loaders import load_dit
from arvid.runtime.model import CausalWanModel
from arvid.runtime.prompts import placeholder_prompt_embeds
from arvid.runtime.vae import StreamingVAEDecoder

from .env import environment


@dataclass
class VariantResult:
    backend: str  # the variant spec, e.g. "triton+graphs"
    chunk_ms: list[float] = field(default_factory=list)  # timed chunks over all rounds
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

    def summary(self, chunk_frames: int) -> dict:
        ms = sorted(self.chunk_ms)
        p50 = statistics.median(ms)
        total_s = sum(ms) / 1000
        latent_fps = chunk_frames * len(ms) / total_s
        return {
            "chunk_ms_p50": p50,
            "chunk_ms_p90": _percentile(ms, 0.9),
            "chunk_ms_mean": statistics.fmean(ms),
            "latent_fps": latent_fps,
            # Each latent frame decodes to 4 video frames (the video's very first to 1).
            "video_fps_dit_only": 4 * latent_fps,
            "host_ms_p50": statistics.median(self.host_ms) if self.host_ms else None,
            "vae_ms_p50": statistics.median(self.vae_ms) if self.vae_ms else None,
            # DiT + VAE decode of the timed (steady-state) chunks: 4 video frames per latent frame.
            "video_fps_end_to_end": (
                4 * chunk_frames * len(ms) / ((sum(ms) + sum(self.vae_ms)) / 1000) if self.vae_ms else None
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


def check_variants(backends: list[str]) -> None:
    """Each variant string parses and is named once (a repeat would merge two runs into one record)."""
    for spec in backends:
        GeneratorOptions.from_variant(spec)
    twice = sorted({b for b in backends if backends.count(b) > 1})
    if twice:
        raise ValueError(f"variant(s) {', '.join(twice)} named more than once: each variant runs once per round")


def _percentile(sorted_ms: list[float], q: float) -> float:
    idx = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[idx]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stream_bench(
    preset: str | Preset = "tiny",
    *,
    device: torch.device,
    dtype: torch.dtype,
    backends: list[str],
    frames: int | None = None,
    warmup: int = 2,
    rounds: int = 1,
    switch_frames: tuple[int, ...] = (),
    seed: int = 0,
    model: CausalWanModel | None = None,
    stream: StreamConfig | None = None,
    batch_size: int = 1,
    vae: bool = False,
) -> dict:
    """Run every backend on the same inputs; returns a JSON-ready dict (see ``format_table``).

    With ``vae`` every chunk is also decoded by a streaming Wan VAE of the preset's size (random
    weights: the speed does not depend on them), timed apart, for end-to-end FPS.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    stream = stream or StreamConfig()
    check_variants(backends)
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    if frames is None:
        frames = max(p.default_frames, stream.chunk_frames * (warmup + 8))
    check_frames(frames, stream.chunk_frames)
    if frames // stream.chunk_frames <= warmup:
        raise ValueError(f"{frames} frames give no timed chunk after {warmup} warm-up chunks")
    if model is None:  # random weights: speed does not depend on them
        model = load_dit(config=p.model, device=device, dtype=dtype, seed=seed)
    compiled = None

    def make_generator(spec: str) -> StreamingGenerator:
        # Built per run and freed after it, so a variant's peak memory holds its own cache and
        # graphs only (a +compile variant keeps one compiled copy of the model for the process).
        nonlocal compiled
        opts = GeneratorOptions.from_variant(spec)
        m = model
        if opts.compile:  # compiled copy, so the other variants keep running the eager model
            compiled = compiled or copy.deepcopy(model)
            m = compiled
        return opts.build(m, stream, latent_size=(p.latent_height, p.latent_width), batch_size=batch_size)

    vae_model = _random_vae(p, device, dtype, seed) if vae else None
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch_size, frames, p.model.in_dim, p.latent_height, p.latent_width, generator=g)
    prompts = [placeholder_prompt_embeds(f"prompt {i}", p, batch_size) for i in range(len(switch_frames) + 1)]
    results = {b: VariantResult(b) for b in backends}
    outputs: dict[str, torch.Tensor] = {}
    proc = psutil.Process()

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
            t0 = time.perf_counter()
            renoise_gen = torch.Generator(device=device).manual_seed(seed + 1)
            decoder = StreamingVAEDecoder(vae_model) if vae_model is not None else None
            for i, c in enumerate(gen.stream(noise, prompts, switch_frames, generator=renoise_gen)):
                _sync(device)
                t1 = time.perf_counter()
                ms = (t1 - t0) * 1000
                if r == 0 and i == 0:
                    res.first_chunk_ms = ms
                if i >= warmup:
                    res.chunk_ms.append(ms)
                    res.host_ms.append(gen.last_host_ms)
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
                t0 = time.perf_counter()  # host-side bookkeeping above is not charged to the next chunk
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

    base = backends[0]
    variants = []
    for b in backends:
        res = results[b]
        res.max_abs_diff_vs_baseline = float((outputs[b] - outputs[base]).abs().max())
        row = {**asdict(res), **res.summary(stream.chunk_frames)}
        variants.append(row)
    for row in variants:
        row["speedup_vs_baseline"] = variants[0]["chunk_ms_p50"] / row["chunk_ms_p50"]
    n_params = sum(t.numel() for t in model.parameters())
    return {
        "schema": "arvid.stream_bench/1",
        "methodology": __doc__.strip(),
        "preset": p.name,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "latent_frames": frames,
        "chunks": frames // stream.chunk_frames,
        "warmup_chunks": warmup,
        "rounds": rounds,
        "vae_decode_timed": vae,
        "switch_frames": list(switch_frames),
        "stream": asdict(stream),
        "model_parameters": n_params,
        "model_bytes": sum(t.nbytes for t in model.parameters()),
        "baseline": base,
        "environment": environment(device),
        "variants": variants,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def format_table(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"arvid bench: preset {report['preset']}, {report['dtype']}, batch {report['batch_size']}, "
        f"{report['latent_frames']} latent frames = {report['chunks']} chunks "
        f"({report['warmup_chunks']} warm-up chunks excluded), {report['rounds']} round(s), "
        f"switches at {report['switch_frames'] or 'none'}",
        f"device: {env['device_name']} ({env['device']}); torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}, driver {env['driver']}; commit {(env['git_commit'] or 'unknown')[:12]}",
        "",
        "| variant | chunk ms p50 | p90 | host ms p50 | latent frames/s | video FPS (DiT only) | vs baseline "
        "| first chunk ms | capture s | VAE ms p50 | video FPS end to end | peak memory MiB | cache MiB "
        "| max diff vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report["variants"]:
        lines.append(
            f"| {v['backend']} | {v['chunk_ms_p50']:.2f} | {v['chunk_ms_p90']:.2f} | {v['host_ms_p50']:.2f} "
            f"| {v['latent_fps']:.2f} | {v['video_fps_dit_only']:.2f} | {v['speedup_vs_baseline']:.2f}x "
            f"| {v['first_chunk_ms']:.1f} | {v['capture_seconds']:.2f} | {_fmt(v['vae_ms_p50'])} "
            f"| {_fmt(v['video_fps_end_to_end'])} "
            f"| {_mib(v['peak_memory_bytes'])} ({v['memory_kind']}) | {_mib(v['cache_bytes'])} "
            f"| {v['max_abs_diff_vs_baseline']:.2e} |"
        )
    lines += [
        "",
        " ".join(report["methodology"].split("\n\n")[1].split()),
    ]
    return "\n".join(lines)
