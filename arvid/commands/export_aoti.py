"""``arvid export aoti``: AOTInductor ``.pt2`` packages of the chunk step plus ``export.json``.

``register_aoti(subparsers)`` adds the ``aoti`` subcommand to the ``arvid export`` group.
"""

from __future__ import annotations

import time
from pathlib import Path

from arvid.runtime.config import DIT_GRAPH_KINDS

from ._checks import check_output_dir
from ._common import add_common_args, add_model_args, int_list, load_model_from_args, model_preset, stream_config


def register_aoti(sub) -> None:
    p = sub.add_parser("aoti", help="AOTInductor .pt2 packages of the step / chunk / re-cache graphs + export.json")
    add_common_args(p)
    add_model_args(p)
    p.add_argument("--graph", required=True, choices=DIT_GRAPH_KINDS, help="which graph to export")
    p.add_argument(
        "--recache-frames",
        type=int_list,
        help="with --graph recache: the span lengths to export, e.g. 9,12 (default: every one the stream can need)",
    )
    p.add_argument("--rope-positions", type=int, help="RoPE table rows baked in (default: the model's, 1024)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--force", action="store_true", help="rebuild even when the directory's manifest key matches")
    p.add_argument("--out", required=True, type=Path, help="output directory (packages + export.json)")
    p.add_argument(
        "--example-inputs",
        type=Path,
        help="also write an arvid-stream --inputs file (.safetensors): seeded noise, re-noise and the text K/V "
        "of random prompt embeddings, for --frames (default: the preset's) and --switch-frames",
    )
    p.set_defaults(func=cmd_export_aoti)


def cmd_export_aoti(args) -> int:
    from arvid.export.aoti import export_aoti
    from arvid.runtime.devices import resolve_device, resolve_dtype

    if args.recache_frames and args.graph != "recache":
        raise ValueError("--recache-frames only applies to --graph recache")
    check_output_dir(args.out, "--out")
    device = resolve_device(args.device)
    p, _ = model_preset(args)
    model = load_model_from_args(args, p, device=device, dtype=resolve_dtype(args.dtype, device))
    t0 = time.perf_counter()
    m = export_aoti(
        model, graph=args.graph, stream=stream_config(args), latent_size=(p.latent_height, p.latent_width),
        out_dir=args.out, batch_size=args.batch_size, rope_positions=args.rope_positions,
        recache_frames=args.recache_frames, reuse=not args.force, log=print,
    )  # fmt: skip
    took = time.perf_counter() - t0
    files = ", ".join([pk["file"] for pk in m["packages"]] + ([m["weights_file"]] if "weights_file" in m else []))
    print(f"{args.out}: {files} + export.json ({m['device']['device']}, key {m['key']}; {took:.1f} s)")
    if "peak_rss_bytes" in m:  # a reused export measured nothing now
        print(f"  peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB (the exporting process)")
    if args.example_inputs:
        write_example_inputs(args, model, p)
    return 0


def write_example_inputs(args, model, p) -> None:
    import torch

    from arvid.export.aoti import stream_inputs
    from arvid.runtime.files import write_safetensors

    stream = stream_config(args)
    frames = args.frames or p.default_frames
    if frames <= 0 or frames % stream.chunk_frames:
        raise ValueError(f"--frames {frames} is not a positive multiple of the chunk ({stream.chunk_frames})")
    g = torch.Generator().manual_seed(args.seed)
    c, cfg = model.cfg, stream
    noise = torch.randn(args.batch_size, frames, c.in_dim, p.latent_height, p.latent_width, generator=g)
    chunks, steps = frames // cfg.chunk_frames, len(cfg.denoising_steps)
    renoise = torch.randn(chunks, steps - 1, args.batch_size, cfg.chunk_frames, *noise.shape[2:], generator=g)
    embeds = [
        torch.randn(args.batch_size, c.text_len, c.text_dim, generator=g) for _ in range(len(args.switch_frames) + 1)
    ]
    tensors = stream_inputs(model, embeds, stream=cfg, noise=noise, renoise=renoise,
                            switch_frames=args.switch_frames)  # fmt: skip
    write_safetensors(args.example_inputs, {k: v.contiguous() for k, v in tensors.items()})
    switches = list(args.switch_frames)
    print(f"{args.example_inputs}: {frames} latent frames, {len(embeds)} prompt(s), switches {switches}")
