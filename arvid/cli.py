"""The ``arvid`` command line. It drives every layer, so it sits above them all (never inside runtime/)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    from arvid.runtime import PRESETS

    p.add_argument("--preset", default="tiny", help=f"model preset: {', '.join(PRESETS)} (default: tiny)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--checkpoint", help="DiT weights with Wan names (.safetensors or .pt); default: random weights")
    p.add_argument("--frames", type=int, help="latent frames to generate (a multiple of the chunk)")
    p.add_argument("--switch-frames", type=_int_list, default=(), help="prompt switch frames, e.g. 12,24")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-global-sink", action="store_true", help="re-cache with global_sink = false")


def _stream_config(args):
    from arvid.runtime import StreamConfig

    return StreamConfig(global_sink=not args.no_global_sink)


def cmd_bench(args) -> int:
    from arvid.bench.stream_bench import format_table, run_stream_bench
    from arvid.runtime import backend_names, default_backend
    from arvid.runtime.pipeline import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    backends = args.backends.split(",") if args.backends else ["eager", default_backend(device, dtype)]
    for b in backends:
        if b not in backend_names():
            raise ValueError(f"unknown backend {b!r}; choose from {backend_names()}")
    print(f"benchmarking {', '.join(backends)} on {device} ({args.preset}, {dtype}) ...", file=sys.stderr)
    report = run_stream_bench(
        args.preset,
        device=device,
        dtype=dtype,
        backends=backends,
        frames=args.frames,
        warmup=args.warmup,
        rounds=args.rounds,
        switch_frames=args.switch_frames,
        seed=args.seed,
        checkpoint=args.checkpoint,
        stream=_stream_config(args),
    )
    print(format_table(report))
    if args.json:
        _atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    from safetensors.torch import save_file
    from tqdm import tqdm

    from arvid.runtime import StreamingGenerator, get_preset
    from arvid.runtime.pipeline import load_model, placeholder_prompt_embeds, resolve_device, resolve_dtype

    preset = get_preset(args.preset)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: latents are written as .safetensors (video output comes with the VAE)")
    stream = _stream_config(args)
    frames = args.frames or preset.default_frames
    if frames <= 0 or frames % stream.chunk_frames:
        raise ValueError(f"--frames {frames} is not a positive multiple of the chunk ({stream.chunk_frames})")
    prompts = args.prompt or ["a red fox running through fresh snow"]
    if len(prompts) != len(args.switch_frames) + 1:
        raise ValueError(f"{len(prompts)} --prompt given, {len(args.switch_frames) + 1} needed for the switch frames")
    if args.prompt_embeds:
        from safetensors.torch import load_file

        embeds = list(load_file(args.prompt_embeds)["embeds"].unbind(0))
        embeds = [e[None] for e in embeds]
    else:
        print("no text encoder in this build: prompts get deterministic stand-in embeddings", file=sys.stderr)
        embeds = [placeholder_prompt_embeds(p, preset) for p in prompts]

    model = load_model(preset, device=device, dtype=dtype, checkpoint=args.checkpoint, seed=args.seed)
    gen = StreamingGenerator(
        model, stream, latent_size=(preset.latent_height, preset.latent_width), backend=args.backend
    )
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(1, frames, preset.model.in_dim, preset.latent_height, preset.latent_width, generator=g)
    renoise_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    chunks = []
    t0 = time.perf_counter()
    with tqdm(total=frames, unit="frame", desc="latent frames", disable=args.quiet) as bar:
        for c in gen.stream(noise, embeds, args.switch_frames, generator=renoise_gen):
            chunks.append(c.latents.cpu())
            bar.update(c.latents.shape[1])
    seconds = time.perf_counter() - t0
    latents = torch.cat(chunks, dim=1).contiguous()
    meta = {
        "preset": preset.name,
        "frames": str(frames),
        "seed": str(args.seed),
        "backend": gen.backend.name,
        "switch_frames": ",".join(map(str, args.switch_frames)),
        "prompts": json.dumps(prompts),
        "layout": "[B, F, C, H, W]",
    }
    _atomic_write(out, lambda tmp: save_file({"latents": latents}, str(tmp), metadata=meta))
    print(f"wrote {out}: latents {tuple(latents.shape)} in {seconds:.2f} s ({frames / seconds:.1f} latent frames/s)")
    return 0


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path`` and rename: no partly written output is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arvid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bench", help="eager baseline vs optimised backends, same inputs, one process")
    _common(p)
    p.add_argument("--backends", help="comma-separated, baseline first (default: eager + the device's default)")
    p.add_argument("--warmup", type=int, default=2, help="chunks left out of the statistics (default: 2)")
    p.add_argument("--rounds", type=int, default=1, help="times every backend runs, interleaved (default: 1)")
    p.add_argument("--json", help="also write the full report as JSON here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("generate", help="generate latents (video output arrives with the VAE)")
    _common(p)
    p.add_argument("--prompt", action="append", help="prompt text; repeat once per switch")
    p.add_argument("--prompt-embeds", help=".safetensors with 'embeds' [P, text_len, text_dim], one per prompt")
    p.add_argument("--backend", help="attention backend (default: the fastest that runs here)")
    p.add_argument("--out", required=True, help="output .safetensors (tensor 'latents' [1, F, C, H, W])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: a clear message, not a stack trace
        print(f"arvid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arvid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
