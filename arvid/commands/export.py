"""``arvid export``: deployable artifacts of the chunk step and the VAE step.

Sub-commands (each a registrar in :data:`SUBCOMMANDS`, and ``aoti`` from ``export_aoti.py``):

* ``onnx``  ONNX graphs (float, or Q/DQ with ``--quant``) + ``export.json``
* ``trt``   the ONNX graphs, then TensorRT engines built from them (needs TensorRT and a GPU)
* ``check`` the TensorRT-readiness report of an ONNX file (exit 1 when not ready)
* ``aoti``  AOTInductor ``.pt2`` packages + ``export.json`` (Python and the native ``arvid-stream``)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from arvid.runtime.config import GRAPH_KINDS

from ._checks import check_output_dir
from ._common import add_common_args, add_model_args, load_model_from_args, model_preset, stream_config
from ._names import QDQ_SCHEMES


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _add_graph_args(p) -> None:
    add_common_args(p)
    add_model_args(p)
    p.add_argument("--graph", required=True, choices=GRAPH_KINDS, help="which graph(s) to export")
    p.add_argument("--quant", choices=QDQ_SCHEMES, help="Q/DQ graph calibrated with nvidia-modelopt")
    p.add_argument("--out", required=True, help="output directory (gets the graphs and export.json)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: 18; 19 for Q/DQ)")
    p.add_argument("--torchscript", action="store_true", help="use the TorchScript exporter instead of dynamo")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rope-positions", type=int, help="rows of the RoPE table baked in (default: the model's)")
    p.add_argument("--calib-prompts", type=int, help="Q/DQ: random calibration prompts (default: 4)")
    p.add_argument("--calib-embeds", help="Q/DQ: .safetensors with 'embeds' [P, text_len, text_dim] to calibrate on")
    p.add_argument("--calib-frames", type=int, help="Q/DQ: latent frames per calibration prompt (default: 2 chunks)")
    p.add_argument("--force", action="store_true", help="re-export even when export.json has the same key")


def _register_onnx(sub) -> None:
    p = sub.add_parser("onnx", help="ONNX graphs (+ Q/DQ) with export.json")
    _add_graph_args(p)
    p.set_defaults(func=cmd_onnx)


def _register_trt(sub) -> None:
    p = sub.add_parser("trt", help="ONNX graphs, then TensorRT engines (TensorRT 10/11, CUDA)")
    _add_graph_args(p)
    p.add_argument("--timing-cache", help="TensorRT timing cache file (read if present, written back)")
    p.add_argument("--refit", action="store_true", help="build refittable engines")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace (default: 4 GiB)")
    p.set_defaults(func=cmd_trt)


def _register_check(sub) -> None:
    p = sub.add_parser("check", help="TensorRT-readiness report of an ONNX file (exit 1 when not ready)")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--target", default="10", help="TensorRT major version (10 or 11; default: 10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)


SUBCOMMANDS: dict[str, Callable] = {"onnx": _register_onnx, "trt": _register_trt, "check": _register_check}


def register(sub) -> None:
    from .export_aoti import register_aoti

    p = sub.add_parser(
        "export", help="export ONNX / Q/DQ ONNX / TensorRT / AOTInductor artifacts (see: arvid export -h)"
    )
    inner = p.add_subparsers(dest="export_command", required=True)
    for registrar in SUBCOMMANDS.values():
        registrar(inner)
    register_aoti(inner)


# -- commands --------------------------------------------------------------------------------------
def cmd_check(args) -> int:
    from arvid.export.onnx_check import check_onnx

    rep = check_onnx(args.model, target=args.target)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2))
    else:
        print("\n".join(rep.lines()))
    return 0 if rep.ready else 1


def _export(args) -> dict:
    from arvid.export.artifacts import export_graphs
    from arvid.export.progress import stage
    from arvid.runtime.devices import resolve_device, resolve_dtype

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    vae_step = args.graph == "vae-step"
    if vae_step and args.quant:  # before loading anything
        raise ValueError("Q/DQ export is for the DiT graphs (step, chunk, recache), not the VAE step")
    check_output_dir(args.out, "--out")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    preset, files = model_preset(args)
    what = f"{'VAE' if vae_step else 'DiT'} ({preset.name}, {device.type}, {str(dtype).removeprefix('torch.')})"
    with stage(_log, f"build the {what}"):
        model, vae = _build(args, preset, files, vae_step, device, dtype)
    stream = stream_config(args)
    latent = (preset.latent_height, preset.latent_width)
    loop = calibration = None
    if args.quant:
        from arvid.export.qdq import calibration_set

        prompts = list(_read_embeds(args.calib_embeds)) if args.calib_embeds else args.calib_prompts
        if not args.calib_embeds:  # the count and its default are qdq.calibration_set's
            _log(f"calibrating on {prompts or 'the default'} random prompt embeddings (--calib-embeds: real ones)")
        loop, calibration = calibration_set(model.cfg, stream, latent, prompts=prompts, frames=args.calib_frames,
                                            seed=args.seed)  # fmt: skip
    tag = [str(p) for p in (args.model, args.checkpoint, args.longlive_ckpt, args.lora) if p]
    return export_graphs(
        args.graph,
        out_dir=args.out,
        model=model,
        vae=vae,
        stream=stream,
        latent_size=latent,
        batch_size=args.batch_size,
        quant=args.quant,
        calibrate_loop=loop,
        calibration=calibration,
        dynamo=False if (args.torchscript or args.quant) else None,
        opset=args.opset,
        rope_positions=args.rope_positions,
        force=args.force,
        log=_log,
        model_tag=tag,
    )


def _build(args, preset, files, vae_step: bool, device, dtype):
    """``(model, None)`` for the DiT graphs, ``(None, vae)`` for the VAE step."""
    if not vae_step:
        return load_model_from_args(args, preset, device=device, dtype=dtype), None
    from arvid.runtime.loaders import load_vae_for

    if files is None and preset.name != "tiny":
        raise ValueError("the vae-step graph needs VAE weights: pass --model DIR, or use --preset tiny")
    if files is not None and files.vae is None:
        raise ValueError(f"{files.root}: no VAE found (Wan2.1_VAE.pth or vae/)")
    return None, load_vae_for(files, preset, device, dtype)


def _read_embeds(path: str):
    import torch

    from .generate import read_prompt_embeds

    embeds = read_prompt_embeds(Path(path))
    return torch.stack([e.reshape(e.shape[-2:]) for e in embeds])


def _summary(man: dict) -> None:
    for g in man.get("graphs", []):
        parity = g.get("parity") or {}
        worst = max((v for v in parity.values() if isinstance(v, float)), default=None)
        diff = f"max |ORT - eager| {worst:.2e}" if worst is not None else f"parity {parity.get('skipped', 'n/a')}"
        rel = max((v for v in (g.get("parity_rel_l2") or {}).values()), default=None)
        if rel is not None:
            diff += f", relative L2 {rel:.1e} ({man.get('dtype')} rounds at {_unit_roundoff(man.get('dtype')):.1e})"
        sqnr = g.get("sqnr_db_vs_float") or {}
        extra = (", SQNR vs float " + ", ".join(f"{k} {v:.2f} dB" for k, v in sqnr.items())) if sqnr else ""
        print(f"  {g['artifact']}: {g.get('nodes')} nodes, opset {g.get('opset')}, {diff}{extra}")


def _unit_roundoff(dtype: str | None) -> float:
    """Half the spacing of the dtype's numbers at 1: the relative error of one rounding."""
    import torch

    return torch.finfo(getattr(torch, dtype or "float32", torch.float32)).eps / 2


def cmd_onnx(args) -> int:
    man = _export(args)
    print(f"{'reused' if man['reused'] else 'wrote'} {args.out}/export.json ({man['graph']}, key {man['key']})")
    _summary(man)
    if not man["reused"]:
        print(f"  {man['export_s']:.1f} s, peak RSS {man['peak_rss_bytes'] / 2**30:.2f} GiB (this process)")
    return 0


def cmd_trt(args) -> int:
    from arvid.export import manifest as mf
    from arvid.export.tensorrt import _trt, build_engine

    _trt()  # the one-line install hint before any export work
    man = _export(args)
    out = Path(args.out)
    engines = []
    for g in man["graphs"]:
        plan = out / (Path(g["artifact"]).stem + ".plan")
        _log(f"building {plan.name} ...")
        engines.append(
            build_engine(
                out / g["artifact"],
                plan,
                timing_cache=args.timing_cache,
                refit=args.refit,
                workspace=int(args.workspace_gib * 2**30),
            )
        )
    trt_man = {**man, "format": "trt", "engines": engines, "artifact": [Path(e["plan"]).name for e in engines]}
    trt_man.pop("reused", None)
    mf.atomic_write_bytes(out / "export_trt.json", (json.dumps(trt_man, indent=2) + "\n").encode())
    print(f"wrote {len(engines)} TensorRT engine(s) to {out} (export_trt.json)")
    return 0
