"""The ``ort`` and ``trt`` chunk executors: the exported ONNX graphs run by ONNX Runtime or by
TensorRT engines built from them, inside StreamingGenerator.

Registered with the runtime's executor registry as ``ort`` and ``trt``; variant flags pick the graphs:
``ort`` (float step + re-cache graphs), ``ort+int8`` / ``ort+fp8`` (Q/DQ graphs calibrated with
modelopt), ``ort+chunk`` (the whole-chunk graph instead of five step calls). Graphs are exported on
first use into a cache directory (``$ARVID_EXPORT_CACHE``, default ``~/.cache/arvid/export``) and
reused by their export key afterwards. The host keeps the ring buffer, the plan and the commit
(``arvid.runtime.chunk_runner.GraphRunner``); ORT only runs the functional graphs, so a prompt
switch runs the exported re-cache graph of its span. ``trt`` builds a strongly typed TensorRT
engine (``tensorrt.build_engine``) beside each ONNX graph, reused while the graph's export key,
TensorRT's version and the GPU stay the same, and runs it with ``tensorrt.TrtEngine`` (CUDA only).
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import torch

from .artifacts import cache_root
from .graphs import graph_stream
from .manifest import _jsonable, atomic_write_bytes, reuse_key, weight_hash

FLAG_QUANT = {"int8": "int8-smoothquant", "fp8": "fp8"}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _dir_for(kind: str, quant: str | None, model, stream, latent_size, batch_size, exporter: str) -> Path:
    blob = json.dumps(
        _jsonable(
            [
                kind,
                quant,
                exporter,
                weight_hash(model),
                model.cfg,
                graph_stream(stream),
                latent_size,
                batch_size,
            ]
        ),
        sort_keys=True,
    )
    return cache_root() / f"{kind}-{quant or 'float'}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def ort_graphs(
    model,
    stream,
    latent_size,
    batch_size: int = 1,
    *,
    flags: frozenset[str] | set[str] = frozenset(),
    exporter: str | None = None,
    out_dir: str | Path | None = None,
    log=None,
    open_graph=None,
) -> dict:
    """Export (or reuse) the graphs the ``ort`` / ``trt`` executors need and open each with
    ``open_graph(onnx_path, manifest)`` (default: an ONNX Runtime session).

    Returns ``{"step": graph | None, "chunk": graph | None, "recache": {F: graph}, "manifests": [...]}``."""
    from .artifacts import export_graphs
    from .graphs import recache_graph_spans
    from .qdq import calibration_set

    log = log or _stderr
    if open_graph is None:
        from .ort_engine import OrtGraph

        threads = torch.get_num_threads()

        def open_graph(path, _man):
            return OrtGraph(path, device=device, threads=threads)

    quants = [FLAG_QUANT[f] for f in flags if f in FLAG_QUANT]
    if len(quants) > 1:
        raise ValueError(f"pick one of +int8 / +fp8, got {sorted(flags)}")
    quant = quants[0] if quants else None
    exporter = exporter or ("torchscript" if quant else "dynamo")
    device = next(model.parameters()).device
    out = {"step": None, "chunk": None, "recache": {}, "manifests": []}
    spans = recache_graph_spans(stream)
    memo: dict = {}
    loop, calibration = calibration_set(model.cfg, stream, tuple(latent_size)) if quant else (None, None)

    def calibrated():  # once per engine, and only if some graph has to be exported
        if "model" not in memo:
            from .qdq import calibrate

            log(f"calibrating {quant} with modelopt ({calibration['prompts']} x {calibration['frames']} frames) ...")
            memo["model"] = calibrate(copy.deepcopy(model), quant, loop)
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
            calibration=calibration,
            dynamo=exporter == "dynamo",
            spans=spans if kind == "recache" else None,
            log=log,
        )
        out["manifests"].append(man)
        for g in man["graphs"]:
            sess = open_graph(d / g["artifact"], man)
            if kind == "recache":
                out["recache"][int(g["spec"]["meta"].get("num_frames") or _frames_of(g["artifact"]))] = sess
            else:
                out[kind] = sess
    return out


def _frames_of(artifact: str) -> int:
    return int(Path(artifact).stem.rsplit("_f", 1)[1])


def _graph_runner(model, stream, latent_size, batch_size, graphs: dict):
    from arvid.runtime.chunk_runner import GraphRunner

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


def ort_executor(model, stream, *, latent_size, batch_size, flags=frozenset(), **options):
    """Executor factory for the runtime registry: a GraphRunner over the ONNX Runtime sessions."""
    graphs = ort_graphs(model, stream, latent_size, batch_size, flags=set(flags), **options)
    return _graph_runner(model, stream, latent_size, batch_size, graphs)


def trt_missing(device: torch.device) -> list[str]:
    """What the ``trt`` engine lacks here (empty when TensorRT imports and ``device`` is a usable GPU)."""
    from .onnx_check import MissingDependencyError
    from .tensorrt import _trt

    missing = []
    try:
        _trt()
    except MissingDependencyError:
        missing.append("tensorrt is not installed (pip install tensorrt)")
    if device.type != "cuda" or not torch.cuda.is_available():
        missing.append(f"it needs CUDA (the model is on {device}, CUDA available: {torch.cuda.is_available()})")
    return missing


class _TrtGraph:
    """A ``TrtEngine`` as a GraphRunner callable: outputs are cloned out of the engine's fixed
    buffers, which its next call overwrites."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(o.clone() for o in self.engine(*(x.contiguous() for x in inputs)))


def _trt_opener(device: torch.device, *, timing_cache: str | Path | None, workspace: int, log):
    """``open_graph`` of :func:`ort_graphs` for TensorRT: build (or reuse) ``<graph>.plan`` beside
    the ONNX graph and load it."""
    import tensorrt as trt

    from .tensorrt import TrtEngine, build_engine

    gpu = torch.cuda.get_device_name(device)

    def open_graph(onnx_path: Path, man: dict):
        plan = onnx_path.with_suffix(".plan")
        stamp = plan.with_name(plan.name + ".key")
        key = reuse_key(onnx=onnx_path.name, export_key=man["key"], tensorrt=trt.__version__, gpu=gpu,
                        workspace=workspace)  # fmt: skip
        if not (plan.is_file() and stamp.is_file() and stamp.read_text().strip() == key):
            log(f"building TensorRT engine {plan.name} ...")
            build_engine(onnx_path, plan, timing_cache=timing_cache or onnx_path.parent / "timing.cache",
                         workspace=workspace)  # fmt: skip
            atomic_write_bytes(stamp, (key + "\n").encode())
        return _TrtGraph(TrtEngine(plan, device=device))

    return open_graph


TRT_OPTIONS = ("exporter", "out_dir", "timing_cache", "workspace_gib")


def trt_executor(model, stream, *, latent_size, batch_size, flags=frozenset(), **options):
    """Executor factory for the runtime registry: the exported ONNX graphs (the ``ort`` engine's
    pipeline and cache) built into TensorRT engines, run by ``TrtEngine`` in a GraphRunner.

    Options: ``exporter``, ``out_dir`` (as ``ort``), ``timing_cache`` (file; default beside the
    graphs), ``workspace_gib`` (builder workspace, default 4)."""
    unknown = set(options) - set(TRT_OPTIONS)
    if unknown:
        raise ValueError(f"executor 'trt' takes the options {', '.join(TRT_OPTIONS)}; got {sorted(unknown)}")
    device = model.patch_embedding.weight.device
    missing = trt_missing(device)
    if missing:
        raise ValueError(f"engine 'trt' cannot run here: {'; '.join(missing)}")
    log = _stderr
    opener = _trt_opener(
        device,
        timing_cache=options.pop("timing_cache", None),
        workspace=int(float(options.pop("workspace_gib", 4)) * 2**30),
        log=log,
    )
    graphs = ort_graphs(model, stream, latent_size, batch_size, flags=set(flags), log=log, open_graph=opener, **options)
    return _graph_runner(model, stream, latent_size, batch_size, graphs)
