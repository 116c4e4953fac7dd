"""What an ``arvid bench`` run will cost, checked before the model loads: a time estimate from the
roofline's FLOPs over a matmul rate measured here (and, with ``--vae``, the VAE's convolutions timed
here), its refusal above :data:`ESTIMATE_LIMIT_S` without ``--yes``, and the host memory its latents
need.
"""

from __future__ import annotations

import math
import time

import torch

from arvid.runtime import StreamConfig, get_preset
from arvid.runtime.config import Preset

from ._timing import sync

ESTIMATE_LIMIT_S = 600.0  # runs estimated longer than this need --yes


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.2) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype``: an upper bound for what the DiT reaches."""
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (first call allocates, picks a kernel)
    sync(device)
    iters, t0 = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        sync(device)
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
            sync(device)
            iters, t0 = 0, time.perf_counter()
            while iters < 3 or time.perf_counter() - t0 < 0.01:
                layer(x)
                iters += 1
            sync(device)
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
    # the VAE stream_bench._random_vae builds
    dim = (TINY_VAE_CONFIG if p.name == "tiny" else WAN21_VAE_CONFIG)["base_dim"]
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
