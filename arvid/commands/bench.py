"""``arvid bench``: the eager baseline and optimised backends on the same inputs, in one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import add_common_args, add_model_args, stream_config


def register(sub) -> None:
    p = sub.add_parser("bench", help="eager baseline vs optimised backends, same inputs, one process")
    add_common_args(p)
    add_model_args(p)
    p.add_argument(
        "--backends",
        help="comma-separated variants, baseline first: BACKEND[+graphs|+stepgraphs][+compile][+fp8kv], "
        "e.g. eager,triton,triton+graphs (default: eager + the device's default backend, + graphs on CUDA)",
    )
    p.add_argument("--warmup", type=int, default=2, help="chunks left out of the statistics (default: 2)")
    p.add_argument("--rounds", type=int, default=1, help="times every backend runs, interleaved (default: 1)")
    p.add_argument("--json", help="also write the full report as JSON here")
    p.add_argument(
        "--vae",
        action="store_true",
        help="also decode every chunk with a random-weight streaming Wan VAE (end-to-end FPS)",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from arvid.bench.stream_bench import format_table, parse_variant, run_stream_bench
    from arvid.runtime import backend_names, default_backend
    from arvid.runtime.devices import resolve_device, resolve_dtype
    from arvid.runtime.files import atomic_write

    # run_stream_bench loads the DiT itself from a preset and --checkpoint (through load_dit); the
    # other weight flags need it to take a built model.
    unsupported = [f for f, v in (("--model", args.model), ("--longlive-ckpt", args.longlive_ckpt),
                                  ("--lora", args.lora)) if v]  # fmt: skip
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not supported by `arvid bench` yet; give --checkpoint")
    preset = args.preset or "tiny"
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.backends:
        backends = args.backends.split(",")
    else:
        best = default_backend(device, dtype)
        backends = ["eager", best] + ([f"{best}+graphs"] if device.type == "cuda" else [])
    for spec in backends:
        name, _ = parse_variant(spec)
        if name not in backend_names():
            raise ValueError(f"unknown backend {name!r} in {spec!r}; choose from {backend_names()}")
    print(f"benchmarking {', '.join(backends)} on {device} ({preset}, {dtype}) ...", file=sys.stderr)
    report = run_stream_bench(
        preset,
        device=device,
        dtype=dtype,
        backends=backends,
        frames=args.frames,
        warmup=args.warmup,
        rounds=args.rounds,
        switch_frames=args.switch_frames,
        seed=args.seed,
        checkpoint=args.checkpoint,
        stream=stream_config(args),
        vae=args.vae,
    )
    print(format_table(report))
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
