"""ctest `arvid_stream_parity`: arvid-stream's latents against arvid's Python generate().

Tiny preset, 36 latent frames, prompt switches at frames 3 and 12 (the re-cache span starts at
frame 0: the cache is rebuilt from 3, served by the step package, and from 12 frames) and 24
(past the first window: with global_sink the sink keeps its K/V and 9 frames are re-run), run
with global_sink true and false. The reference is the eager baseline (the reference-style
concatenating cache). The packages are exported once into --cache and reused while their
manifest key matches. Exit status 0 iff every max |C++ - Python| <= 1e-5.

    python native/check_parity.py --stream build/arvid-stream --cache build/aoti-cache --work build/parity
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from arvid.export.aoti import export_stream_packages, stream_inputs
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset
from arvid.runtime.files import write_safetensors

TOL = 1e-5
FRAMES = 36
SWITCHES = (3, 12, 24)
PROMPTS = 4
PRESET = "tiny"
SEED = 0
# Re-cache spans these switches need besides the step's 3: 12 frames (a rebuild) and 9 (global_sink
# past the first window).
RECACHE_FRAMES = (9, 12)


def parity_model():
    return build_model(get_preset(PRESET).model, seed=SEED)


def parity_packages(model, cache: Path, log=None, graph: str = "step") -> list[Path]:
    p = get_preset(PRESET)
    return export_stream_packages(
        model, stream=StreamConfig(), latent_size=(p.latent_height, p.latent_width), cache_dir=cache,
        recache_frames=RECACHE_FRAMES, log=log, graph=graph,
    )  # fmt: skip


def parity_inputs(model) -> dict[str, torch.Tensor]:
    p, cfg = get_preset(PRESET), StreamConfig()
    g = torch.Generator().manual_seed(1234)
    shape = (1, FRAMES, p.model.in_dim, p.latent_height, p.latent_width)
    noise = torch.randn(shape, generator=g)
    chunks, steps = FRAMES // cfg.chunk_frames, len(cfg.denoising_steps)
    renoise = torch.randn(chunks, steps - 1, 1, cfg.chunk_frames, *shape[2:], generator=g)
    prompts = [torch.randn(1, p.model.text_len, p.model.text_dim, generator=g) for _ in range(PROMPTS)]
    inputs = stream_inputs(model, prompts, stream=cfg, noise=noise, renoise=renoise, switch_frames=SWITCHES)
    return {**inputs, "_prompts": torch.stack(prompts)}


def reference(model, inputs, global_sink: bool) -> torch.Tensor:
    p = get_preset(PRESET)
    gen = StreamingGenerator(
        model, StreamConfig(global_sink=global_sink), latent_size=(p.latent_height, p.latent_width), backend="eager"
    )
    prompts = list(inputs["_prompts"])
    return gen.generate(inputs["noise"], prompts, SWITCHES, renoise=inputs["renoise"])


def run_stream(stream_bin: str, dirs, inputs_path: Path, out: Path, global_sink: bool, threads: int = 1):
    cmd = [stream_bin, *[a for d in dirs for a in ("--package-dir", str(d))], "--inputs", str(inputs_path)]
    cmd += ["--out", str(out), "--threads", str(threads), "--global-sink", "true" if global_sink else "false"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"arvid-stream failed ({res.returncode}): {res.stderr.strip()}")
    chunk_ms = [float(m) for m in re.findall(r"^chunk \d+ .*?: ([0-9.]+) ms$", res.stdout, re.M)]
    return load_file(str(out))["latents"], chunk_ms, res.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", required=True, help="the arvid-stream executable")
    ap.add_argument("--cache", required=True, type=Path, help="package cache (reused by manifest key)")
    ap.add_argument("--work", required=True, type=Path, help="scratch folder for inputs and outputs")
    ap.add_argument(
        "--graph", choices=["step", "chunk"], default="step",
        help="stream with the step package (5 calls per chunk, the default) or the whole-chunk package",
    )  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = parity_model()
    dirs = parity_packages(model, args.cache, log=print, graph=args.graph)
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = parity_inputs(model)
    in_path = args.work / "inputs.safetensors"
    write_safetensors(in_path, {k: v for k, v in inputs.items() if not k.startswith("_")})
    worst = 0.0
    refs = {gs: reference(model, inputs, gs) for gs in (True, False)}
    # The settings differ only after the switch past the first window: they must differ there, or
    # this check could not tell a streamer that ignores global_sink from a right one.
    split = (refs[True] - refs[False]).abs()
    last = SWITCHES[-1]
    print(f"reference: max |global_sink true - false| before frame {last}: "
          f"{split[:, :last].max().item():.3e}, after: {split[:, last:].max().item():.3e}")  # fmt: skip
    if split[:, last:].max().item() < 1e-3:
        print("FAIL: the two global_sink settings give the same latents; the check would be blind")
        return 1
    for gs in (True, False):
        ref = refs[gs]
        got, chunk_ms, _ = run_stream(args.stream, dirs, in_path, args.work / f"latents_gs{int(gs)}.safetensors", gs)
        if got.shape != ref.shape:
            print(f"global_sink={gs}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
            return 1
        diff = (got - ref).abs().max().item()
        worst = max(worst, diff)
        print(f"global_sink={gs}: {FRAMES} frames, switches {SWITCHES}, max |C++ - Python| = {diff:.3e}; "
              f"per-chunk ms (1 thread): {', '.join(f'{m:.2f}' for m in chunk_ms)}")  # fmt: skip
    ok = worst <= TOL
    print(f"{'PASS' if ok else 'FAIL'}: worst max diff {worst:.3e} (tolerance {TOL:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
