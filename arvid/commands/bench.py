"""``arvid bench``: the eager baseline and optimised or quantized variants on the same inputs, in one process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._checks import check_output_file
from ._common import (
    add_common_args,
    add_model_args,
    add_parallel_args,
    check_sequence_parallel_options,
    load_model_from_args,
    model_preset,
    non_negative_int,
    positive_int,
    sequence_parallel_from_args,
    stream_config,
)


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time the eager baseline and other variants on the same inputs (FPS, latency spread, memory)",
        description="Time the eager baseline and other variants on the same model and inputs, in one process. "
        "Every variant runs --rounds times, interleaved; FPS and speed-ups come from the median chunk latency. "
        "With --sequence-parallel N (under torchrun) every rank runs them and a chunk's latency is the whole job's.",
    )
    add_common_args(p)
    add_model_args(p)
    add_parallel_args(p)
    p.add_argument(
        "--backend",
        dest="backends",
        metavar="VARIANTS",
        help="comma-separated variants, baseline first: BACKEND[+graphs|+stepgraphs][+compile][+fp8kv]"
        "[+int8|+int8wo|+fp8] or BACKEND@DIR (a model saved by `arvid quantize`), e.g. eager,sdpa,sdpa+int8 "
        "(default: eager + the device's default backend, + graphs on CUDA)",
    )
    p.add_argument("--backends", dest="backends", help=argparse.SUPPRESS)  # deprecated spelling of --backend
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="DIR",
        help="also time a quantized model saved by `arvid quantize` in DIR (on the default backend); repeatable",
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="videos generated together (default: 1)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="chunks left out of the statistics (default: 2)")
    p.add_argument("--rounds", type=positive_int, default=3, help="times every variant runs, interleaved (default: 3)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads for the timed work (default: 1, the least sensitive to other processes)",
    )
    p.add_argument("--json", help="also write the full report as JSON here")
    p.add_argument(
        "--vae",
        action="store_true",
        help="also decode every chunk with a random-weight streaming Wan VAE (end-to-end FPS)",
    )
    p.add_argument("--yes", action="store_true", help="run even when the estimate says it takes over 10 minutes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import torch

    from arvid.bench.estimate import (
        check_estimate,
        check_host_memory,
        default_frames,
        estimate_seconds,
        measured_matmul_flops,
        vae_chunk_seconds,
    )
    from arvid.bench.report import format_table
    from arvid.bench.stream_bench import run_stream_bench, torch_threads
    from arvid.bench.variants import check_variants, split_variant
    from arvid.runtime import GeneratorOptions, default_backend
    from arvid.runtime.devices import resolve_device, resolve_dtype
    from arvid.runtime.files import atomic_write

    preset, _ = model_preset(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    stream = stream_config(args)
    best = default_backend(device, dtype)
    if args.backends:
        backends = args.backends.split(",")
    else:
        graphs = device.type == "cuda" and args.sequence_parallel == 1
        backends = ["eager", best] + ([f"{best}+graphs"] if graphs else [])
    backends += [f"{best}@{d}" for d in args.variant]
    check_variants(backends, device)  # a bad or repeated variant fails before any model is built
    check_output_file(args.json, "--json")  # a run is never lost at its end to an unwritable path
    if args.sequence_parallel > 1:
        for spec in backends:
            opts = GeneratorOptions.from_variant(split_variant(spec)[0])
            check_sequence_parallel_options(opts, f"variant {spec!r}: ")
        if args.vae:
            raise ValueError("--vae with --sequence-parallel: the VAE decode is not split over ranks yet")
    sp = sequence_parallel_from_args(args, preset, stream)  # checks N before any model loads
    device = resolve_device(args.device)  # under sequence parallel on CUDA: this rank's GPU
    rank0 = sp is None or sp.is_output_rank
    with torch_threads(args.threads, device):  # measured on the threads the timed work will use
        rate = measured_matmul_flops(device, dtype)
        vae_s = None
        if args.vae:
            vae_s = vae_chunk_seconds(
                preset, device, dtype, chunk_frames=stream.chunk_frames, batch_size=args.batch_size
            )
    if sp is not None:  # rank 0's rate everywhere, so every rank takes the same --yes decision
        rate = float(sp.broadcast(torch.tensor([rate], dtype=torch.float64, device=device)))
    estimate = estimate_seconds(
        preset, device=device, dtype=dtype, variants=len(backends), frames=args.frames, warmup=args.warmup,
        rounds=args.rounds, stream=stream, batch_size=args.batch_size, vae=args.vae, flops_per_s=rate,
        vae_seconds_per_chunk=vae_s,
    )  # fmt: skip
    check_estimate(estimate, args.yes)
    check_host_memory(
        preset, frames=args.frames or default_frames(preset, stream, args.warmup), batch_size=args.batch_size,
        variants=len(backends),
    )  # fmt: skip
    if rank0:
        ranks = f" x {sp.size} ranks (sequence parallel)" if sp is not None else ""
        print(
            f"benchmarking {', '.join(backends)} on {device}{ranks} ({preset.name}, {dtype}, {args.rounds} round(s)); "
            f"{'about' if args.vae else 'at least'} {estimate['seconds']:,.1f} s of work by the estimate "
            f"({'DiT roofline + timed VAE convolutions' if args.vae else 'roofline'}) ...",
            file=sys.stderr,
        )
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
        stream=stream,
        batch_size=args.batch_size,
        vae=args.vae,
        threads=args.threads,
        progress=not args.quiet and rank0,
        sequence_parallel=sp,
    )
    if sp is not None:
        sp.close()
        if not rank0:  # every rank's p50 is in rank 0's report; the others print only their own
            mine = ", ".join(
                f"{v['backend']} {v['sequence_parallel']['rank_chunk_ms_p50'][sp.rank]:.2f}" for v in report["variants"]
            )
            print(f"arvid bench: rank {sp.rank}: own chunk p50 ms: {mine}", file=sys.stderr)
            return 0
    report["estimate"] = estimate
    print(format_table(report))
    for w in report["warnings"]:
        print(f"arvid bench: WARNING: {w}", file=sys.stderr)
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
