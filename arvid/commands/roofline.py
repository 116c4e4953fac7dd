"""``arvid roofline``: FLOPs and bytes per chunk, and the FPS ceiling per precision on a named GPU."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from arvid.runtime.config import PRESETS

from ._checks import check_output_file
from ._names import GPU_NAMES, PRECISION_NAMES


def register(sub) -> None:
    p = sub.add_parser("roofline", help="FLOPs / bytes per chunk and the FPS ceiling on a named GPU")
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--gpu", required=True, help=f"one of {', '.join(GPU_NAMES)}")
    p.add_argument("--precision", default="all", help=f"{', '.join(PRECISION_NAMES)} or all (default: all)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--attention-frames", type=int, help="attention size in latent frames (default: 12)")
    p.add_argument("--chunk-index", type=int, help="a fill-phase chunk (0-based) instead of the steady state")
    p.add_argument(
        "--vae-tflop-per-chunk", type=float, help="override the VAE decoder cost (default: counted from Wan2.1's)"
    )
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(func=cmd_roofline)


def cmd_roofline(args) -> int:
    from arvid.bench.roofline import (
        GPUS,
        PRECISIONS,
        format_roofline,
        format_roofline_summary,
        get_gpu,
        roofline,
        supports,
    )
    from arvid.runtime import StreamConfig
    from arvid.runtime.files import atomic_write

    get_gpu(args.gpu)  # fail early with the list of choices
    check_output_file(args.json, "--json")
    every = [k for k in PRECISIONS if supports(args.gpu, k)]  # "all": those the GPU has
    precisions = every if args.precision == "all" else [args.precision]
    stream = StreamConfig()
    if args.attention_frames is not None:
        stream = stream.replace(attention_frames=args.attention_frames)
    results = [
        roofline(
            args.preset, args.gpu, prec, stream, batch_size=args.batch_size, chunk_index=args.chunk_index,
            vae_tflop_per_chunk=args.vae_tflop_per_chunk,
        )
        for prec in precisions
    ]  # fmt: skip
    print("\n\n".join(format_roofline(r) for r in results))
    if len(results) > 1:
        print("\n" + format_roofline_summary(results))
    if args.json:
        payload = {"schema": "arvid.roofline/1", "gpus": {args.gpu: asdict(GPUS[args.gpu])}, "results": results}
        text = json.dumps(payload, indent=2)
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(text))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
