"""Quality loss of a quantized variant against the reference model, chunk by chunk.

:func:`compare_streams` runs the reference and the variant in lockstep on the same noise, prompts,
switch frames and re-noising seeds, and measures per chunk: latent SQNR, relative error and
cosine; latent flicker; and, with VAE decoders, PSNR / SSIM per decoded frame, video flicker and
optionally CLIP score. :func:`write_report` writes ``report.json``, ``report.md`` and PNG plots.

What counts as a PASS (:class:`Thresholds`) is a convention, not a measured perceptual
threshold; see ``quant/README.md`` for the reasoning behind each number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from arvid.runtime.config import StreamConfig
from arvid.runtime.files import path_error
from arvid.runtime.model import CausalWanModel
from arvid.runtime.optional import require
from arvid.runtime.variants import GeneratorOptions

from .metrics import (
    ClipScorer,
    FlickerMeter,
    cosine,
    decoded_to_frames,
    drift_stats,
    psnr_per_frame,
    relative_error,
    sqnr_db,
    ssim_per_frame,
)


@dataclass(frozen=True)
class Thresholds:
    """Limits within which a variant's loss is a PASS (conventions; see quant/README.md).

    latent_sqnr_db : pooled latent SQNR >= 20 dB: error power <= 1 % of the signal (relative error
        <= 0.1, cosine >= ~0.995). A round number from the definition, used as a rule of thumb; a
        single INT8 / e4m3 rounding of a tensor sits at ~40 / ~31 dB, so 20 dB leaves room for the
        errors of a few dozen layers to add up, and no more.
    video_psnr_db : mean PSNR >= 30 dB on decoded frames in [0, 1] (RMS error <= 3.2 % of the range):
        the usual lower bound of "acceptable" in lossy image / video coding.
    video_ssim : mean SSIM >= 0.90.
    drift_db : the last chunks' mean SQNR at most 3 dB (error power at most doubled) below the first ones'.
    flicker_band : the variant's frame-difference energy within +-10 % of the reference's.
    """

    latent_sqnr_db: float = 20.0
    video_psnr_db: float = 30.0
    video_ssim: float = 0.90
    drift_db: float = 3.0
    flicker_band: float = 0.10


def _finite(xs: Sequence[float]) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def _mean(xs: Sequence[float]) -> float:
    f = _finite(xs)
    return sum(f) / len(f) if f else math.inf


def compare_streams(
    reference: CausalWanModel,
    variant: CausalWanModel,
    *,
    noise: torch.Tensor,
    prompts: Sequence[torch.Tensor],
    switch_frames: Sequence[int] = (),
    stream: StreamConfig | None = None,
    seed: int = 0,
    backend: str | None = None,  # a variant string (e.g. "sdpa", "triton+graphs"); None: the default
    decoders: tuple | None = None,
    clip: ClipScorer | None = None,
    prompt_texts: Sequence[str] | None = None,
    thresholds: Thresholds = Thresholds(),
    drift_window: int = 10,
    on_chunk: Callable[[dict], None] | None = None,
) -> dict:
    """Run both models on identical inputs and measure the variant's error per chunk.

    Parameters
    ----------
    reference, variant : the models compared (e.g. the fp32 / BF16 model and its quantized copy).
    noise : ``[1, F, C, H, W]`` initial noise; prompts / switch_frames as for the generator.
    seed : seeds the re-noising between denoising steps (same draws for both models).
    decoders : two streaming VAE decoders (``reset()``, ``decode(latents) -> [1, T, 3, H, W]`` in
        [-1, 1]), one per model, or None to skip the decoded-video metrics.
    clip : a :class:`ClipScorer` (needs ``decoders`` and ``prompt_texts``), scored on the first
        decoded frame of every chunk.
    on_chunk : called with each chunk's metrics as soon as they are known.

    Returns
    -------
    The report (JSON-ready dict): ``per_chunk`` rows, ``per_frame`` video rows, ``summary``,
    ``verdict`` and ``thresholds``.
    """
    if noise.dim() != 5 or noise.shape[0] != 1:
        raise ValueError(f"quality comparison runs batch 1: noise must be [1, F, C, H, W], got {tuple(noise.shape)}")
    if clip is not None and (decoders is None or not prompt_texts):
        raise ValueError("CLIP score needs decoded frames (a VAE) and the prompt texts")
    latent_size = tuple(noise.shape[-2:])
    opts = GeneratorOptions.from_variant(backend) if backend else GeneratorOptions()
    gens = [opts.build(m, stream, latent_size=latent_size) for m in (reference, variant)]
    devices = [g.device for g in gens]
    streams = [
        g.stream(noise, prompts, switch_frames, generator=torch.Generator(device=d).manual_seed(seed + 1))
        for g, d in zip(gens, devices, strict=True)
    ]
    if decoders is not None:
        for d in decoders:
            d.reset()
    switches = list(switch_frames)
    rows, frame_rows = [], []
    sig = err = 0.0
    lat_flicker, vid_flicker = FlickerMeter(), FlickerMeter()
    frame_index = 0
    clip_ref: list[float] = []
    clip_var: list[float] = []
    for ref_c, var_c in zip(*streams, strict=True):
        r, v = ref_c.latents.detach().cpu().double(), var_c.latents.detach().cpu().double()
        sig += r.pow(2).sum().item()
        err += (r - v).pow(2).sum().item()
        row = {
            "chunk": ref_c.index,
            "frame_start": ref_c.frame_start,
            "latent_sqnr_db": sqnr_db(r, v),
            "latent_rel_err": relative_error(r, v),
            "latent_cosine": cosine(r, v),
        }
        lat_flicker.add(r[0], v[0])
        if decoders is not None:
            fr = decoded_to_frames(decoders[0].decode(ref_c.latents))
            fv = decoded_to_frames(decoders[1].decode(var_c.latents))
            psnr, ssim = psnr_per_frame(fr, fv), ssim_per_frame(fr, fv)
            for p, s in zip(psnr.tolist(), ssim.tolist(), strict=True):
                frame_rows.append({"frame": frame_index, "chunk": ref_c.index, "psnr_db": p, "ssim": s})
                frame_index += 1
            vid_flicker.add(fr, fv)
            row["video_psnr_db"] = _mean(psnr.tolist())
            row["video_ssim"] = float(ssim.mean())
            if clip is not None:
                segment = sum(1 for s in switches if s <= ref_c.frame_start)
                text = prompt_texts[segment]
                row["clip_reference"] = float(clip.score(fr[:1], text)[0])
                row["clip_variant"] = float(clip.score(fv[:1], text)[0])
                clip_ref.append(row["clip_reference"])
                clip_var.append(row["clip_variant"])
        rows.append(row)
        if on_chunk is not None:
            on_chunk(row)

    per_chunk = [row["latent_sqnr_db"] for row in rows]
    summary = {
        "chunks": len(rows),
        "latent_sqnr_db": 10 * math.log10(sig / err) if err else math.inf,  # pooled over all chunks
        "latent_sqnr_db_min": min(per_chunk),
        "latent_rel_err_max": max(row["latent_rel_err"] for row in rows),
        "latent_cosine_min": min(row["latent_cosine"] for row in rows),
        "drift": drift_stats(per_chunk, drift_window),
        "latent_flicker": lat_flicker.summary(),
        "video": None,
        "clip": None,
    }
    t = thresholds
    verdict = {
        "latent_sqnr": summary["latent_sqnr_db"] >= t.latent_sqnr_db,
        "drift": summary["drift"]["drop_db"] <= t.drift_db,
        "latent_flicker": abs(summary["latent_flicker"]["flicker_ratio"] - 1) <= t.flicker_band,
    }
    if frame_rows:
        psnrs = [f["psnr_db"] for f in frame_rows]
        ssims = [f["ssim"] for f in frame_rows]
        summary["video"] = {
            "frames": len(frame_rows),
            "psnr_db_mean": _mean(psnrs),
            "psnr_db_min": min(psnrs),
            "ssim_mean": sum(ssims) / len(ssims),
            "ssim_min": min(ssims),
            "flicker": vid_flicker.summary(),
        }
        verdict["video_psnr"] = summary["video"]["psnr_db_mean"] >= t.video_psnr_db
        verdict["video_ssim"] = summary["video"]["ssim_mean"] >= t.video_ssim
        verdict["video_flicker"] = abs(summary["video"]["flicker"]["flicker_ratio"] - 1) <= t.flicker_band
    if clip_ref:
        summary["clip"] = {
            "reference_mean": sum(clip_ref) / len(clip_ref),
            "variant_mean": sum(clip_var) / len(clip_var),
            "delta_mean": (sum(clip_var) - sum(clip_ref)) / len(clip_ref),
        }
    verdict["pass"] = all(verdict.values())
    return {
        "per_chunk": rows,
        "per_frame": frame_rows,
        "latent_flicker_per_pair": {"reference": lat_flicker.ref, "variant": lat_flicker.var},
        "video_flicker_per_pair": {"reference": vid_flicker.ref, "variant": vid_flicker.var} if frame_rows else None,
        "summary": summary,
        "thresholds": dataclasses.asdict(thresholds),
        "verdict": verdict,
    }


# -- report files ------------------------------------------------------------------------------


def _fmt(x, digits: int = 2) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def verdict_line(report: dict) -> str:
    """``PASS`` or ``FAIL``, and each check with its threshold, e.g. ``FAIL: latent SQNR 18.1 dB < 20 dB; ...``.

    PASS: every check is within its threshold (a loss within the conventions of :class:`Thresholds`,
    which are rules of thumb, not measured perceptual limits).
    """
    s, t, v = report["summary"], report["thresholds"], report["verdict"]
    checks = [
        ("latent_sqnr", f"latent SQNR {_fmt(s['latent_sqnr_db'])} dB", ">=", f"{t['latent_sqnr_db']} dB"),
        ("drift", f"drift {_fmt(s['drift']['drop_db'])} dB", "<=", f"{t['drift_db']} dB"),
        ("latent_flicker", f"latent flicker ratio {_fmt(s['latent_flicker']['flicker_ratio'], 3)}", "within",
         f"1 +- {t['flicker_band']}"),
    ]  # fmt: skip
    if s["video"]:
        vid = s["video"]
        checks += [
            ("video_psnr", f"video PSNR {_fmt(vid['psnr_db_mean'])} dB", ">=", f"{t['video_psnr_db']} dB"),
            ("video_ssim", f"video SSIM {_fmt(vid['ssim_mean'], 4)}", ">=", f"{t['video_ssim']}"),
            ("video_flicker", f"video flicker ratio {_fmt(vid['flicker']['flicker_ratio'], 3)}", "within",
             f"1 +- {t['flicker_band']}"),
        ]  # fmt: skip
    negate = {">=": "<", "<=": ">", "within": "outside"}
    parts = [f"{what} {op if v[key] else negate[op]} {limit}" for key, what, op, limit in checks]
    return f"{'PASS' if v['pass'] else 'FAIL'}: " + "; ".join(parts)


def format_markdown(report: dict) -> str:
    """The human-readable report."""
    s, t, v = report["summary"], report["thresholds"], report["verdict"]
    meta = report.get("meta", {})
    lines = [f"# Quality report: {meta.get('scheme', 'variant')} vs reference", ""]
    if meta:
        lines += [f"- {k}: `{json.dumps(val) if not isinstance(val, str) else val}`" for k, val in meta.items()]
        lines.append("")
    lines += [
        f"**Verdict: {verdict_line(report)}**",
        "",
        "| metric | value | threshold | within |",
        "| --- | --- | --- | --- |",
        f"| latent SQNR, pooled (dB) | {_fmt(s['latent_sqnr_db'])} | >= {t['latent_sqnr_db']} "
        f"| {_fmt(v['latent_sqnr'])} |",
        f"| latent SQNR, worst chunk (dB) | {_fmt(s['latent_sqnr_db_min'])} | | |",
        f"| latent relative error, worst chunk | {_fmt(s['latent_rel_err_max'], 4)} | | |",
        f"| latent cosine, worst chunk | {_fmt(s['latent_cosine_min'], 6)} | | |",
        f"| drift: first {s['drift']['window']} chunks - last {s['drift']['window']} (dB) "
        f"| {_fmt(s['drift']['drop_db'])} | <= {t['drift_db']} | {_fmt(v['drift'])} |",
        f"| drift slope (dB / chunk) | {_fmt(s['drift']['slope_db_per_chunk'], 4)} | | |",
        f"| latent flicker ratio | {_fmt(s['latent_flicker']['flicker_ratio'], 4)} | 1 +- {t['flicker_band']} "
        f"| {_fmt(v['latent_flicker'])} |",
        f"| latent temporal SQNR (dB) | {_fmt(s['latent_flicker']['temporal_sqnr_db'])} | | |",
    ]
    vid = s["video"]
    if vid:
        lines += [
            f"| video PSNR, mean (dB) | {_fmt(vid['psnr_db_mean'])} | >= {t['video_psnr_db']} "
            f"| {_fmt(v['video_psnr'])} |",
            f"| video PSNR, worst frame (dB) | {_fmt(vid['psnr_db_min'])} | | |",
            f"| video SSIM, mean | {_fmt(vid['ssim_mean'], 4)} | >= {t['video_ssim']} | {_fmt(v['video_ssim'])} |",
            f"| video SSIM, worst frame | {_fmt(vid['ssim_min'], 4)} | | |",
            f"| video flicker ratio | {_fmt(vid['flicker']['flicker_ratio'], 4)} | 1 +- {t['flicker_band']} "
            f"| {_fmt(v['video_flicker'])} |",
        ]
    else:
        lines += ["| video metrics | not measured (no VAE decoder) | | |"]
    if s["clip"]:
        c = s["clip"]
        lines.append(
            f"| CLIP score reference / variant / delta | {_fmt(c['reference_mean'])} / {_fmt(c['variant_mean'])} "
            f"/ {_fmt(c['delta_mean'])} | | |"
        )
    sizes = report.get("sizes")
    if sizes:
        lines += [
            "",
            f"Model size: {sizes['stored_bytes']:,} bytes stored (the layers kept in floating point in BF16, as "
            f"`arvid quantize` stores them) vs {sizes['bf16_bytes']:,} bytes in BF16 "
            f"(ratio {sizes['ratio']:.3f}).",
        ]
    lines += [
        "",
        "Per-chunk latent SQNR: `latent_sqnr.png`; flicker: `flicker.png`"
        + ("; per-frame PSNR / SSIM: `video_metrics.png`." if vid else "."),
        "",
        "The thresholds are conventions (error power <= 1 % of the signal; PSNR 30 dB as the usual floor of "
        "acceptable lossy coding), not measured perceptual limits: see quant/README.md.",
        "",
    ]
    return "\n".join(lines)


def _plots(report: dict, tmpdir: Path) -> list[str]:
    matplotlib = require("matplotlib", purpose="the quality report's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = []
    rows, t = report["per_chunk"], report["thresholds"]
    idx = [r["chunk"] for r in rows]
    fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax[0].plot(idx, [r["latent_sqnr_db"] for r in rows], ".-", label="latent SQNR per chunk")
    ax[0].axhline(t["latent_sqnr_db"], color="r", ls="--", label=f"threshold {t['latent_sqnr_db']} dB")
    ax[0].set_ylabel("SQNR (dB)")
    ax[0].legend()
    ax[1].plot(idx, [r["latent_rel_err"] for r in rows], ".-", color="tab:orange")
    ax[1].set_ylabel("relative error")
    ax[1].set_xlabel("chunk")
    ax[1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle("Variant vs reference latents, per chunk")
    fig.tight_layout()
    fig.savefig(tmpdir / "latent_sqnr.png", dpi=100)
    plt.close(fig)
    names.append("latent_sqnr.png")

    series = [("latents", report["latent_flicker_per_pair"])]
    if report["video_flicker_per_pair"]:
        series.append(("decoded video", report["video_flicker_per_pair"]))
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 3 * len(series)), squeeze=False)
    for a, (label, d) in zip(axes[:, 0], series, strict=True):
        a.plot(d["reference"], label="reference")
        a.plot(d["variant"], label="variant", alpha=0.8)
        a.set_ylabel("frame-difference energy")
        a.set_title(label)
        a.legend()
    axes[-1, 0].set_xlabel("frame pair")
    fig.tight_layout()
    fig.savefig(tmpdir / "flicker.png", dpi=100)
    plt.close(fig)
    names.append("flicker.png")

    if report["per_frame"]:
        fr = report["per_frame"]
        fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        ax[0].plot([f["frame"] for f in fr], [f["psnr_db"] for f in fr])
        ax[0].axhline(t["video_psnr_db"], color="r", ls="--")
        ax[0].set_ylabel("PSNR (dB)")
        ax[1].plot([f["frame"] for f in fr], [f["ssim"] for f in fr])
        ax[1].axhline(t["video_ssim"], color="r", ls="--")
        ax[1].set_ylabel("SSIM")
        ax[1].set_xlabel("video frame")
        fig.tight_layout()
        fig.savefig(tmpdir / "video_metrics.png", dpi=100)
        plt.close(fig)
        names.append("video_metrics.png")
    return names


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``.

    Everything is written into a temporary folder beside ``out_dir`` first and moved in file by file
    once all of it exists, so a failure leaves no partial report behind. Infinite values (bit-exact
    chunks) are written as the strings ``"inf"`` / ``"-inf"`` (JSON has no infinity).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.tmp"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        (tmp / "report.json").write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False))
        (tmp / "report.md").write_text(format_markdown(report))
        names = ["report.json", "report.md", *_plots(report, tmp)]
        out_dir.mkdir(parents=True, exist_ok=True)
        for n in names:
            os.replace(tmp / n, out_dir / n)
        return [out_dir / n for n in names]
    except OSError as e:  # named by the report folder, not by our temporary one
        raise path_error(e, out_dir, "cannot write the report") from e
    finally:
        with contextlib.suppress(OSError):  # on a read-only file system there is nothing to remove
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
