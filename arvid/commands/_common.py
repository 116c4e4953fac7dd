"""Arguments and helpers shared by the ``arvid`` subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_common_args(p: argparse.ArgumentParser) -> None:
    from arvid.runtime import PRESETS

    p.add_argument(
        "--preset",
        default="tiny",
        help=f"model preset: {', '.join(PRESETS)} (default: tiny; with --model: wan2.1-t2v-1.3b)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--checkpoint", help="DiT weights with Wan names (.safetensors or .pt); default: random weights")
    p.add_argument("--frames", type=int, help="latent frames to generate (a multiple of the chunk)")
    p.add_argument("--switch-frames", type=int_list, default=(), help="prompt switch frames, e.g. 12,24")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-global-sink", action="store_true", help="re-cache with global_sink = false")


def stream_config(args):
    from arvid.runtime import StreamConfig

    return StreamConfig(global_sink=not args.no_global_sink)


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path`` and rename: no partly written output is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
