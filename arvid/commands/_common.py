"""Arguments and helpers shared by the ``arvid`` subcommands."""

from __future__ import annotations

import argparse
import dataclasses

from ._names import PRESET_NAMES


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (0 is not "not given": leave the flag out for the default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="tiny",
        help=f"model preset: {', '.join(PRESET_NAMES)} (default: tiny; with --model: wan2.1-t2v-1.3b)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--frames", type=positive_int, help="latent frames to generate (a multiple of the chunk)")
    p.add_argument("--switch-frames", type=int_list, default=(), help="prompt switch frames, e.g. 12,24")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-global-sink", action="store_true", help="re-cache with global_sink = false")


def stream_config(args):
    from arvid.runtime import StreamConfig

    return StreamConfig(global_sink=not args.no_global_sink)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The DiT's weights, the same flags in every command that loads the model (see ``load_model_from_args``)."""
    # --preset defaults to tiny without --model and to Wan2.1's 832x480 geometry with it.
    p.set_defaults(preset=None)
    g = p.add_argument_group("weights")
    g.add_argument("--model", help="Wan2.1-T2V model directory (original or diffusers layout)")
    g.add_argument(
        "--checkpoint",
        help="DiT weights, Wan or diffusers names (.safetensors or .pt): replace those of --model; "
        "default: random weights",
    )
    g.add_argument("--longlive-ckpt", help="LongLive longlive_base.pt: replaces the DiT weights of --model")
    g.add_argument(
        "--longlive-weights",
        default="auto",
        choices=["auto", "generator", "generator_ema", "model"],
        help="entry of --longlive-ckpt to load; auto = generator if present (LongLive's use_ema: false), "
        "else generator_ema, else model",
    )
    g.add_argument("--lora", help="peft LoRA (LongLive lora.pt) merged into the DiT weights at load")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: from the file, else alpha = rank)")
    g.add_argument("--lora-rank", type=int, help="expected LoRA rank (an error if the file differs)")


def model_preset(args):
    """``(preset, model files or None)`` for ``--preset`` / ``--model``: the preset's geometry with, under
    ``--model``, the model directory's DiT config."""
    from arvid.runtime import get_preset
    from arvid.runtime.checkpoint import model_config_from_json
    from arvid.runtime.loaders import find_model_files

    files = find_model_files(args.model) if args.model else None
    preset = get_preset(args.preset or ("wan2.1-t2v-1.3b" if files else "tiny"))
    if files is not None:
        preset = dataclasses.replace(preset, model=model_config_from_json(files.dit_config))
    return preset, files


def load_model_from_args(args, preset, *, device, dtype):
    """The DiT for the :func:`add_model_args` flags: :func:`~arvid.runtime.loaders.load_dit`, the only loader."""
    from arvid.runtime.loaders import load_dit

    return load_dit(
        model_dir=args.model,
        config=preset.model,
        checkpoint=args.checkpoint,
        longlive_ckpt=args.longlive_ckpt,
        longlive_weights=args.longlive_weights,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        lora_rank=args.lora_rank,
        device=device,
        dtype=dtype,
        seed=args.seed,
    )


def weights_label(args) -> str:
    """Where the DiT weights came from, for reports and metadata."""
    parts = [args.model, args.checkpoint, args.longlive_ckpt]
    label = next((str(x) for x in reversed(parts) if x), f"random weights, seed {args.seed}")
    return label + (f" + LoRA {args.lora}" if args.lora else "")
