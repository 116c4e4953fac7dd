"""Roofline of streaming generation: FLOPs and bytes per chunk, and the FPS ceiling on a named GPU.

Everything here is arithmetic on the model's shapes and on vendor datasheet peaks; nothing is
measured. The ceiling assumes every matmul runs at the GPU's dense tensor-core peak and that
compute and memory traffic overlap perfectly, so a real run stays below it; ``measured / ceiling``
says how much of the hardware a backend uses.

Counting rules (2 FLOPs per multiply-add; softmax, norms, RoPE, GELU and other element-wise work
are not counted: they run on the vector units and are small next to the matmuls):

- linear layers, per block and per query token: self-attention q, k, v, o (``4 dim^2``), cross-
  attention q and o (``2 dim^2``), FFN (``2 dim ffn``). Cross-attention K/V over the text are
  computed once per prompt and reported apart (``per_prompt``), as is the text embedding.
- ``embed_head``: patch embedding, output head, time embedding and projection (per frame).
- self-attention: ``4 Lq Lk dim`` per layer (QK^T and PV), ``Lq`` = the chunk's tokens,
  ``Lk`` = the valid cache tokens (attention size in the steady state, fewer while it fills).
- cross-attention: ``4 Lq text_len dim`` per layer.
- a chunk is ``len(denoising_steps) + 1`` forwards (the steps + the clean-context update).

Precisions: ``bf16`` everything in bf16; ``fp8`` FP8 linear layers *and* FP8 attention with an
FP8 KV cache (the assumption behind the 168 FPS H100 ceiling of the design brief); ``int8`` INT8 linear layers while
attention and the KV cache stay bf16. Embeddings, head and the VAE decoder always run in bf16.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from arvid.runtime import ModelConfig, Preset, StreamConfig, get_preset

from .schema import SCHEMAS

TERA = 1e12
GIGA = 1e9


# -- GPUs: vendor datasheet peaks, dense (no 2:4 sparsity) --------------------------------------
@dataclass(frozen=True)
class GPU:
    """Datasheet peaks of one GPU. ``None``: the GPU has no tensor-core path for that type."""

    name: str
    bf16_tflops: float
    fp8_tflops: float | None
    int8_tops: float | None
    bandwidth_tbs: float
    source: str

    def peak(self, kind: str) -> float:
        """Peak in TFLOP/s (TOP/s for int8) for ``kind`` in ``bf16``/``fp8``/``int8``."""
        value = {"bf16": self.bf16_tflops, "fp8": self.fp8_tflops, "int8": self.int8_tops}[kind]
        if value is None:
            raise ValueError(f"{self.name} has no {kind} tensor cores; choose another precision")
        return value


# No RTX 5090 entry: its tensor-core peaks are not sourced from NVIDIA's published numbers here, and
# a ceiling from unverified peaks would be worse than none (add it with its datasheet citation).
GPUS: dict[str, GPU] = {
    # NVIDIA H100 datasheet, SXM5 column: BF16 1,979 / FP8 3,958 / INT8 3,958 "with sparsity",
    # i.e. 989 / 1,979 / 1,979 dense; HBM3 3.35 TB/s.
    "h100": GPU("NVIDIA H100 SXM5", 989.0, 1979.0, 1979.0, 3.35, "NVIDIA H100 datasheet (SXM5), dense"),
    # Same datasheet, PCIe column: BF16 1,513 / FP8 3,026 / INT8 3,026 with sparsity; 2.0 TB/s.
    "h100-pcie": GPU("NVIDIA H100 PCIe", 756.5, 1513.0, 1513.0, 2.0, "NVIDIA H100 datasheet (PCIe), dense"),
    # NVIDIA H200 datasheet, SXM column: the H100 SXM's tensor peaks, HBM3e 4.8 TB/s.
    "h200": GPU("NVIDIA H200 SXM", 989.0, 1979.0, 1979.0, 4.8, "NVIDIA H200 datasheet (SXM), dense"),
    # NVIDIA A100 datasheet, 80GB SXM4 column: BF16 312, INT8 624 TOPS (dense); no FP8;
    # HBM2e 2,039 GB/s.
    "a100": GPU("NVIDIA A100 SXM4 80GB", 312.0, None, 624.0, 2.039, "NVIDIA A100 datasheet (80GB SXM), dense"),
    # NVIDIA L40S datasheet: BF16 362.05 / FP8 733 / INT8 733 dense (double with sparsity);
    # GDDR6 864 GB/s.
    "l40s": GPU("NVIDIA L40S", 362.05, 733.0, 733.0, 0.864, "NVIDIA L40S datasheet, dense"),
}


@dataclass(frozen=True)
class Precision:
    """Which tensor-core peak each part runs at, and the bytes per element it moves."""

    linear: str  # peak used by the block linear layers
    attention: str  # peak used by QK^T / PV
    weight_bytes: int  # block linear weights
    kv_bytes: int  # self- and cross-attention K/V
    act_bytes: int = 2  # activations between kernels (bf16 in every variant)
    note: str = ""


PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", "bf16", 2, 2, note="bf16 matmuls, bf16 KV cache"),
    "fp8": Precision("fp8", "fp8", 1, 1, note="FP8 linear layers and FP8 attention over an FP8 KV cache"),
    "int8": Precision("int8", "bf16", 1, 2, note="INT8 linear layers; attention and KV cache stay bf16"),
}


def get_gpu(key: str) -> GPU:
    try:
        return GPUS[key]
    except KeyError:
        raise ValueError(f"unknown GPU {key!r}; choose one of {sorted(GPUS)}") from None


def get_precision(key: str) -> Precision:
    try:
        return PRECISIONS[key]
    except KeyError:
        raise ValueError(f"unknown precision {key!r}; choose one of {list(PRECISIONS)}") from None


def gpu_key_for_device(device_name: str | None) -> str | None:
    """Map ``torch.cuda.get_device_name()`` to a key of ``GPUS``; ``None`` when not sure.

    Variants with other peaks (H100 NVL, H200 NVL, A100 40GB / PCIe) are deliberately not
    mapped to their SXM siblings: a wrong ceiling is worse than none.
    """
    name = (device_name or "").upper().replace("-", " ")
    if "H100" in name:
        if "NVL" in name:
            return None
        return "h100-pcie" if "PCIE" in name else "h100"
    if "H200" in name:
        return None if "NVL" in name else "h200"
    if "A100" in name:
        return "a100" if "SXM4 80GB" in name else None
    if "L40S" in name:
        return "l40s"
    return None


# -- DiT work ----------------------------------------------------------------------------------
def dit_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts of the causal Wan DiT, split by how often they are read.

    ``block_linear``: block weight matrices used every forward (quantized in fp8 / int8);
    ``per_prompt``: text embedding and cross-attention K/V weights (used once per prompt);
    ``other``: everything else read every forward (biases, norms, modulation, embeddings, head).
    """
    d, f, p = cfg.dim, cfg.ffn_dim, math.prod(cfg.patch_size)
    per_block_linear = 6 * d * d + 2 * d * f  # self q,k,v,o + cross q,o + ffn up/down
    # biases of those, self q/k RMSNorm, cross q RMSNorm, norm3 (weight + bias), modulation
    per_block_other = (6 * d + f + d) + 2 * d + d + 2 * d + 6 * d
    per_block_prompt = 2 * (d * d + d) + d  # cross k, v (weight + bias) and cross norm_k
    text_embedding = cfg.text_dim * d + d + d * d + d
    patch = cfg.in_dim * p * d + d
    time = cfg.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
    head = d * cfg.out_dim * p + cfg.out_dim * p + 2 * d
    n = cfg.num_layers
    counts = {
        "block_linear": n * per_block_linear,
        "per_prompt": n * per_block_prompt + text_embedding,
        "other": n * per_block_other + patch + time + head,
    }
    counts["total"] = sum(counts.values())
    return counts


def chunk_work(
    preset: Preset | str,
    stream: StreamConfig | None = None,
    batch_size: int = 1,
    *,
    precision: str = "bf16",
    chunk_index: int | None = None,
    vae_tflop_per_chunk: float | None = None,
) -> dict:
    """FLOPs and bytes of one chunk of streaming generation.

    Parameters
    ----------
    preset : a :class:`Preset` or its name; sets the model and the latent size.
    stream : streaming settings (default: LongLive's, chunk 3, attention size 12 frames).
    batch_size : videos generated together (FLOPs, KV cache and activations scale with it).
    precision : ``bf16``, ``fp8`` or ``int8``; changes bytes only (FLOPs are the same).
    chunk_index : ``None`` for the steady state (full attention span); ``i`` for the i-th chunk
        of a video (0-based), whose queries see only ``min(i + 1, slots)`` chunks (fill phase).
    vae_tflop_per_chunk : override of the VAE decoder's TFLOP per chunk of one video (scaled by
        ``batch_size``); by default counted from the Wan2.1 VAE decoder architecture (see
        :func:`wan_vae_decode_work`: 40.7 TFLOP at 832x480, the design brief estimates "roughly 35-40").

    Returns
    -------
    dict with ``flops_per_forward`` / ``bytes_per_forward`` (by component), ``flops_per_chunk``,
    ``bytes_per_chunk``, their totals, ``per_prompt_flops``, ``kv_cache_bytes`` (allocated),
    ``parameters``, the geometry (``query_tokens``, ``kv_tokens``, ...) and ``vae``.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    stream = stream or StreamConfig()
    prec = get_precision(precision)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg, b = p.model, batch_size
    d, f, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    tpf = p.tokens_per_frame
    lq = stream.chunk_frames * tpf
    if chunk_index is None:
        kv_frames = stream.attention_frames
    elif chunk_index < 0:
        raise ValueError(f"chunk_index must be >= 0 (or None for the steady state), got {chunk_index}")
    else:
        kv_frames = min(chunk_index + 1, stream.slot_chunks) * stream.chunk_frames
    lk = kv_frames * tpf
    lt = cfg.text_len
    patch = math.prod(cfg.patch_size)

    flops = {
        "linear": b * lq * layers * 2 * (6 * d * d + 2 * d * f),
        "embed_head": b * lq * 2 * (cfg.in_dim * patch * d + d * cfg.out_dim * patch)
        + b * stream.chunk_frames * 2 * (cfg.freq_dim * d + d * d + d * 6 * d),
        "self_attention": b * layers * 4 * lq * lk * d,
        "cross_attention": b * layers * 4 * lq * lt * d,
    }
    per_prompt_flops = b * lt * 2 * (cfg.text_dim * d + d * d) + b * layers * lt * 2 * 2 * d * d

    params = dit_parameters(cfg)
    # Rough activation traffic, per token and layer, assuming norms / modulation / gating are fused
    # into their neighbours: every linear reads its input and writes its output once (qkv 1+3,
    # o 1+1, cross q 1+1, cross o 1+1, ffn 1+ffn/dim twice), attention reads Q and writes O
    # (self + cross), and the 3 residual updates read and write the float32 stream.
    act_elems = 16 * d + 2 * f
    bytes_ = {
        "weights": params["block_linear"] * prec.weight_bytes + params["other"] * 2,
        # read every valid K/V (own chunk included), write the chunk's own, read the text K/V
        "kv_cache": b * layers * 2 * d * (lk + lq + lt) * prec.kv_bytes,
        "activations": b * lq * layers * (act_elems * prec.act_bytes + 6 * d * 4),
    }
    forwards = len(stream.denoising_steps) + 1
    vae = wan_vae_decode_work(p.latent_height, p.latent_width, latent_frames=stream.chunk_frames, batch_size=b)
    if vae_tflop_per_chunk is not None:
        if vae_tflop_per_chunk < 0:
            raise ValueError(f"vae_tflop_per_chunk must be >= 0, got {vae_tflop_per_chunk}")
        vae = {**vae, "flops": vae_tflop_per_chunk * TERA * b, "source": "given (--vae-tflop-per-chunk)"}
    return {
        "preset": p.name,
        "precision": precision,
        "batch_size": b,
        "chunk_frames": stream.chunk_frames,
        "video_frames_per_chunk": 4 * stream.chunk_frames,  # per video
        "forwards_per_chunk": forwards,
        "phase": "steady" if chunk_index is None else f"chunk {chunk_index}",
        "tokens_per_frame": tpf,
        "query_tokens": lq,
        "kv_tokens": lk,
        "text_tokens": lt,
        "flops_per_forward": flops,
        "flops_per_forward_total": sum(flops.values()),
        "flops_per_chunk": {k: forwards * v for k, v in flops.items()},
        "flops_per_chunk_total": forwards * sum(flops.values()),
        "per_prompt_flops": per_prompt_flops,
        "bytes_per_forward": bytes_,
        "bytes_per_chunk": {k: forwards * v for k, v in bytes_.items()},
        "bytes_per_chunk_total": forwards * sum(bytes_.values()),
        "kv_cache_bytes": b * layers * 2 * stream.attention_frames * tpf * d * prec.kv_bytes,
        "parameters": params,
        "model_bytes": params["block_linear"] * prec.weight_bytes + (params["total"] - params["block_linear"]) * 2,
        "vae": vae,
    }


# -- Wan2.1 VAE decoder ------------------------------------------------------------------------
def wan_vae_decode_work(
    latent_height: int,
    latent_width: int,
    *,
    latent_frames: int = 1,
    batch_size: int = 1,
    dim: int = 96,
    z_dim: int = 16,
    dim_mult: tuple[int, ...] = (1, 2, 4, 4),
    num_res_blocks: int = 2,
    temporal_upsample: tuple[bool, ...] = (True, True, False),
) -> dict:
    """FLOPs and rough bytes of the Wan2.1 VAE decoder, steady state (4 video frames per latent frame).

    Counted from the architecture of ``wan/modules/vae.py`` (``Decoder3d`` with Wan2.1's
    config: dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks, no attention outside the
    middle block, temporal upsampling in the first two stages). Wan decodes one latent frame
    per call with 2 cached frames per causal conv, so a 3x3x3 conv costs ``27 Cin Cout`` MACs
    per output pixel; ``upsample3d`` runs a (3,1,1) time conv to ``2C`` channels (two frames)
    before its per-frame 2x nearest upsample + 3x3 conv to ``C/2``. The video's very first
    latent frame decodes to 1 frame and is cheaper: not modelled here. Bytes: every conv reads
    its input and writes its output once in bf16, plus the weights (norm/SiLU assumed fused).
    """
    flops = 0
    act_elems = 0
    weights = 0
    convs: dict[tuple[int, int, int, int, int], int] = {}  # (cin, cout, taps, frames, pixels) -> calls

    def conv(cin: int, cout: int, taps: int, frames: int, pixels: int) -> None:
        nonlocal flops, act_elems, weights
        key = (cin, cout, taps, frames, pixels)
        convs[key] = convs.get(key, 0) + 1
        flops += 2 * cin * cout * taps * frames * pixels
        act_elems += (cin + cout) * frames * pixels
        weights += cin * cout * taps + cout

    def res_block(cin: int, cout: int, frames: int, pixels: int) -> None:
        conv(cin, cout, 27, frames, pixels)
        conv(cout, cout, 27, frames, pixels)
        if cin != cout:
            conv(cin, cout, 1, frames, pixels)  # shortcut

    dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    frames, pixels = 1, latent_height * latent_width
    conv(z_dim, z_dim, 1, frames, pixels)  # WanVAE_.conv2, before the decoder
    conv(z_dim, dims[0], 27, frames, pixels)  # decoder conv1
    # middle: res block, single-head spatial attention (per frame, over all pixels), res block
    res_block(dims[0], dims[0], frames, pixels)
    c = dims[0]
    conv(c, 3 * c, 1, frames, pixels)  # to_qkv
    flops += 4 * pixels * pixels * c * frames  # QK^T and PV
    act_elems += 4 * c * frames * pixels
    conv(c, c, 1, frames, pixels)  # proj
    res_block(dims[0], dims[0], frames, pixels)
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
        if i > 0:
            cin //= 2  # the previous upsample halved the channels
        for _ in range(num_res_blocks + 1):
            res_block(cin, cout, frames, pixels)
            cin = cout
        if i != len(dim_mult) - 1:
            if temporal_upsample[i]:
                conv(cout, 2 * cout, 3, frames, pixels)  # time_conv: each frame becomes two
                frames *= 2
            pixels *= 4
            conv(cout, cout // 2, 9, frames, pixels)  # nearest 2x upsample, then a 3x3 Conv2d
    conv(dims[-1], 3, 27, frames, pixels)  # head
    scale = latent_frames * batch_size
    return {
        "flops": flops * scale,
        "bytes": (act_elems * scale + weights) * 2,
        "video_frames": frames * latent_frames,
        "parameters": weights,
        "source": "counted from the Wan2.1 VAE decoder architecture, bf16",
        # per decoded latent frame of one video: each convolution's shape and how often it runs
        # (estimate.vae_chunk_seconds times them, as small convolutions run far below a matmul's rate)
        "convs": [(*k, n) for k, n in convs.items()],
    }


# -- the roofline ------------------------------------------------------------------------------
def roofline(
    preset: Preset | str,
    gpu: str,
    precision: str = "bf16",
    stream: StreamConfig | None = None,
    *,
    batch_size: int = 1,
    chunk_index: int | None = None,
    vae_tflop_per_chunk: float | None = None,
) -> dict:
    """Time per chunk at the GPU's peaks and the FPS ceiling, DiT only and with the VAE decoder.

    Compute time adds each component's FLOPs over the peak it runs at (see ``PRECISIONS``);
    memory time is all bytes over the bandwidth; the DiT's time per chunk is the larger of the
    two (perfect overlap). The VAE runs after the DiT on the same GPU, so its time adds.
    FPS = video frames per chunk (``batch_size * 4 * chunk_frames``) / time.
    """
    g = get_gpu(gpu)
    prec = get_precision(precision)
    work = chunk_work(
        preset, stream, batch_size, precision=precision, chunk_index=chunk_index,
        vae_tflop_per_chunk=vae_tflop_per_chunk,
    )  # fmt: skip
    peak_of = {
        "linear": g.peak(prec.linear),
        "embed_head": g.peak("bf16"),
        "self_attention": g.peak(prec.attention),
        "cross_attention": g.peak(prec.attention),
    }
    bw = g.bandwidth_tbs * TERA  # bytes/s
    components = []
    compute_s = 0.0
    for name, fl in work["flops_per_chunk"].items():
        s = fl / (peak_of[name] * TERA)
        compute_s += s
        components.append({"name": name, "tflop": fl / TERA, "gb": None, "ms": s * 1e3, "peak": peak_of[name]})
    memory_s = 0.0
    for name, by in work["bytes_per_chunk"].items():
        s = by / bw
        memory_s += s
        components.append({"name": name, "tflop": None, "gb": by / GIGA, "ms": s * 1e3, "peak": g.bandwidth_tbs})
    dit_s = max(compute_s, memory_s)
    vae = work["vae"]
    vae_s = max(vae["flops"] / (g.peak("bf16") * TERA), vae["bytes"] / bw)
    frames = batch_size * work["video_frames_per_chunk"]
    return {
        "gpu": gpu,
        "gpu_name": g.name,
        "gpu_source": g.source,
        "precision": precision,
        "precision_note": prec.note,
        "preset": work["preset"],
        "batch_size": batch_size,
        "phase": work["phase"],
        "video_frames_per_chunk": frames,
        "components": components,
        "dit": {
            "tflop": work["flops_per_chunk_total"] / TERA,
            "gb": work["bytes_per_chunk_total"] / GIGA,
            "compute_ms": compute_s * 1e3,
            "memory_ms": memory_s * 1e3,
            "ms": dit_s * 1e3,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "fps_ceiling": frames / dit_s,
        },
        "vae": {
            "tflop": vae["flops"] / TERA,
            "gb": vae["bytes"] / GIGA,
            "ms": vae_s * 1e3,
            "source": vae["source"],
        },
        "end_to_end": {"ms": (dit_s + vae_s) * 1e3, "fps_ceiling": frames / (dit_s + vae_s)},
        "work": work,
    }


_LABELS = {
    "linear": "linear layers (blocks)",
    "embed_head": "patch embed, head, time embedding",
    "self_attention": "self-attention (QK^T, PV)",
    "cross_attention": "cross-attention (QK^T, PV)",
    "weights": "weights read",
    "kv_cache": "KV cache read + write (self + text)",
    "activations": "activations (rough)",
}


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_roofline(result: dict) -> str:
    """Markdown table of one :func:`roofline` result: per component TFLOP / GB and time at peak."""
    w = result["work"]
    dit, vae, e2e = result["dit"], result["vae"], result["end_to_end"]
    lines = [
        f"roofline: {result['preset']} on {result['gpu_name']}, {result['precision']} "
        f"({result['precision_note']}); batch {result['batch_size']}, {result['phase']} "
        f"({w['query_tokens']} query x {w['kv_tokens']} key tokens), {w['forwards_per_chunk']} forwards "
        f"per chunk of {result['video_frames_per_chunk']} video frames",
        f"peaks: {result['gpu_source']} (datasheet, not measured)",
        "",
        "| component (per chunk) | TFLOP | GB | ms at peak | peak |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in result["components"]:
        unit = "TB/s" if c["gb"] is not None else "TFLOP/s"
        lines.append(
            f"| {_LABELS[c['name']]} | {_num(c['tflop'], '.2f')} | {_num(c['gb'], '.2f')} | {c['ms']:.2f} "
            f"| {c['peak']:g} {unit} |"
        )
    lines += [
        f"| **DiT total** (compute {dit['compute_ms']:.1f} ms, memory {dit['memory_ms']:.1f} ms: "
        f"{dit['bound']}-bound) | {dit['tflop']:.1f} | {dit['gb']:.1f} | {dit['ms']:.1f} | |",
        f"| VAE decoder ({vae['source']}) | {vae['tflop']:.1f} | {vae['gb']:.1f} | {vae['ms']:.1f} | bf16 |",
        f"| **DiT + VAE** | {dit['tflop'] + vae['tflop']:.1f} | {dit['gb'] + vae['gb']:.1f} | {e2e['ms']:.1f} | |",
        "",
        f"FPS ceiling: {dit['fps_ceiling']:.1f} DiT only, {e2e['fps_ceiling']:.1f} with the VAE decoder "
        f"(video frames per second; KV cache {w['kv_cache_bytes'] / 2**30:.2f} GiB, "
        f"weights {w['model_bytes'] / GIGA:.2f} GB).",
    ]
    return "\n".join(lines)


def format_roofline_summary(results: list[dict]) -> str:
    """One Markdown row per result: time per chunk and FPS ceilings side by side."""
    lines = [
        "| GPU | precision | DiT TFLOP/chunk | DiT ms | bound | FPS DiT only | VAE ms | FPS with VAE |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        d = r["dit"]
        lines.append(
            f"| {r['gpu']} | {r['precision']} | {d['tflop']:.1f} | {d['ms']:.1f} | {d['bound']} "
            f"| {d['fps_ceiling']:.1f} | {r['vae']['ms']:.1f} | {r['end_to_end']['fps_ceiling']:.1f} |"
        )
    return "\n".join(lines)


# -- measured vs ceiling -----------------------------------------------------------------------
_DTYPE_TO_PRECISION = {"bfloat16": "bf16", "float16": "bf16", "bf16": "bf16", "fp16": "bf16"}


def _stream_from_report(report: dict) -> StreamConfig:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in report.get("stream", {}).items()}
    return StreamConfig(**fields)


def measured_over_ceiling(report: dict, gpu: str | None = None, precision: str | None = None) -> dict | None:
    """Each variant's measured ``video_fps_dit_only`` over the DiT-only FPS ceiling of its GPU.

    Parameters
    ----------
    report : an ``arvid.stream_bench/1`` or ``/2`` report (``arvid bench --json``).
    gpu : key of ``GPUS``; default: guessed from ``report["environment"]["device_name"]``.
    precision : default from the report's dtype (fp16 is counted at the bf16 peak, which is
        the same on these GPUs).

    Returns
    -------
    ``None`` when no GPU / precision can be matched (a CPU run, an unknown card, float32);
    else a dict with the ceiling and per-variant ``fraction_of_ceiling``. The ceiling is the
    mean time over exactly the timed chunks (fill-phase chunks are cheaper), without the
    prompt-switch re-cache forwards: with switches the fraction is slightly pessimistic.
    """
    if report.get("schema") not in SCHEMAS:
        raise ValueError(f"not an arvid.stream_bench report (schema {report.get('schema')!r})")
    gpu = gpu or gpu_key_for_device(report.get("environment", {}).get("device_name"))
    precision = precision or _DTYPE_TO_PRECISION.get(report["dtype"])
    if gpu is None or precision is None:
        return None
    stream = _stream_from_report(report)
    timed = range(report["warmup_chunks"], report["chunks"])
    ms = [
        roofline(report["preset"], gpu, precision, stream, batch_size=report["batch_size"], chunk_index=i)["dit"]["ms"]
        for i in timed
    ]
    ceiling_ms = sum(ms) / len(ms)
    frames = report["batch_size"] * 4 * stream.chunk_frames
    ceiling_fps = frames / ceiling_ms * 1e3
    return {
        "gpu": gpu,
        "precision": precision,
        "ceiling_ms_per_chunk": ceiling_ms,
        "ceiling_fps_dit_only": ceiling_fps,
        "variants": [
            {
                "backend": v["backend"],
                "video_fps_dit_only": v["video_fps_dit_only"],
                "fraction_of_ceiling": v["video_fps_dit_only"] / ceiling_fps,
            }
            for v in report["variants"]
        ],
    }


def supports(gpu: str, precision: str) -> bool:
    """Whether ``gpu`` has peaks for both the linear and the attention math of ``precision``."""
    try:
        GPUS[gpu].peak(PRECISIONS[precision].linear)
        GPUS[gpu].peak(PRECISIONS[precision].attention)
    except ValueError:
        return False
    return True
