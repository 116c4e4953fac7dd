"""``arvid generate``: stream a video (.mp4) or its latents (.safetensors) for a prompt schedule.

Weights: ``--model DIR`` (Wan2.1, original or diffusers layout: DiT, umT5 text encoder, VAE), with
LongLive's ``--longlive-ckpt longlive_base.pt`` and ``--lora lora.pt`` on top. Without ``--model``
the ``tiny`` preset runs on random weights end to end (random DiT, tiny random umT5 with a byte
tokenizer, tiny random VAE), so ``arvid generate --out video.mp4`` needs no files at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a command runs: `arvid --help` must not pay for it
    import torch

from ._checks import check_codec, check_output_dir, check_output_file, check_seconds, report_moved_switches
from ._common import (
    add_common_args,
    add_model_args,
    add_parallel_args,
    check_sequence_parallel_options,
    model_preset,
    positive_int,
    sequence_parallel_from_args,
    stream_config,
    weight_source,
)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video (.mp4) or latents (.safetensors)")
    add_common_args(p)
    add_model_args(p)
    add_run_args(p)
    p.add_argument("--prompt", action="append", help="prompt text; repeat once per switch")
    p.add_argument(
        "--prompt-file",
        help="text file, one prompt per line: prompt i+1 from switch frame i (LongLive's data_path); "
        "--prompt wins over it",
    )
    p.add_argument("--prompt-embeds", help=".safetensors with 'embeds' [P, text_len, text_dim], one per prompt")
    p.add_argument("--seconds", type=float, help="video length in seconds (instead of --frames)")
    p.add_argument("--out", required=True, help="output: .mp4 (video) or .safetensors (latents [1, F, C, H, W])")
    add_output_args(p)
    add_parallel_args(p)
    p.set_defaults(func=cmd_generate)


# -- arguments shared with `arvid interactive` -----------------------------------------------------
def add_run_args(p) -> None:
    """Text-encoder placement and the generator's options (backend, graphs, compile, FP8 KV cache)."""
    p.add_argument(
        "--text-encoder-device",
        default="device",
        choices=["device", "cpu", "offload"],
        help="umT5 placement: on --device, on the CPU, or offloaded to the CPU between prompts",
    )
    p.add_argument(
        "--backend",
        help="attention backend or engine, or a whole variant such as triton+graphs+fp8kv "
        "(default: the fastest attention backend that runs here)",
    )
    p.add_argument("--graphs", action="store_true", help="replay each chunk as a captured CUDA graph (CUDA only)")
    p.add_argument("--compile", action="store_true", help="regional torch.compile of the blocks (slow first chunk)")
    p.add_argument("--fp8kv", action="store_true", help="store the KV cache as FP8 e4m3 (half the memory)")


def generator_options(args):
    """``--backend VARIANT`` plus ``--graphs`` / ``--compile`` / ``--fp8kv``: the same words as a variant
    string, parsed once per run (kept on ``args``; every later check and the load reuse it)."""
    import dataclasses

    from arvid.runtime import GeneratorOptions

    cached = getattr(args, "_generator_options", None)
    if cached is not None:
        return cached
    opts = GeneratorOptions.from_variant(args.backend) if args.backend else GeneratorOptions()
    opts = dataclasses.replace(
        opts, graphs=opts.graphs or args.graphs, compile=opts.compile or args.compile, fp8kv=opts.fp8kv or args.fp8kv
    )
    args._generator_options = opts
    return opts


def check_run_args(args) -> None:
    """Before any load: the device exists (CUDA asked for without CUDA is an error), the
    ``--backend`` variant names a known backend or engine with known options, and CUDA graphs are
    asked for only on a CUDA device (the generator checks that too, but only once the DiT is loaded)."""
    from arvid.runtime.devices import resolve_device

    device = resolve_device(args.device)
    opts = generator_options(args)
    if (opts.graphs or opts.stepgraphs) and device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the model is on {device}")


def add_output_args(p) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--fps", type=positive_int, default=16, help="video frames per second (default: 16, as Wan)")
    g.add_argument("--codec", help="video encoder (default: libx264, else the first available H.264 / MPEG-4)")
    g.add_argument("--latents", help="also save the latents to this .safetensors")
    g.add_argument("--png-dir", help="also save every video frame as a PNG in this folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


# -- loading: the Pipeline (arvid/pipeline.py) does it; the command line only maps its flags ---------
def pipeline_from_args(args, *, need_vae: bool, need_text: bool = True, sequence_parallel=None):
    """The :class:`~arvid.pipeline.Pipeline` for the command-line arguments (``_common.add_model_args``,
    :func:`add_run_args`, the stream flags), on the run's one :func:`~._common.weight_source`."""
    from arvid.pipeline import Pipeline

    return Pipeline.from_weights(
        weight_source(args),
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        backend=generator_options(args),
        text_encoder_device=args.text_encoder_device,
        stream_config=stream_config(args),
        need_vae=need_vae,
        need_text=need_text,
        sequence_parallel=sequence_parallel,
    )


def latent_frames(args, stream) -> int | None:
    """--frames or --seconds as latent frames (None: the preset's default)."""
    from arvid.runtime.vae import latent_frames_for_seconds

    if getattr(args, "seconds", None) is not None:
        if args.frames is not None:
            raise ValueError("give --frames (latent frames) or --seconds, not both")
        return latent_frames_for_seconds(args.seconds, args.fps, stream.chunk_frames)
    return args.frames


# -- the streaming loop: Pipeline.write with the output flags ------------------------------------
def run_stream(pipe, args, prompts, switch_frames=(), *, frames: int | None, out_video: Path | None, **kwargs):
    """:meth:`Pipeline.write <arvid.pipeline.Pipeline.write>` with ``--fps``, ``--codec``, ``--png-dir``,
    ``--quiet`` and ``--seed``; the latents are kept when ``--latents`` (or no video) asks for them."""
    kwargs.setdefault("png_dir", args.png_dir)
    return pipe.write(
        out_video, prompts, switch_frames, num_frames=frames, seed=args.seed, fps=args.fps, codec=args.codec,
        keep_latents=out_video is None or bool(args.latents), progress=not args.quiet, **kwargs,
    )  # fmt: skip


def save_latents_prefix(paths: list[Path], latents: torch.Tensor | None, meta: dict[str, str], frames: int) -> None:
    """After an interrupt: write the latents finished so far to each of ``paths`` (metadata
    ``complete = false``, ``frames`` = what they hold), or say that none were written."""
    from arvid.pipeline import save_latents

    if not paths:
        return
    names = ", ".join(map(str, paths))
    if latents is None:
        print(f"interrupted: no latent frame was finished; {names} not written", file=sys.stderr)
        return
    n = latents.shape[1]
    # All frames may be done (the interrupt came while the last chunk was decoded): then they are complete.
    prefix_meta = {**meta, "frames": str(n), "frames_requested": str(frames), "complete": str(n == frames).lower()}
    for path in paths:
        save_latents(path, latents, prefix_meta)
    held = f"all {n}" if n == frames else f"the first {n} of {frames}"
    print(f"interrupted: {names} hold{'s' * (len(paths) == 1)} {held} latent frames", file=sys.stderr)


def video_metadata(prompts: list[str] | str, args, backend: str) -> dict[str, str]:
    """mp4 container tags: prompt(s), seed, backend, arvid version and, when known, the git commit."""
    import arvid
    from arvid.bench.env import git_state

    tags = {
        "prompt": prompts if isinstance(prompts, str) else json.dumps(prompts, ensure_ascii=False),
        "seed": str(args.seed),
        "backend": backend,
        "arvid_version": arvid.__version__,
    }
    commit = git_state()["git_commit"]  # not environment(): that also probes triton, threads, load, ...
    if commit:
        tags["git_commit"] = commit
    return tags


def read_prompt_file(path: str | None) -> list[str]:
    """The prompts of ``--prompt-file`` (one a line, blank lines skipped); [] without one."""
    from arvid.runtime.files import read_text

    if not path:
        return []
    file = Path(path)
    if file.suffix.lower() == ".jsonl":
        raise ValueError(f"--prompt-file {file}: a JSONL prompt file is for `arvid interactive --prompts`")
    if not file.is_file():
        raise ValueError(f"--prompt-file {file}: no such file")
    prompts = [line.strip() for line in read_text(file, "--prompt-file").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompt-file {file}: no prompts in it")
    return prompts


def read_prompt_embeds(path: Path) -> list[torch.Tensor]:
    """``embeds`` ``[P, text_len, text_dim]`` from a .safetensors -> P tensors ``[1, text_len, text_dim]``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"--prompt-embeds {path} does not exist")
    try:
        embeds = load_file(str(path))["embeds"]
    except (SafetensorError, OSError) as e:
        raise ValueError(f"--prompt-embeds {path}: not a readable .safetensors ({e})") from None
    except KeyError:
        raise ValueError(f"--prompt-embeds {path}: no tensor named 'embeds' [P, text_len, text_dim]") from None
    if embeds.dim() != 3:
        raise ValueError(f"--prompt-embeds {path}: 'embeds' must be [P, text_len, text_dim], got {tuple(embeds.shape)}")
    return [e[None] for e in embeds.unbind(0)]


# -- the command ---------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from arvid.pipeline import output_kind, save_latents
    from arvid.runtime import validate_schedule
    from arvid.runtime.config import check_frames

    from ._common import resolved_config

    # Everything that can be checked is checked here, before any weights load.
    out = Path(args.out)
    kind = output_kind(out)
    if args.latents and Path(args.latents).suffix != ".safetensors":
        raise ValueError(f"--latents {args.latents}: latents are written as .safetensors")
    check_seconds(args.seconds)
    check_run_args(args)
    check_output_file(out, "--out")
    check_output_file(args.latents, "--latents")
    check_output_dir(args.png_dir, "--png-dir")
    if kind == "video":
        check_codec(args)
    stream = stream_config(args)
    frames = latent_frames(args, stream)
    prompts = args.prompt or read_prompt_file(args.prompt_file) or ["a red fox running through fresh snow"]
    embeds = read_prompt_embeds(Path(args.prompt_embeds)) if args.prompt_embeds else None
    if embeds is None and len(prompts) != len(args.switch_frames) + 1:
        raise ValueError(f"{len(prompts)} --prompt given, {len(args.switch_frames) + 1} needed for the switch frames")
    preset, _ = model_preset(args)
    frames = check_frames(preset.default_frames if frames is None else frames, stream.chunk_frames)
    num_prompts = len(embeds) if embeds is not None else len(prompts)
    switches = validate_schedule(frames, num_prompts, args.switch_frames, stream.chunk_frames)
    report_moved_switches(args.switch_frames, switches)
    if kind == "latents" or args.latents:  # every latent frame is kept to be saved: it must fit first
        from arvid.runtime.devices import check_fits

        per_frame = preset.model.in_dim * preset.latent_height * preset.latent_width * 4
        check_fits(2 * frames * per_frame, "cpu", f"keeping the latents of {frames:,} frames to save them")
    from arvid.runtime.rope import check_tables_fit

    # frame positions are absolute: an endless --frames needs endless RoPE tables (refused before loading)
    check_tables_fit(preset.model.head_dim, preset.model.rope_max_positions, frames)
    if getattr(args, "sequence_parallel", 1) > 1:
        check_sequence_parallel_options(generator_options(args))
    sp = sequence_parallel_from_args(args, preset, stream)  # checks N before any model loads
    writer = sp is None or sp.is_output_rank  # every rank holds the same latents; one writes them
    args.quiet = args.quiet or not writer

    need_vae = writer and (kind == "video" or bool(args.png_dir))
    pipe = pipeline_from_args(args, need_vae=need_vae, need_text=embeds is None, sequence_parallel=sp)
    meta = pipe.metadata(prompts, switches, seed=args.seed, num_frames=frames)
    shown = prompts if embeds is None else f"embeddings from {args.prompt_embeds}"
    if embeds is not None:
        meta["prompts"] = shown
    meta["config"] = json.dumps(resolved_config(args))
    latents_paths = [out] * (kind == "latents") + ([Path(args.latents)] if args.latents else [])
    latents_paths = latents_paths if writer else []

    def keep_latents_prefix(prefix):
        save_latents_prefix(latents_paths, prefix, meta, frames)

    video_tags = {**video_metadata(shown, args, pipe.backend_name), "config": meta["config"]}
    res = run_stream(
        pipe,
        args,
        embeds if embeds is not None else prompts,
        switches,
        frames=frames,
        out_video=out if kind == "video" and writer else None,
        metadata=video_tags if kind == "video" else None,
        on_interrupt=keep_latents_prefix if latents_paths else None,
        png_dir=args.png_dir if writer else None,
    )
    if sp is not None:  # per rank: the stream's time per chunk and its share in collectives
        n = frames // stream.chunk_frames
        comm = sp.comm_seconds()
        print(
            f"rank {sp.rank}: {res.seconds / n * 1e3:.1f} ms per chunk, {comm / n * 1e3:.1f} ms in collectives",
            file=sys.stderr,
        )
        sp.close()
        if not writer:
            return 0
    for path in latents_paths:
        save_latents(path, res.latents, meta)
    p = pipe.preset
    what = f"{kind} of {frames} latent frames"
    if kind == "video":
        n = res.video_frames
        what = f"video, {n} frames ({n / args.fps:.2f} s at {args.fps} fps, {p.video_size[1]}x{p.video_size[0]})"
    print(f"wrote {out}: {what} in {res.seconds:.2f} s ({frames / res.seconds:.1f} latent frames/s)")
    return 0
