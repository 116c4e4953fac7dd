"""The ``ort`` chunk executor: the exported ONNX graphs run by ONNX Runtime inside StreamingGenerator.

Registered with the runtime's executor registry as ``ort``; variant flags pick the graphs:
``ort`` (float step + re-cache graphs), ``ort+int8`` / ``ort+fp8`` (Q/DQ graphs calibrated with
modelopt), ``ort+chunk`` (the whole-chunk graph instead of five step calls). Graphs are exported on
first use into a cache directory (``$ARVID_EXPORT_CACHE``, default ``~/.cache/arvid/export``) and
reused by their export key afterwards. The host keeps the ring buffer, the plan and the commit
(``arvid.runtime.chunk_runner.GraphRunner``); ORT only runs the functional graphs, so a prompt
switch runs the exported re-cache graph of its span.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from .manifest import _jsonable, weight_hash

FLAG_QUANT = {"int8": "int8-smoothquant", "fp8": "fp8"}


def cache_root() -> Path:
    return Path(os.environ.get("ARVID_EXPORT_CACHE") or Path.home() / ".cache" / "arvid" / "export")


def _dir_for(kind: str, quant: str | None, model, stream, latent_size, batch_size, exporter: str) -> Path:
    blob = json.dumps(
        _jsonable(
            [
                kind,
                quant,
                exporter,
                weight_hash(model),
                model.cfg,
                stream.replace(global_sink=True),
                latent_size,
                batch_size,
            ]
        ),
        sort_keys=True,
    )
    return cache_root() / f"{kind}-{quant or 'float'}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


CALIBRATION = {"prompts": "4 random embeddings (seed 7)", "frames": "2 chunks", "seed": 0}


def _calibration_loop(model, stream, latent_size, seed: int = 0):
    from arvid.quant.calibrate import streaming_forward_loop

    g = torch.Generator().manual_seed(seed + 7)
    cfg = model.cfg
    prompts = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g) for _ in range(4)]
    return streaming_forward_loop(prompts, latent_size=latent_size, frames=2 * stream.chunk_frames, stream=stream)


def ort_graphs(
    model,
    stream,
    latent_size,
    batch_size: int = 1,
    *,
    flags: frozenset[str] | set[str] = frozenset(),
    exporter: str | None = None,
    out_dir: str | Path | None = None,
    log=lambda s: print(s, file=sys.stderr),
) -> dict:
    """Export (or reuse) the graphs the ``ort`` executor needs and open them in ONNX Runtime.

    Returns ``{"step": OrtGraph | None, "chunk": OrtGraph | None, "recache": {F: OrtGraph},
    "manifests": [...]}``."""
    from .ort_engine import OrtGraph
    from .pipeline import export_graphs, recache_spans

    quants = [FLAG_QUANT[f] for f in flags if f in FLAG_QUANT]
    if len(quants) > 1:
        raise ValueError(f"pick one of +int8 / +fp8, got {sorted(flags)}")
    quant = quants[0] if quants else None
    exporter = exporter or ("torchscript" if quant else "dynamo")
    device = next(model.parameters()).device
    threads = torch.get_num_threads()
    out = {"step": None, "chunk": None, "recache": {}, "manifests": []}
    spans = [f for f in recache_spans(stream) if f != stream.chunk_frames]  # the step graph serves F = chunk
    memo: dict = {}

    def calibrated():  # once per engine, and only if some graph has to be exported
        if "model" not in memo:
            from .qdq import calibrate

            log(f"calibrating {quant} with modelopt (4 random prompts x {2 * stream.chunk_frames} frames) ...")
            memo["model"] = calibrate(copy.deepcopy(model), quant, _calibration_loop(model, stream, latent_size))
        return memo["model"]

    for kind in ("step", "recache", *(["chunk"] if "chunk" in flags else [])):
        d = Path(out_dir) / kind if out_dir else _dir_for(kind, quant, model, stream, latent_size, batch_size, exporter)
        man = export_graphs(
            kind,
            out_dir=d,
            model=model,
            stream=stream,
            latent_size=tuple(latent_size),
            batch_size=batch_size,
            quant=quant,
            calibrated_model=calibrated if quant else None,
            calibration=CALIBRATION,
            dynamo=exporter == "dynamo",
            spans=spans if kind == "recache" else None,
            log=log,
        )
        out["manifests"].append(man)
        for g in man["graphs"]:
            sess = OrtGraph(d / g["artifact"], device=device, threads=threads)
            if kind == "recache":
                out["recache"][int(g["spec"]["meta"].get("num_frames") or _frames_of(g["artifact"]))] = sess
            else:
                out[kind] = sess
    return out


def _frames_of(artifact: str) -> int:
    return int(Path(artifact).stem.rsplit("_f", 1)[1])


def ort_executor(model, stream, *, latent_size, batch_size, flags=frozenset(), **options):
    """Executor factory for the runtime registry: a GraphRunner over the ONNX Runtime sessions."""
    from arvid.runtime.chunk_runner import GraphRunner

    graphs = ort_graphs(model, stream, latent_size, batch_size, flags=set(flags), **options)
    param = model.patch_embedding.weight
    rope = {m.get("rope_positions") for m in graphs["manifests"]}
    if len(rope) != 1:
        raise ValueError(f"the exported graphs disagree on their RoPE table size: {sorted(rope)}")
    return GraphRunner(
        model.cfg,
        stream,
        latent_size=tuple(latent_size),
        batch_size=batch_size,
        device=param.device,
        dtype=param.dtype,
        step=graphs["step"],
        chunk=graphs["chunk"],
        recache_steps=graphs["recache"],
        rope_positions=rope.pop(),
    )


def register() -> bool:
    """Register ``ort`` with the runtime's executor registry; False where the runtime has none."""
    try:
        from arvid.runtime.chunk_runner import Executor, get_executor, register_executor
    except ImportError:
        return False
    if get_executor("ort") is None:
        register_executor(
            Executor(
                "ort",
                "the exported ONNX graphs run by ONNX Runtime (CPU provider; CUDA with onnxruntime-gpu); "
                "+int8 / +fp8: modelopt Q/DQ graphs, +chunk: the whole-chunk graph",
                ort_executor,
                flags=("int8", "fp8", "chunk"),
            )
        )
    return True


register()
