"""``arvid bench``: the eager baseline and optimised backends on the same inputs, in one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import (
    add_common_args,
    add_model_args,
    load_model_from_args,
    model_preset,
    non_negative_int,
    positive_int,
    stream_config,
)


def register(sub) -> None:
    p = sub.add_parser("bench", help="eager baseline vs optimised backends, same inputs, one process")
    add_common_args(p)
    add_model_args(p)
    p.add_argument(
        "--backends",
        help="comma-separated variants, baseline first: BACKEND[+graphs|+stepgraphs][+compile][+fp8kv], "
        "e.g. eager,triton,triton+graphs (default: eager + the device's default backend, + graphs on CUDA)",
    )
    p.add_argument("--warmup", type=non_negative_int, default=2, help="chunks left out of the statistics (default: 2)")
    p.add_argument("--rounds", type=positive_int, default=1, help="times every backend runs, interleaved (default: 1)")
    p.add_argument("--json", help="also write the full report as JSON here")
    p.add_argument(
        "--vae",
        action="store_true",
        help="also decode every chunk with a random-weight streaming Wan VAE (end-to-end FPS)",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from arvid.bench.stream_bench import check_variants, format_table, run_stream_bench
    from arvid.runtime import default_backend
    from arvid.runtime.devices import resolve_device, resolve_dtype
    from arvid.runtime.files import atomic_write

    preset, _ = model_preset(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.backends:
        backends = args.backends.split(",")
    else:
        best = default_backend(device, dtype)
        backends = ["eager", best] + ([f"{best}+graphs"] if device.type == "cuda" else [])
    check_variants(backends)  # a bad or repeated variant fails before any model is built
    print(f"benchmarking {', '.join(backends)} on {device} ({preset.name}, {dtype}) ...", file=sys.stderr)
    model = load_model_from_args(args, preset, device=device, dtype=dtype)
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
        model=model,
        stream=stream_config(args),
        vae=args.vae,
    )
    print(format_table(report))
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
