"""``arvid quality``: the quality loss of an INT8 / FP8 variant against the reference model.

Both models run on the same prompts, noise and re-noising seeds; the report (JSON, Markdown, PNG
plots) gives per-chunk latent SQNR / relative error / cosine, drift over the video, flicker, and
with ``--vae`` per-frame PSNR / SSIM of the decoded video (plus CLIP score with ``--clip-model``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a command runs: `arvid --help` must not pay for it
    import torch

from ._checks import check_output_dir
from ._common import add_common_args, add_model_args, load_model_from_args, model_preset, stream_config, weights_label
from ._names import QDQ_SCHEMES
from .quantize import add_quant_args, skip_patterns


def register(sub) -> None:
    p = sub.add_parser("quality", help="quality loss of an INT8 / FP8 variant vs the reference, per chunk")
    add_common_args(p)
    add_model_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--scheme", choices=["int8", "int8-weight-only", "fp8"], help="quantize the reference now")
    which.add_argument("--variant", help="a directory written by `arvid quantize`")
    which.add_argument("--modelopt", choices=QDQ_SCHEMES, help="nvidia-modelopt fake quantization, calibrated here")
    p.add_argument(
        "--quant-backend",
        choices=["emulate", "torchao"],
        default="emulate",
        help="how --scheme runs: emulate (arvid's modules, any device) or torchao (its CUDA kernels) "
        "(default: emulate)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the quantized linears (--scheme)")
    add_quant_args(p)
    p.add_argument("--calib-prompts", type=int, default=4, help="stand-in prompts calibrated on (--modelopt)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat once per switch")
    p.add_argument(
        "--vae",
        action="store_true",
        help="also decode both videos and compare them (PSNR / SSIM): the VAE of --model, or --vae-weights; "
        "the tiny preset without either gets a random tiny VAE",
    )
    p.add_argument("--vae-weights", help="with --vae: a Wan2.1 VAE (directory or .pth) instead of --model's")
    p.add_argument("--clip-model", help="a local transformers CLIP model directory, for CLIP score (needs --vae)")
    p.add_argument("--drift-window", type=int, default=10, help="chunks averaged at each end for the drift check")
    p.add_argument("--out", required=True, help="report directory (report.json, report.md, *.png)")
    p.add_argument("--quiet", action="store_true", help="no per-chunk lines")
    p.set_defaults(func=cmd_quality)


def vae_source(args, files, preset) -> str | None:
    """Which VAE ``--vae`` decodes with: ``--vae-weights``, the VAE of ``--model``, or ``"tiny"`` (random)."""
    if args.vae_weights and not args.vae:
        raise ValueError("--vae-weights needs --vae")
    if not args.vae:
        return None
    if args.vae_weights:
        return args.vae_weights
    if files is not None:
        if files.vae is None:
            raise ValueError(f"{files.root}: no VAE found (Wan2.1_VAE.pth or vae/); give --vae-weights")
        return str(files.vae)
    if preset.name != "tiny":
        raise ValueError(f"--vae on preset {preset.name} needs VAE weights: give --model DIR or --vae-weights")
    return "tiny"


def video_decoders(spec: str | None, device: torch.device) -> tuple | None:
    """Two streaming VAE decoders (reference, variant) for :func:`vae_source`'s answer, or None.

    The VAE runs in float32 so the decode adds no rounding of its own to the comparison; each model
    gets its own copy because the streaming decoder keeps its causal-convolution cache in the VAE.
    """
    if spec is None:
        return None
    import torch

    from arvid.runtime.vae import StreamingVAEDecoder, load_vae, tiny_vae

    vae = tiny_vae(device=device) if spec == "tiny" else load_vae(spec, device=device, dtype=torch.float32)
    return StreamingVAEDecoder(vae), StreamingVAEDecoder(copy.deepcopy(vae))


STAND_IN_BANNER = (
    "NOTE: no text encoder (no --model with one): the prompts get deterministic stand-in embeddings, "
    "not the model's encoding of their text; the CLIP score then compares against text the model never saw"
)


def prompt_embeddings(args, files, preset, prompts: list[str], device, dtype) -> tuple[list[torch.Tensor], str]:
    """The prompts encoded by ``--model``'s umT5 text encoder (freed after), or stand-ins with a banner.

    Returns the embeddings and where they came from (for the report's metadata).
    """
    import torch

    from arvid.runtime.prompts import placeholder_prompt_embeds

    if files is None or files.text_encoder is None or files.tokenizer is None:
        print(STAND_IN_BANNER, file=sys.stderr)
        return [placeholder_prompt_embeds(p, preset) for p in prompts], "stand-in embeddings (no text encoder)"
    from arvid.runtime.loaders import load_text_encoder_for  # the one text-encoder loader

    encoder = load_text_encoder_for(files, preset, device, dtype, placement="device", seed=args.seed)
    embeds = [encoder.encode(p) for p in prompts]
    del encoder  # umT5-XXL is larger than the DiT: not kept beside the two models compared
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return embeds, f"umT5 text encoder of {files.root}"


def cmd_quality(args) -> int:
    import torch

    from arvid.quant import config_for_scheme, load_quantized, model_size_report, quantize_
    from arvid.quant.metrics import ClipScorer
    from arvid.quant.quality import compare_streams, verdict_line, write_report
    from arvid.runtime.config import check_frames
    from arvid.runtime.devices import resolve_device, resolve_dtype
    from arvid.runtime.prompts import placeholder_prompt_embeds

    check_output_dir(args.out, "--out")  # before both models run: the comparison is not lost at its end
    preset, files = model_preset(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    stream = stream_config(args)
    frames = check_frames(args.frames or preset.default_frames, stream.chunk_frames)
    prompts = args.prompt or ["a red fox running through fresh snow"]
    if len(prompts) != len(args.switch_frames) + 1:
        raise ValueError(f"{len(prompts)} --prompt given, {len(args.switch_frames) + 1} needed for the switch frames")
    if args.clip_model and not args.vae:
        raise ValueError("--clip-model scores decoded frames: give --vae too")
    # A saved variant is read first: a bad file fails before anything else loads or prints.
    saved = load_quantized(args.variant, device=device) if args.variant else None
    vae = vae_source(args, files, preset)
    decoders = video_decoders(vae, device)
    clip = ClipScorer(args.clip_model, device) if args.clip_model else None
    embeds, text_source = prompt_embeddings(args, files, preset, prompts, device, dtype)

    reference = load_model_from_args(args, preset, device=device, dtype=dtype)
    skip = skip_patterns(args)
    skip_kw = {"skip": skip} if skip is not None else {}
    sizes = None
    if args.variant:
        variant = saved
        if variant.cfg != reference.cfg:
            raise ValueError(f"--variant {args.variant} was made for another model config than preset {preset.name}")
        label = f"{variant.arvid_quant.config.scheme} (from {args.variant})"
        sizes = model_size_report(variant, float_dtype=torch.bfloat16)
    elif args.modelopt:
        from arvid.quant.calibrate import calibrate_modelopt, streaming_forward_loop

        calib = [placeholder_prompt_embeds(f"calibration prompt {i}", preset) for i in range(args.calib_prompts)]
        loop = streaming_forward_loop(
            calib, latent_size=(preset.latent_height, preset.latent_width), stream=stream, seed=args.seed + 7
        )
        variant = calibrate_modelopt(copy.deepcopy(reference), args.modelopt, loop, **skip_kw)
        label = f"modelopt {args.modelopt}"
    else:
        config = config_for_scheme(args.scheme, backend=args.quant_backend, compile=args.compile, **skip_kw)
        variant = quantize_(copy.deepcopy(reference), config)
        label = args.scheme + (f" ({args.quant_backend})" if args.quant_backend != "emulate" else "")
        if args.quant_backend == "emulate":
            sizes = model_size_report(variant, float_dtype=torch.bfloat16)

    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(1, frames, preset.model.in_dim, preset.latent_height, preset.latent_width, generator=g)
    print(f"comparing {label} with the {dtype} reference on {device}: {frames} latent frames", file=sys.stderr)

    def progress(row: dict) -> None:
        if not args.quiet:
            extra = f", video PSNR {row['video_psnr_db']:.2f} dB" if "video_psnr_db" in row else ""
            print(f"chunk {row['chunk']}: latent SQNR {row['latent_sqnr_db']:.2f} dB{extra}", file=sys.stderr)

    report = compare_streams(
        reference, variant, noise=noise, prompts=embeds, switch_frames=args.switch_frames, stream=stream,
        seed=args.seed, decoders=decoders, clip=clip, prompt_texts=prompts, drift_window=args.drift_window,
        on_chunk=progress,
    )  # fmt: skip
    report["meta"] = {
        "scheme": label,
        "preset": preset.name,
        "reference": f"{weights_label(args)} in {dtype}",
        "device": str(device),
        "frames": frames,
        "switch_frames": list(args.switch_frames),
        "prompts": prompts,
        "prompt_embeddings": text_source,
        "seed": args.seed,
        "vae": vae or "none (video metrics not measured)",
        "torch": torch.__version__,
    }
    report["sizes"] = sizes
    out = Path(args.out)
    write_report(report, out)
    s = report["summary"]
    print(
        f"{label}: latent SQNR {s['latent_sqnr_db']:.2f} dB pooled (worst chunk {s['latent_sqnr_db_min']:.2f}) "
        f"-> {verdict_line(report)}; wrote {out / 'report.md'}"
    )
    return 0
