"""``arvid generate``: stream latents for a prompt schedule."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ._common import add_common_args, atomic_write, stream_config


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate latents (video output arrives with the VAE)")
    add_common_args(p)
    p.add_argument("--prompt", action="append", help="prompt text; repeat once per switch")
    p.add_argument("--prompt-embeds", help=".safetensors with 'embeds' [P, text_len, text_dim], one per prompt")
    p.add_argument("--backend", help="attention backend (default: the fastest that runs here)")
    p.add_argument("--out", required=True, help="output .safetensors (tensor 'latents' [1, F, C, H, W])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)


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
    stream = stream_config(args)
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
    atomic_write(out, lambda tmp: save_file({"latents": latents}, str(tmp), metadata=meta))
    print(f"wrote {out}: latents {tuple(latents.shape)} in {seconds:.2f} s ({frames / seconds:.1f} latent frames/s)")
    return 0
