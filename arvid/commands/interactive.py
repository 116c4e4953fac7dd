"""``arvid interactive``: prompt switches from LongLive's JSONL, or typed live while the video streams.

``--prompts FILE --switch-frames 40,80,120``: one video per JSONL line (``{"prompts": [...]}``),
prompt i+1 from switch frame i on (LongLive's rule: at the first chunk starting at or after it).
``--live``: the first prompt from ``--prompt`` (or the first line typed), then each line read from
standard input switches the prompt at the next chunk boundary; without ``--frames`` / ``--seconds``
the stream is endless (noise drawn per chunk) and stops at the end of input or Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import add_common_args, add_model_args, stream_config
from .generate import add_output_args, add_run_args, latent_frames, pipeline_from_args, run_stream


def register(sub) -> None:
    p = sub.add_parser("interactive", help="prompt switches from a LongLive JSONL file, or typed live")
    add_common_args(p)
    add_model_args(p)
    add_run_args(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompts", help='LongLive JSONL: one {"prompts": [...]} per line, one video per line')
    mode.add_argument(
        "--live",
        action="store_true",
        help="read the next prompt from standard input while generating; without --frames / --seconds "
        "it runs until the input ends or Ctrl-C",
    )
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
    pipe = pipeline_from_args(args, need_vae=True)
    frames = check_frames(pipe.preset.default_frames if frames is None else frames, stream.chunk_frames)
    switches = align_switch_frames(args.switch_frames, stream.chunk_frames, frames)
    if list(switches) != list(args.switch_frames):
        print(f"switch frames {list(args.switch_frames)} take effect at chunk boundaries {switches}", file=sys.stderr)
    out_dir = Path(args.out_dir)
    for i, prompts in enumerate(videos):
        out = out_dir / f"{i:04d}.mp4"
        res = run_stream(pipe, args, prompts, switches, frames=frames, out_video=out, desc=f"video {i}")
        print(f"wrote {out}: {len(prompts)} prompts, {frames} latent frames in {res.seconds:.2f} s")
    return 0


def _live(args, stream, frames) -> int:
    """Until standard input ends (EOF, after its last prompt took effect) or Ctrl-C, unless --frames /
    --seconds bound it: the noise is drawn chunk by chunk, so nothing grows with the length."""
    from arvid.pipeline import save_latents
    from arvid.runtime.config import check_frames
    from arvid.runtime.interactive import LivePromptReader

    from ._common import resolved_config

    out = Path(args.out or "live.mp4")
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {out}: live mode writes an .mp4")
    pipe = pipeline_from_args(args, need_vae=True)
    if frames is not None:
        frames = check_frames(frames, stream.chunk_frames)

    def encode(text: str):
        return pipe.encode(text)[0]

    reader = LivePromptReader(encode)
    first = args.prompt
    if first is None:
        print("type the first prompt (then one line per prompt switch):", file=sys.stderr)
        first = sys.stdin.readline().strip()
        if not first:
            raise ValueError("no starting prompt: standard input is empty (or give --prompt)")
    reader.start()
    until = "the end of input (Ctrl-D) or Ctrl-C" if frames is None else f"{frames} latent frames"
    print(f"generating until {until}; type a new prompt and press Enter to switch at the next chunk", file=sys.stderr)

    def stop() -> bool:  # EOF, and every prompt typed before it has taken effect
        return reader.closed.is_set() and reader.queue.empty()

    res = run_stream(
        pipe, args, [encode(first)], frames=frames, out_video=out, prompt_source=reader,
        stop=stop if frames is None else None,  # a given length runs to its end, input or not
    )  # fmt: skip
    for frame, text in reader.switches:
        print(f"  switched at latent frame {frame}: {text}", file=sys.stderr)
    if args.latents:
        meta = {
            "preset": pipe.preset.name,
            "frames": str(res.num_frames),
            "seed": str(args.seed),
            "switches": repr([(0, first), *reader.switches]),
            "config": json.dumps(resolved_config(args)),
            "layout": "[B, F, C, H, W]",
        }
        save_latents(Path(args.latents), res.latents, meta)
    print(f"wrote {out}: {res.num_frames} latent frames, {len(reader.switches)} live switches in {res.seconds:.2f} s")
    return 0
