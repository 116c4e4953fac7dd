"""``arvid interactive``: prompt switches from LongLive's JSONL, or typed live while the video streams.

``--prompts FILE --switch-frames 40,80,120``: one video per JSONL line (``{"prompts": [...]}``),
prompt i+1 from switch frame i on (LongLive's rule: at the first chunk starting at or after it).
``--live``: the first prompt from ``--prompt`` (or the first line typed), then each line read from
standard input switches the prompt at the next chunk boundary.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_common_args, add_model_args, stream_config
from .generate import (
    add_output_args,
    add_run_args,
    latent_frames,
    load_components,
    noise_and_generator,
    prompt_embeddings,
    run_stream,
    save_latents,
)


def register(sub) -> None:
    p = sub.add_parser("interactive", help="prompt switches from a LongLive JSONL file, or typed live")
    add_common_args(p)
    add_model_args(p)
    add_run_args(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompts", help='LongLive JSONL: one {"prompts": [...]} per line, one video per line')
    mode.add_argument("--live", action="store_true", help="read the next prompt from standard input while generating")
    p.add_argument("--prompt", help="--live: the starting prompt (default: the first line read)")
    p.add_argument("--seconds", type=float, help="video length in seconds (instead of --frames)")
    p.add_argument("--out", help="--live: the output .mp4 (default: live.mp4)")
    p.add_argument("--out-dir", default="videos", help="--prompts: folder for NNNN.mp4, one per line (default: videos)")
    add_output_args(p)
    p.set_defaults(func=cmd_interactive)


def cmd_interactive(args) -> int:
    from arvid.runtime.config import check_frames
    from arvid.runtime.prompts import align_switch_frames, read_prompt_jsonl

    stream = stream_config(args)
    frames = latent_frames(args, stream)
    if args.live:
        if args.switch_frames:
            raise ValueError("--switch-frames is for --prompts; with --live a new line switches the prompt")
        return _live(args, stream, frames)
    if args.latents:
        raise ValueError("--latents is for --live; with --prompts the latents are not saved")
    videos = read_prompt_jsonl(args.prompts, num_switches=len(args.switch_frames))
    comp = load_components(args, need_vae=True)
    frames = check_frames(comp.preset.default_frames if frames is None else frames, stream.chunk_frames)
    switches = align_switch_frames(args.switch_frames, stream.chunk_frames, frames)
    if list(switches) != list(args.switch_frames):
        print(f"switch frames {list(args.switch_frames)} take effect at chunk boundaries {switches}", file=sys.stderr)
    gen = _generator(comp, stream, args)
    out_dir = Path(args.out_dir)
    for i, prompts in enumerate(videos):
        out = out_dir / f"{i:04d}.mp4"
        noise, renoise_gen = noise_and_generator(comp, frames, args.seed)
        kwargs = dict(
            noise=noise, prompts=prompt_embeddings(comp, prompts), switch_frames=switches, generator=renoise_gen
        )
        _, seconds = run_stream(comp, gen, kwargs, frames=frames, out_video=out, args=args, desc=f"video {i}")
        print(f"wrote {out}: {len(prompts)} prompts, {frames} latent frames in {seconds:.2f} s")
    return 0


def _live(args, stream, frames) -> int:
    from arvid.runtime.config import check_frames
    from arvid.runtime.interactive import LivePromptReader

    out = Path(args.out or "live.mp4")
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {out}: live mode writes an .mp4")
    comp = load_components(args, need_vae=True)
    frames = check_frames(comp.preset.default_frames if frames is None else frames, stream.chunk_frames)

    def encode(text: str):
        return prompt_embeddings(comp, [text])[0]

    reader = LivePromptReader(encode)
    first = args.prompt
    if first is None:
        print("type the first prompt (then one line per prompt switch):", file=sys.stderr)
        first = sys.stdin.readline().strip()
        if not first:
            raise ValueError("no starting prompt: standard input is empty (or give --prompt)")
    reader.start()
    print("generating; type a new prompt and press Enter to switch at the next chunk", file=sys.stderr)
    gen = _generator(comp, stream, args)
    noise, renoise_gen = noise_and_generator(comp, frames, args.seed)
    kwargs = dict(noise=noise, prompts=encode(first), prompt_source=reader, generator=renoise_gen)
    latents, seconds = run_stream(comp, gen, kwargs, frames=frames, out_video=out, args=args)
    for frame, text in reader.switches:
        print(f"  switched at latent frame {frame}: {text}", file=sys.stderr)
    if args.latents:
        meta = {
            "preset": comp.preset.name,
            "frames": str(frames),
            "seed": str(args.seed),
            "switches": repr([(0, first), *reader.switches]),
            "layout": "[B, F, C, H, W]",
        }
        save_latents(Path(args.latents), latents, meta)
    print(f"wrote {out}: {frames} latent frames, {len(reader.switches)} live switches in {seconds:.2f} s")
    return 0


def _generator(comp, stream, args):
    from .generate import make_generator

    return make_generator(comp, stream, args)
