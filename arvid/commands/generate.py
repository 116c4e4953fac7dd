"""``arvid generate``: stream a video (.mp4) or its latents (.safetensors) for a prompt schedule.

Weights: ``--model DIR`` (Wan2.1, original or diffusers layout: DiT, umT5 text encoder, VAE), with
LongLive's ``--longlive-ckpt longlive_base.pt`` and ``--lora lora.pt`` on top. Without ``--model``
the ``tiny`` preset runs on random weights end to end (random DiT, tiny random umT5 with a byte
tokenizer, tiny random VAE), so ``arvid generate --out video.mp4`` needs no files at all.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a command runs: `arvid --help` must not pay for it
    import torch

from ._common import add_common_args, add_model_args, model_preset, stream_config


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate a video (.mp4) or latents (.safetensors)")
    add_common_args(p)
    add_model_args(p)
    add_run_args(p)
    p.add_argument("--prompt", action="append", help="prompt text; repeat once per switch")
    p.add_argument("--prompt-embeds", help=".safetensors with 'embeds' [P, text_len, text_dim], one per prompt")
    p.add_argument("--seconds", type=float, help="video length in seconds (instead of --frames)")
    p.add_argument("--out", required=True, help="output: .mp4 (video) or .safetensors (latents [1, F, C, H, W])")
    add_output_args(p)
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
    """``--backend VARIANT`` plus ``--graphs`` / ``--compile`` / ``--fp8kv``: the same words as a variant string."""
    import dataclasses

    from arvid.runtime import GeneratorOptions

    opts = GeneratorOptions.from_variant(args.backend) if args.backend else GeneratorOptions()
    return dataclasses.replace(
        opts, graphs=opts.graphs or args.graphs, compile=opts.compile or args.compile, fp8kv=opts.fp8kv or args.fp8kv
    )


def make_generator(comp, stream, args):
    """The StreamingGenerator the run options ask for (see :func:`generator_options`)."""
    p = comp.preset
    return generator_options(args).build(comp.model, stream, latent_size=(p.latent_height, p.latent_width))


def add_output_args(p) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--fps", type=int, default=16, help="video frames per second (default: 16, as Wan)")
    g.add_argument("--codec", help="video encoder (default: libx264, else the first available H.264 / MPEG-4)")
    g.add_argument("--latents", help="also save the latents to this .safetensors")
    g.add_argument("--png-dir", help="also save every video frame as a PNG in this folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


# -- loading -------------------------------------------------------------------------------------
@dataclass
class Components:
    preset: Any  # runtime.config.Preset (the model config is the checkpoint's)
    model: Any  # CausalWanModel
    text_encoder: Any  # TextEncoder or None (stand-in embeddings)
    vae: Any  # AutoencoderKLWan or None (latents only)
    device: torch.device
    dtype: torch.dtype


def load_components(args, *, need_vae: bool, need_text: bool = True) -> Components:
    """DiT, text encoder and VAE for the command-line arguments (see ``_common.add_model_args``)."""
    from arvid.runtime.devices import resolve_device, resolve_dtype

    from ._common import load_model_from_args

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    preset, files = model_preset(args)
    _check_sources(files, preset, need_vae=need_vae, need_text=need_text)  # fail before loading gigabytes
    model = load_model_from_args(args, preset, device=device, dtype=dtype)
    text = _text_encoder(args, files, preset, device, dtype) if need_text else None
    vae = _vae(files, preset, device, dtype) if need_vae else None
    return Components(preset, model, text, vae, device, dtype)


def _check_sources(files, preset, *, need_vae: bool, need_text: bool) -> None:
    if files is None:
        if need_vae and preset.name != "tiny":
            raise ValueError("video output needs VAE weights: pass --model DIR, or use --preset tiny")
        return
    if need_text and files.text_encoder is None:
        raise ValueError(f"{files.root}: no text encoder found (models_t5_umt5-xxl-enc-bf16.pth or text_encoder/)")
    if need_text and files.tokenizer is None:
        want = "google/umt5-xxl/" if files.layout == "wan" else "tokenizer/"
        raise ValueError(f"{files.root}: no tokenizer directory ({want})")
    if need_vae and files.vae is None:
        raise ValueError(f"{files.root}: no VAE found (Wan2.1_VAE.pth or vae/)")


def _text_encoder(args, files, preset, device, dtype):
    from arvid.runtime.text_encoder import TextEncoder

    kw = dict(text_len=preset.model.text_len, device=device, dtype=dtype, placement=args.text_encoder_device)
    if files is None:
        if preset.name != "tiny":
            print("no --model: prompts get deterministic stand-in embeddings", file=sys.stderr)
            return None
        enc = TextEncoder.tiny_random(preset.model.text_dim, seed=args.seed, **kw)
    elif files.layout == "diffusers":
        enc = TextEncoder.from_pretrained(files.text_encoder, files.tokenizer, **kw)
    else:
        enc = TextEncoder.from_wan_checkpoint(files.text_encoder, files.tokenizer, **kw)
    if enc.dim != preset.model.text_dim:
        raise ValueError(f"the text encoder gives {enc.dim}-dim embeddings, the DiT takes {preset.model.text_dim}")
    return enc


def _vae(files, preset, device, dtype):
    from arvid.runtime.vae import load_vae, tiny_vae

    if files is None:
        return tiny_vae(device=device, dtype=dtype)
    return load_vae(files.vae, device=device, dtype=dtype)


def prompt_embeddings(comp: Components, prompts: list[str]) -> list[torch.Tensor]:
    """``[1, text_len, text_dim]`` per prompt: the text encoder, or stand-ins without one."""
    from arvid.runtime.prompts import placeholder_prompt_embeds

    if comp.text_encoder is None:
        return [placeholder_prompt_embeds(p, comp.preset) for p in prompts]
    return [comp.text_encoder.encode(p) for p in prompts]


def latent_frames(args, stream) -> int | None:
    """--frames or --seconds as latent frames (None: the preset's default)."""
    from arvid.runtime.vae import latent_frames_for_seconds

    if getattr(args, "seconds", None) is not None:
        if args.frames is not None:
            raise ValueError("give --frames (latent frames) or --seconds, not both")
        return latent_frames_for_seconds(args.seconds, args.fps, stream.chunk_frames)
    return args.frames


# -- the streaming loop ----------------------------------------------------------------------------
def run_stream(
    comp: Components,
    gen,
    stream_kwargs: dict,
    *,
    frames: int,
    out_video: Path | None,
    args,
    desc: str = "video frames",
) -> tuple[torch.Tensor | None, float]:
    """Drive ``gen.stream(**stream_kwargs)``; decode and append each chunk to ``out_video`` (and PNGs)
    as it finishes. Returns (latents [1, F, C, H, W] on the CPU if they are to be saved, seconds)."""
    import torch
    from tqdm import tqdm

    from arvid.runtime.vae import StreamingVAEDecoder, video_frames
    from arvid.runtime.video import VideoWriter, write_png_frames

    decoder = StreamingVAEDecoder(comp.vae) if comp.vae is not None else None
    keep = out_video is None or bool(args.latents)
    chunks: list[torch.Tensor] = []
    h, w = comp.preset.video_size
    writer = VideoWriter(out_video, width=w, height=h, fps=args.fps, codec=args.codec) if out_video else None
    total = video_frames(frames) if decoder else frames
    t0 = time.perf_counter()
    written = 0
    try:
        with tqdm(total=total, unit="frame", desc=desc, disable=args.quiet, dynamic_ncols=True) as bar:
            for c in gen.stream(**stream_kwargs):
                if keep:
                    chunks.append(c.latents.cpu())
                if decoder is None:
                    bar.update(c.latents.shape[1])
                    continue
                video = decoder.decode(c.latents)[0]  # [T, 3, H, W]
                if writer is not None:
                    writer.write(video)
                if args.png_dir:
                    write_png_frames(video, args.png_dir, written)
                written += video.shape[0]
                bar.update(video.shape[0])
        if writer is not None:
            writer.close()
    except KeyboardInterrupt:
        if writer is not None:
            writer.__exit__(KeyboardInterrupt, None, None)
            if writer.interrupted:
                print(f"interrupted: {out_video} holds the first {writer.frames_written} frames", file=sys.stderr)
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    seconds = time.perf_counter() - t0
    return (torch.cat(chunks, dim=1).contiguous() if keep and chunks else None), seconds


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


def save_latents(path: Path, latents: torch.Tensor, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from arvid.runtime.files import atomic_write

    atomic_write(path, lambda tmp: save_file({"latents": latents}, str(tmp), metadata=meta))


def noise_and_generator(comp: Components, frames: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    import torch

    p = comp.preset
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, frames, p.model.in_dim, p.latent_height, p.latent_width, generator=g)
    return noise, torch.Generator(device=comp.device).manual_seed(seed + 1)


def output_kind(path: Path) -> str:
    kind = {".mp4": "video", ".safetensors": "latents"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"--out {path}: use .mp4 for video or .safetensors for latents")
    return kind


# -- the command ---------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from arvid.runtime.config import check_frames

    out = Path(args.out)
    kind = output_kind(out)
    if args.latents and Path(args.latents).suffix != ".safetensors":
        raise ValueError(f"--latents {args.latents}: latents are written as .safetensors")
    stream = stream_config(args)
    frames = latent_frames(args, stream)
    prompts = args.prompt or ["a red fox running through fresh snow"]
    if not args.prompt_embeds and len(prompts) != len(args.switch_frames) + 1:
        raise ValueError(f"{len(prompts)} --prompt given, {len(args.switch_frames) + 1} needed for the switch frames")
    comp = load_components(args, need_vae=kind == "video" or bool(args.png_dir), need_text=not args.prompt_embeds)
    frames = check_frames(comp.preset.default_frames if frames is None else frames, stream.chunk_frames)
    embeds = read_prompt_embeds(Path(args.prompt_embeds)) if args.prompt_embeds else prompt_embeddings(comp, prompts)

    p = comp.preset
    gen = make_generator(comp, stream, args)
    noise, renoise_gen = noise_and_generator(comp, frames, args.seed)
    kwargs = dict(noise=noise, prompts=embeds, switch_frames=args.switch_frames, generator=renoise_gen)
    latents, seconds = run_stream(
        comp, gen, kwargs, frames=frames, out_video=out if kind == "video" else None, args=args
    )
    meta = {
        "preset": p.name,
        "frames": str(frames),
        "seed": str(args.seed),
        "backend": gen.backend_name,
        "switch_frames": ",".join(map(str, args.switch_frames)),
        "prompts": json.dumps(prompts) if not args.prompt_embeds else f"embeddings from {args.prompt_embeds}",
        "layout": "[B, F, C, H, W]",
    }
    for path in [out] * (kind == "latents") + ([Path(args.latents)] if args.latents else []):
        save_latents(path, latents, meta)
    what = f"{kind} of {frames} latent frames"
    if kind == "video":
        from arvid.runtime.vae import video_frames

        n = video_frames(frames)
        what = f"video, {n} frames ({n / args.fps:.2f} s at {args.fps} fps, {p.video_size[1]}x{p.video_size[0]})"
    print(f"wrote {out}: {what} in {seconds:.2f} s ({frames / seconds:.1f} latent frames/s)")
    return 0
