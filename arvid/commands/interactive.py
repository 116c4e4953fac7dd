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

from ._checks import check_codec, check_output_dir, check_output_file, check_seconds, report_moved_switches
from ._common import add_common_args, add_model_args, model_preset, stream_config
from .generate import (
    add_output_args,
    add_run_args,
    check_run_args,
    latent_frames,
    pipeline_from_args,
    run_stream,
    save_latents_prefix,
    video_metadata,
)

ECHO_CHARS = 80  # a live prompt is echoed up to this many characters (a pasted 2 MB prompt is not)


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
    p.add_argument(
        "--out-dir",
        default="videos",
        help="--prompts: folder for NNNN.mp4, one per line, and prompts.json mapping each to its prompts "
        "(default: videos)",
    )
    add_output_args(p)
    p.set_defaults(func=cmd_interactive)


def short(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` for an echo: whole if short, else its first ``limit`` characters and its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def cmd_interactive(args) -> int:
    from arvid.runtime.config import check_frames
    from arvid.runtime.prompts import align_switch_frames, read_prompt_jsonl

    from ._common import resolved_config

    # Everything that can be checked is checked here, before any weights load.
    check_seconds(args.seconds)
    check_run_args(args)
    check_output_dir(args.png_dir, "--png-dir")
    stream = stream_config(args)
    frames = latent_frames(args, stream)
    if args.live:
        if args.switch_frames:
            raise ValueError("--switch-frames is for --prompts; with --live a new line switches the prompt")
        return _live(args, stream, frames)
    if args.latents:
        raise ValueError("--latents is for --live; with --prompts the latents are not saved")
    if args.out:
        raise ValueError("--out is for --live; with --prompts the videos go to --out-dir")
    out_dir = Path(args.out_dir)
    check_output_dir(out_dir, "--out-dir")
    check_codec(args)
    videos = read_prompt_jsonl(args.prompts, num_switches=len(args.switch_frames))
    preset, _ = model_preset(args)
    frames = check_frames(preset.default_frames if frames is None else frames, stream.chunk_frames)
    switches = align_switch_frames(args.switch_frames, stream.chunk_frames, frames)
    report_moved_switches(args.switch_frames, switches)

    pipe = pipeline_from_args(args, need_vae=True)
    config = json.dumps(resolved_config(args))
    manifest: dict[str, dict] = {}
    for i, prompts in enumerate(videos):
        name = f"{i:04d}.mp4"
        out = out_dir / name
        entry = {
            "prompts": prompts,
            "switch_frames": switches,
            "switch_frames_requested": list(args.switch_frames),
            "seed": args.seed,
            "latent_frames": frames,
            "fps": args.fps,
            "backend": pipe.backend_name,
        }
        try:
            res = run_stream(
                pipe, args, prompts, switches, frames=frames, out_video=out, desc=f"video {i}",
                png_dir=Path(args.png_dir) / f"{i:04d}" if args.png_dir else None,  # one folder per video
                metadata={**video_metadata(prompts, args, pipe.backend_name), "config": config},
            )  # fmt: skip
        except KeyboardInterrupt:
            if out.exists():  # the playable prefix Pipeline.write kept
                manifest[name] = {**entry, "complete": False}
            _write_manifest(out_dir, manifest)
            raise
        manifest[name] = {**entry, "complete": True}
        _write_manifest(out_dir, manifest)
        print(f"wrote {out}: {len(prompts)} prompts, {frames} latent frames in {res.seconds:.2f} s")
    print(f"wrote {out_dir / 'prompts.json'}: prompts, switch frames and seed of each video")
    return 0


def _write_manifest(out_dir: Path, manifest: dict[str, dict]) -> None:
    """``prompts.json`` beside the videos: ``NNNN.mp4`` -> its prompts, switch frames, seed (the videos
    written so far, so an interrupted run's manifest matches its folder)."""
    from arvid.runtime.files import atomic_write

    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    atomic_write(out_dir / "prompts.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _stdin_open() -> bool:
    """Standard input can be read (it is ``None`` when the process started with it closed)."""
    return sys.stdin is not None and not sys.stdin.closed


def _live(args, stream, frames) -> int:
    """Until standard input ends (EOF, after its last prompt took effect) or Ctrl-C, unless --frames /
    --seconds bound it: the noise is drawn chunk by chunk, so nothing grows with the length."""
    import io

    from arvid.pipeline import save_latents
    from arvid.runtime.config import check_frames
    from arvid.runtime.interactive import LivePromptReader

    from ._common import resolved_config

    out = Path(args.out or "live.mp4")
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {out}: live mode writes an .mp4")
    if args.latents and Path(args.latents).suffix != ".safetensors":
        raise ValueError(f"--latents {args.latents}: latents are written as .safetensors")
    check_output_file(out, "--out")
    check_output_file(args.latents, "--latents")
    check_codec(args)
    stdin_open = _stdin_open()
    if args.prompt is None and not stdin_open:
        raise ValueError("--live: standard input is closed, so no prompt can be read; give --prompt")
    if frames is not None:
        frames = check_frames(frames, stream.chunk_frames)
    pipe = pipeline_from_args(args, need_vae=True)

    def encode(text: str):
        return pipe.encode(text)[0]

    if stdin_open:
        reader = LivePromptReader(encode)
    else:  # nothing to read: generate with the one prompt (the reader thread would fail on None)
        reader = LivePromptReader(encode, lines=io.StringIO(""))
        print("standard input is closed: generating with --prompt only, no live switches", file=sys.stderr)
    first = args.prompt
    if first is None:
        print("type the first prompt (then one line per prompt switch):", file=sys.stderr)
        first = sys.stdin.readline().strip()
        if not first:
            raise ValueError("no starting prompt: standard input is empty (or give --prompt)")
    reader.start()
    until = "the end of input (Ctrl-D) or Ctrl-C" if frames is None else f"{frames} latent frames"
    if stdin_open:
        print(
            f"generating until {until}; type a new prompt and press Enter to switch at the next chunk", file=sys.stderr
        )

    def stop() -> bool:  # EOF, and every prompt typed before it has taken effect
        return reader.closed.is_set() and reader.queue.empty()

    # the run's settings as generate records them; frames / switches are filled in at the end
    meta = {**pipe.metadata([first], (), seed=args.seed, num_frames=0), "config": json.dumps(resolved_config(args))}
    latents_paths = [Path(args.latents)] if args.latents else []

    def on_interrupt(prefix):
        _echo_switches(reader)
        switches = repr([(0, first), *reader.switches])
        n = prefix.shape[1] if prefix is not None else 0
        save_latents_prefix(latents_paths, prefix, {**meta, "switches": switches}, frames if frames is not None else n)

    res = run_stream(
        pipe, args, [encode(first)], frames=frames, out_video=out, prompt_source=reader,
        stop=stop if frames is None else None,  # a given length runs to its end, input or not
        metadata={**video_metadata(first, args, pipe.backend_name), "config": meta["config"]},
        on_interrupt=on_interrupt,
    )  # fmt: skip
    _echo_switches(reader)
    if args.latents:
        meta.update(frames=str(res.num_frames), switches=repr([(0, first), *reader.switches]))
        save_latents(Path(args.latents), res.latents, meta)
    print(f"wrote {out}: {res.num_frames} latent frames, {len(reader.switches)} live switches in {res.seconds:.2f} s")
    return 0


def _echo_switches(reader) -> None:
    for frame, text in reader.switches:
        print(f"  switched at latent frame {frame}: {short(text)}", file=sys.stderr)
