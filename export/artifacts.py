"""One export = graphs built from a model + ONNX (float or Q/DQ) + ``export.json``, reused by key.

``export_graphs(kind, ...)`` is what ``arvid export onnx|trt`` and the ``ort`` executor call:

* ``step``: one DiT forward at F = chunk (denoising steps and the clean-context update).
* ``chunk``: the whole chunk (all steps, re-noise, clean-context update) as one graph.
* ``recache``: the KV re-cache forwards, one graph per span a prompt switch can have
  (F = chunk, 2 chunk, ... attention_frames; the global-sink window case is the F = window graph
  with other plan scalars, since the valid keys come from the device scalars).
* ``vae-step``: the streaming VAE decoder step (latent frames >= 2; frames 0 and 1 stay eager).

The DiT graphs come from ``arvid.export.graphs`` (functional cache, plan scalars as inputs).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from arvid.runtime.config import GRAPH_KINDS
from arvid.runtime.files import check_writable_dir, removed_on_failure
from arvid.runtime.kv_cache import recache_spans

from . import graphs
from . import manifest as mf

DIT_OPSET = 18
QDQ_OPSET = 19


def cache_root() -> Path:
    """The one folder of the artifacts the engines export for themselves (``ort``, ``trt``, ``aoti``):
    ``$ARVID_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/arvid/export`` (``~/.cache/arvid/export``). Each
    artifact lives in a subfolder named by what changes its graphs, so settings that share graphs share it."""
    env = os.environ.get("ARVID_EXPORT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arvid" / "export"


def aoti_cache_root() -> Path:
    """Where the ``aoti`` engine keeps its packages: ``cache_root() / "aoti"`` (one cache, one variable)."""
    return cache_root() / "aoti"


def dit_graphs(kind: str, model, *, stream, latent_size, batch_size: int = 1, rope_positions: int, spans=None):
    """``[(file stem, module, example inputs, spec)]`` for a DiT graph kind (``spans``: the re-cache
    span lengths to build, default all of :func:`~arvid.runtime.kv_cache.recache_spans`). The example
    inputs are the graph's ``example_inputs`` method, called only where something runs the graph: at
    the real size they are larger than the weights."""
    frames = list(spans or recache_spans(stream)) if kind == "recache" else [None]
    out = []
    for f in frames:
        g = graphs.build_graph(
            kind,
            model,
            stream=stream,
            latent_size=tuple(latent_size),
            batch_size=batch_size,
            num_frames=f,
            rope_positions=rope_positions,
        )
        stem = kind if f is None else f"recache_f{f}"
        out.append((stem, g, g.example_inputs, g.spec()))
    return out


def default_rope_positions(model) -> int:
    """The RoPE table baked into a DiT graph by default: the model's current table."""
    rope = getattr(model, "rope", None)
    return int(rope.positions) if rope is not None else model.cfg.rope_max_positions


def export_graphs(
    kind: str,
    *,
    out_dir: str | Path,
    model=None,
    vae=None,
    stream=None,
    latent_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    quant: str | None = None,
    calibrate_loop: Callable | None = None,
    calibrated_model=None,
    calibration: dict | None = None,
    dynamo: bool | None = None,
    opset: int | None = None,
    rope_positions: int | None = None,
    force: bool = False,
    spans: Sequence[int] | None = None,
    log: Callable[[str], None] = lambda s: None,
    model_tag: Sequence[str] = (),
) -> dict:
    """Export the graphs of ``kind`` into ``out_dir`` with their manifest; reuse a matching export.

    Returns the manifest (``reused`` is True when nothing was rebuilt)."""
    from arvid.runtime import StreamConfig

    from .onnx_export import export_onnx
    from .progress import peak_rss_bytes, stage
    from .qdq import calibrate, export_qdq

    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph {kind!r}; choose one of {GRAPH_KINDS}")
    if quant is not None:
        from arvid.quant.calibrate import MODELOPT_SCHEMES  # only a Q/DQ export needs arvid.quant

        if quant not in MODELOPT_SCHEMES:
            raise ValueError(f"unknown --quant {quant!r}; choose one of {MODELOPT_SCHEMES}")
    if quant and kind == "vae-step":
        raise ValueError("Q/DQ export is for the DiT graphs (step, chunk, recache), not the VAE step")
    out_dir = Path(out_dir)
    stream = stream or StreamConfig()
    if dynamo is None:
        dynamo = quant is None  # modelopt models export with the TorchScript exporter only
    if quant and dynamo:
        raise ValueError("Q/DQ graphs export with the TorchScript exporter (dynamo fails on modelopt models)")
    opset = opset or (QDQ_OPSET if quant else DIT_OPSET)
    source = vae if kind == "vae-step" else model
    if source is None:
        raise ValueError(f"graph {kind!r} needs {'a VAE' if kind == 'vae-step' else 'a model'}")
    param = next(source.parameters())
    device, dtype = param.device, param.dtype
    if kind != "vae-step":
        rope_positions = rope_positions or default_rope_positions(model)
    with stage(log, "hashing the weights"):
        weights = mf.weight_hash(source)
    key = mf.reuse_key(
        kind=kind,
        quant=quant,
        exporter="dynamo" if dynamo else "torchscript",
        opset=opset,
        weights=weights,
        model=_config(kind, model, vae),
        stream=graphs.graph_stream(stream) if kind != "vae-step" else None,
        latent_size=latent_size,
        batch_size=batch_size,
        rope_positions=rope_positions,
        dtype=dtype,
        device=device.type,
        torch=torch.__version__,
        tag=list(model_tag),
        spans=list(spans) if spans else None,
        calibration=calibration if quant else None,  # another calibration set is another artifact
    )
    if not force:
        old = mf.reusable(out_dir, key)
        if old is not None:
            log(f"reusing {out_dir} (same export key {key})")
            return {**old, "reused": True}
    check_writable_dir(out_dir, f"export folder {out_dir}")  # before tracing: an export is not lost at its end
    with removed_on_failure(out_dir):  # a folder made for this export is not kept half-filled
        t0 = time.perf_counter()
        if kind == "vae-step":
            from .vae_graph import vae_step_example

            # eager decodes of 3 latent frames: minutes for Wan2.1's VAE at 480x832 on a CPU, so said
            with stage(log, "vae-step: warming the decoder caches on 2 latent frames, then one eager step"):
                graph, inputs, spec = vae_step_example(vae, tuple(latent_size), batch_size=batch_size)
            items = [("vae_step", graph, inputs, spec)]
        else:
            float_model = model
            if quant and calibrated_model is not None:  # calibrated once for every graph of an engine
                model = (
                    calibrated_model()
                    if callable(calibrated_model) and not isinstance(calibrated_model, torch.nn.Module)
                    else calibrated_model
                )
            elif quant:
                if calibrate_loop is None:
                    raise ValueError("a Q/DQ export needs a calibration loop (prompts to calibrate on)")
                log(f"calibrating {quant} with modelopt ...")
                model = calibrate(copy.deepcopy(float_model), quant, calibrate_loop)
            geo = dict(
                stream=stream,
                latent_size=latent_size,
                batch_size=batch_size,
                rope_positions=rope_positions,
                spans=spans,
            )
            with stage(log, f"building the {kind} graphs"):
                items = dit_graphs(kind, model, **geo)
                if quant:
                    floats = dit_graphs(kind, float_model, **geo)
        graphs_meta = []
        for i, (stem, graph, inputs, spec) in enumerate(items):
            path = out_dir / f"{stem}.onnx"
            log(f"exporting {path.name} ({'Q/DQ ' + quant if quant else 'dynamo' if dynamo else 'TorchScript'}) ...")
            if quant:
                with stage(log, f"{path.name}: example inputs and the float reference"), torch.no_grad():
                    inputs = inputs()
                    ref = floats[i][1](*inputs)
                res = export_qdq(graph, inputs, spec, path, scheme=quant, float_reference=ref, opset=opset, log=log)
            else:
                trace = graph.placeholder_inputs() if hasattr(graph, "placeholder_inputs") else None
                res = export_onnx(graph, inputs, spec, path, dynamo=dynamo, opset=opset, trace_inputs=trace, log=log)
            graphs_meta.append(
                {
                    "artifact": path.name,
                    "spec": mf.spec_dict(spec),
                    **{k: v for k, v in res.items() if k != "path"},
                }
            )
        parity = {g["artifact"]: g.get("parity") for g in graphs_meta}
        files = [n for g in graphs_meta for n in (g["artifact"], g.get("external_data")) if n]
        with stage(log, f"hashing {len(files)} files"):
            digests = mf.file_digests(out_dir, files)
        if kind != "vae-step":  # what the graphs really baked in (the table may have grown to the latent size)
            rope_positions = graphs_meta[0]["spec"]["meta"].get("rope_positions", rope_positions)
        man = mf.build_manifest(
            artifact=[g["artifact"] for g in graphs_meta],
            format="onnx-qdq" if quant else "onnx",
            spec=graphs_meta[0]["spec"],
            key=key,
            model_config=_config(kind, model, vae),
            stream_config=stream,
            weights=weights,
            device=device,
            opset=opset,
            parity=parity,
            rope_positions=rope_positions,
            extra={
                "graph": kind,
                "quant": quant,
                "exporter": "dynamo" if dynamo else "torchscript",
                "dtype": dtype,
                "latent_size": list(latent_size) if latent_size else None,
                "batch_size": batch_size,
                "calibration": calibration if quant else None,
                "graphs": graphs_meta,
                "files": digests,
                "export_s": round(time.perf_counter() - t0, 2),
                "peak_rss_bytes": peak_rss_bytes(),
                "notes": _notes(kind),
            },
        )
        mf.write_manifest(out_dir, man)
        return {**man, "reused": False}


def _config(kind: str, model, vae):
    if kind != "vae-step":
        return model.cfg
    # diffusers' private keys (e.g. _use_default_values, a list in set order) would break the key
    return {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}


def _notes(kind: str) -> list[str]:
    if kind == "vae-step":
        return ["latent frames 0 and 1 are decoded eagerly; the graph decodes latent frames >= 2"]
    return [
        "t_freq (the sinusoidal timestep embedding) is computed on the host in float64: no DOUBLE in the graph",
        "RoPE cos/sin table baked in with rope_positions rows, indexed by frame_offset; the host refuses "
        "frame_offset + F > rope_positions",
        "the ring-buffer write, the plan and the commit stay on the host",
    ]
