"""ONNX export of a graph module (``export_onnx``) and the ONNX clean-ups every graph gets.

The module must be *functional*: state (the KV cache, the VAE's causal-conv cache) comes in as
inputs and goes out as outputs. In-place writes into tensors that outlive the forward (a ring
buffer's ``index_copy_``) are refused before export: exporters drop them (dynamo) or bake them
wrong (TorchScript), silently. The refusal runs the module once under a dispatch probe, and that
same forward is the eager reference for the parity measured on the exported graph.

After export: local functions are inlined, initializers with equal contents are stored once (the
dynamo exporter keeps one copy per inlined forward of a chunk graph), doc strings and metadata
are stripped, and a graph over 2 GB keeps its weights in ``<name>.data`` beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from arvid.runtime.files import path_error
from arvid.runtime.optional import require

from .onnx_check import TWO_GB, _onnx

DEFAULT_OPSET = 18  # dynamo's native opset; TensorRT 10's parser reads 9..20


def _ort():
    return require("onnxruntime", purpose="the ONNX Runtime engine")


# -- the in-place probe -----------------------------------------------------------------------
class _MutationProbe(TorchDispatchMode):
    """Records mutating aten ops whose target storage was not created inside the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.created: set[int] = set()
        self.offenders: list[str] = []

    @staticmethod
    def _ptr(t: torch.Tensor) -> int:
        try:
            return t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return -1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        schema = func._schema
        if schema.is_mutable:
            values = list(args) + [kwargs.get(a.name) for a in schema.arguments[len(args) :]]
            for arg, value in zip(schema.arguments, values, strict=False):
                written = arg.alias_info is not None and arg.alias_info.is_write
                tensor = isinstance(value, torch.Tensor) and value.numel() > 0
                if written and tensor and self._ptr(value) not in self.created:
                    self.offenders.append(str(func.overloadpacket.__name__))
        out = func(*args, **kwargs)
        # Fresh storage only: views (returns with alias info) share their base's storage.
        for t, ret in zip(out if isinstance(out, (tuple, list)) else (out,), schema.returns, strict=False):
            if isinstance(t, torch.Tensor) and ret.alias_info is None:
                self.created.add(self._ptr(t))
        return out


def refuse_inplace(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, name: str = "graph"):
    """Run ``module(*example_inputs)`` once; raise ``ValueError`` if it writes in place into any
    tensor that outlives the forward (inputs, buffers, parameters, a cache held by the module).

    Returns the eager outputs (a tuple), the reference for export parity."""
    clones = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
    probe = _MutationProbe()
    with torch.no_grad(), probe:
        out = module(*clones)
    if probe.offenders:
        ops = ", ".join(sorted(set(probe.offenders)))
        raise ValueError(
            f"{name}: the in-place ring-buffer cache cannot be exported (aten {ops} writes into state that "
            "outlives the forward; exporters drop or mis-bake such writes): export a functional graph "
            "whose cache comes in as an input and whose new K/V come out (arvid.export.graphs)"
        )
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# -- ONNX clean-ups ---------------------------------------------------------------------------
def dedup_initializers(model) -> int:
    """Store initializers with equal dtype, shape and bytes once; returns how many were removed."""
    from onnx import numpy_helper

    graph = model.graph
    keep: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    removed = []
    for init in graph.initializer:
        if init.data_location == 1:  # EXTERNAL: leave alone
            continue
        raw = init.raw_data if init.raw_data else numpy_helper.to_array(init).tobytes()
        digest = hashlib.sha256(raw + f"|{init.data_type}|{tuple(init.dims)}".encode()).hexdigest()
        if digest in by_digest:
            keep[init.name] = by_digest[digest]
            removed.append(init)
        else:
            by_digest[digest] = init.name
    if not keep:
        return 0
    for init in removed:
        graph.initializer.remove(init)
    drop = set(keep)
    for vi in list(graph.value_info):
        if vi.name in drop:
            graph.value_info.remove(vi)
    graph_inputs = [i for i in graph.input if i.name in drop]
    for i in graph_inputs:
        graph.input.remove(i)

    def rename(g) -> None:
        for node in g.node:
            for j, name in enumerate(node.input):
                if name in keep:
                    node.input[j] = keep[name]
            for attr in node.attribute:
                if attr.g.node:
                    rename(attr.g)
                for sub in attr.graphs:
                    rename(sub)

    rename(graph)
    return len(removed)


def strip_metadata(model) -> None:
    """Doc strings, metadata props and the exporter's per-node stack traces go."""
    model.doc_string = ""
    del model.metadata_props[:]
    model.graph.doc_string = ""
    del model.graph.metadata_props[:]

    def clean(g) -> None:
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.g.node:
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)
        for vi in [*g.input, *g.output, *g.value_info]:
            vi.doc_string = ""
            del vi.metadata_props[:]
        for init in g.initializer:
            init.doc_string = ""
            del init.metadata_props[:]

    clean(model.graph)


def model_bytes(model) -> int:
    """Bytes of the model's inline weights plus its structure."""
    return sum(len(i.raw_data) for i in model.graph.initializer) + model.graph.ByteSize() // 2


def save_onnx(model, path: str | Path, *, external: bool | None = None) -> dict:
    """Save atomically (temporary directory + renames, the ``.onnx`` last); weights go to
    ``<name>.data`` when ``external`` or, by default, when the model is over 2 GB."""
    path = Path(path)
    try:
        return _save_onnx(model, path, external=external)
    except OSError as e:  # a full disk names the graph, not the temporary folder (or nothing at all)
        if getattr(e, "worded", False):
            raise
        raise path_error(e, path, "cannot write") from e


def _save_onnx(model, path: Path, *, external: bool | None) -> dict:
    onnx = _onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(len(i.raw_data) for i in model.graph.initializer)
    forced = bool(external)
    external = size >= TWO_GB - 2**26 if external is None else external
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_path = Path(tmp) / path.name
        if external:
            onnx.save_model(
                model,
                str(tmp_path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=0 if forced else 1024,
            )
            onnx.checker.check_model(str(tmp_path))
            if not (Path(tmp) / data_name).is_file():
                raise ValueError(f"{path.name}: external data was requested but no tensor was large enough to move")
            # The old graph goes first: a crash between the two renames leaves no .onnx (not reused),
            # never an old graph beside new weights.
            path.unlink(missing_ok=True)
            os.replace(Path(tmp) / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp_path))
            onnx.checker.check_model(str(tmp_path))
            (path.parent / data_name).unlink(missing_ok=True)
        os.replace(tmp_path, path)
    return {"external_data": data_name if external else None, "weights_bytes": size}


# -- export -----------------------------------------------------------------------------------
def _names(spec, attr: str, n: int, prefix: str) -> list[str]:
    items = getattr(spec, attr, None) if spec is not None else None
    if items is None and isinstance(spec, dict):
        items = spec.get(attr)
    if not items:
        return [f"{prefix}{i}" for i in range(n)]
    return [t["name"] if isinstance(t, dict) else t.name for t in items]


def _torch_export(module, args, onnx_path: Path, *, dynamo: bool, opset: int, input_names, output_names):
    _onnx()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        return _torch_export_quiet(
            module, args, onnx_path, dynamo=dynamo, opset=opset, input_names=input_names, output_names=output_names
        )
    finally:
        quiet.setLevel(level)


def _torch_export_quiet(module, args, onnx_path: Path, *, dynamo: bool, opset: int, input_names, output_names):
    onnx = _onnx()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(
                module,
                tuple(args),
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                optimize=True,
                verify=False,
                report=False,
            )
            return prog.model_proto
        torch.onnx.export(
            module,
            tuple(args),
            str(onnx_path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            do_constant_folding=True,
        )
        return onnx.load(str(onnx_path))


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    spec,
    path: str | Path,
    *,
    dynamo: bool = True,
    opset: int = DEFAULT_OPSET,
    external: bool | None = None,
    parity: bool = True,
    reference: Sequence[torch.Tensor] | None = None,
    name: str | None = None,
) -> dict:
    """Export ``module`` (functional; I/O named by ``spec``) to ``path``.

    Parameters
    ----------
    spec : a ``GraphSpec`` (or dict / ``None``) naming the inputs and outputs in order.
    dynamo : ``torch.onnx.export(dynamo=True)`` (default); ``False`` uses the TorchScript exporter
        (what modelopt's Q/DQ models need).
    parity : run the exported graph in ONNX Runtime (CPU) on the example inputs and measure the
        max abs difference per output against the eager forward (``reference`` if given).

    Returns
    -------
    ``{"path", "nodes", "opset", "exporter", "deduplicated_initializers", "external_data",
    "weights_bytes", "export_s", "parity": {output: max_abs_diff} | {"skipped": why}}``.
    """
    _onnx()  # the missing-dependency message before any work
    path = Path(path)
    name = name or getattr(spec, "name", None) or type(module).__name__
    module = module.eval()
    eager = refuse_inplace(module, example_inputs, name=name)
    input_names = _names(spec, "inputs", len(example_inputs), "input_")
    output_names = _names(spec, "outputs", len(eager), "output_")
    if len(input_names) != len(example_inputs) or len(output_names) != len(eager):
        raise ValueError(
            f"{name}: spec names {len(input_names)} inputs / {len(output_names)} outputs, the module takes "
            f"{len(example_inputs)} and returns {len(eager)}"
        )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model = _torch_export(
                module,
                example_inputs,
                Path(tmp) / "ts.onnx",
                dynamo=dynamo,
                opset=opset,
                input_names=input_names,
                output_names=output_names,
            )
        except Exception as e:
            kind = "dynamo" if dynamo else "TorchScript"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{name}: the {kind} ONNX exporter failed: {first[:300]}") from e
    from onnx import inliner

    model = inliner.inline_local_functions(model)
    deduped = dedup_initializers(model)
    strip_metadata(model)
    model.producer_name = "arvid"
    model.producer_version = ""
    saved = save_onnx(model, path, external=external)
    export_s = time.perf_counter() - t0
    opset_used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    result = {
        "path": str(path),
        "nodes": len(model.graph.node),
        "opset": opset_used,
        "exporter": "dynamo" if dynamo else "torchscript",
        "deduplicated_initializers": deduped,
        "export_s": round(export_s, 3),
        **saved,
    }
    del model
    if parity:
        ref = tuple(reference) if reference is not None else eager
        result["parity"] = measure_parity(path, example_inputs, ref, output_names)
    return result


def measure_parity(path, inputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], output_names=None) -> dict:
    """Max abs difference per output of the ONNX graph in ORT (CPU) against ``reference``."""
    from .ort_engine import OrtGraph

    if any(isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 for x in inputs):
        return {"skipped": "bf16 graph: ONNX Runtime's CPU provider has no bf16 Conv; measure on a GPU runtime"}
    try:
        graph = OrtGraph(path, providers=["CPUExecutionProvider"])
        outs = graph(*inputs)
    except Exception as e:  # parity is a measurement; its failure is recorded, not fatal
        return {"skipped": f"ONNX Runtime could not run it: {str(e).splitlines()[0][:200]}"}
    names = output_names or graph.output_names
    return {
        n: float((o.float() - r.detach().cpu().float()).abs().max()) if o.numel() else 0.0
        for n, o, r in zip(names, outs, reference, strict=True)
    }
