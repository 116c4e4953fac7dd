"""ONNX export of a graph module (``export_onnx``) and the ONNX clean-ups every graph gets.

The module must be *functional*: state (the KV cache, the VAE's causal-conv cache) comes in as
inputs and goes out as outputs. In-place writes into tensors that outlive the forward (a ring
buffer's ``index_copy_``) are refused before export: exporters drop them (dynamo) or bake them
wrong (TorchScript), silently. The refusal runs the module once under a dispatch probe, and that
same forward is the eager reference for the parity measured on the exported graph.

After export the graph stays an ``onnx_ir`` model, whose weights are the module's own tensors (no copy):
local functions are inlined, initializers with equal contents are stored once (the dynamo exporter
keeps one copy per inlined forward of a chunk graph), doc strings and metadata are stripped, and every
graph, tiny or 1.3B, is written with its weights in ``<name>.onnx.data`` beside it, tensor by tensor.
No step builds the whole model as one protobuf, whose 2 GB limit the 1.3B model's weights pass.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from arvid.runtime.files import path_error
from arvid.runtime.optional import require

from .onnx_check import _onnx
from .parity import max_abs_diff, relative_l2, too_slow_for_parity
from .progress import stage

DEFAULT_OPSET = 18  # dynamo's native opset; TensorRT 10's parser reads 9..20
# Initializers of at least this many bytes go to the external data file, in every graph: the tiny graphs
# of the tests take the same path as the 1.3B model's 2.8 GB. Smaller ones (norm scales, shapes) stay inline.
EXTERNAL_MIN_BYTES = 1024


def _onnx_ir():
    return require("onnx_ir", purpose="ONNX export")


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

    Returns the eager outputs (a tuple), the reference for export parity. The inputs are not cloned:
    the full KV cache of the 1.3B step is 3.4 GB in bf16, and a module that writes into them is refused
    (the example inputs of a refused export are not used again)."""
    probe = _MutationProbe()
    with torch.no_grad(), probe:
        out = module(*example_inputs)
    if probe.offenders:
        ops = ", ".join(sorted(set(probe.offenders)))
        raise _inplace_error(name, ops)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _inplace_error(name: str, ops: str) -> ValueError:
    return ValueError(
        f"{name}: the in-place ring-buffer cache cannot be exported (aten {ops} writes into state that "
        "outlives the forward; exporters drop or mis-bake such writes): export a functional graph "
        "whose cache comes in as an input and whose new K/V come out (arvid.export.graphs)"
    )


def refuse_inplace_traced(program, *, name: str = "graph") -> None:
    """The in-place refusal of :func:`refuse_inplace`, read off a ``torch.export`` program instead of a run.

    A mutating aten op whose written argument is (a view of) a placeholder (a parameter, buffer, lifted
    tensor constant or user input: anything that outlives the forward) raises the same ``ValueError``.
    Nothing is computed: the 1.3B step in bf16 runs at 0.3 GFLOP/s on an AVX2 CPU (measured, 4680 x 1536
    x 1536 matmul), so its 28 TFLOP eager forward would take a day where no parity can use it anyway."""

    def base(node):
        while node.op == "call_function" and _aliases_first_arg(node.target):
            node = node.args[0]
        return node

    offenders = []
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        values = list(node.args) + [node.kwargs.get(a.name) for a in schema.arguments[len(node.args) :]]
        for arg, value in zip(schema.arguments, values, strict=False):
            written = arg.alias_info is not None and arg.alias_info.is_write
            if written and hasattr(value, "op") and base(value).op == "placeholder":
                offenders.append(str(node.target.overloadpacket.__name__))
    if offenders:
        ops = ", ".join(sorted(set(offenders)))
        raise _inplace_error(name, ops)


def _aliases_first_arg(target) -> bool:
    """A view op: its output aliases its first argument without writing it (view, slice, transpose...)."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.returns or not schema.arguments:
        return False
    first, out = schema.arguments[0].alias_info, schema.returns[0].alias_info
    return first is not None and out is not None and not first.is_write and first.before_set == out.before_set


# -- ONNX clean-ups and writing ----------------------------------------------------------------
def dedup_initializers(model) -> int:
    """Store initializers of equal dtype, shape and bytes once (each graph of an ``onnx_ir`` model, in
    place); returns how many were removed. Compared by sha256 over one tensor's bytes at a time.

    onnx_ir's ``DeduplicateHashedInitializersPass`` hashes ``numpy()`` views, which fails on the
    non-contiguous arrays the dynamo exporter leaves as initializers: checked again with onnx_ir 1.1.0 on the
    tiny step graph ("ValueError: ndarray is not C-contiguous"). Every other clean-up is onnx_ir's own pass
    (:func:`clean_up`); this one goes when that pass reads such tensors."""
    import hashlib

    removed = 0
    for graph in model.graphs():
        seen: dict[tuple, object] = {}
        for value in tuple(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or value.is_graph_input() or value.is_graph_output():
                continue
            key = (tensor.dtype, tuple(tensor.shape.numpy()), hashlib.sha256(tensor.tobytes()).digest())
            keep = seen.setdefault(key, value)
            if keep is not value:
                value.replace_all_uses_with(keep)
                graph.initializers.pop(value.name)
                removed += 1
    return removed


def clean_up(model) -> int:
    """The passes every exported graph gets, on the ``onnx_ir`` model in place: local functions inlined,
    initializers of equal contents stored once, metadata and doc strings dropped. Returns how many
    initializers the dedup removed."""
    from onnx_ir.passes import common

    common.InlinePass()(model)
    deduped = dedup_initializers(model)
    common.ClearMetadataAndDocStringPass()(model)
    common.RemoveUnusedFunctionsPass()(model)
    model.producer_name, model.producer_version = "arvid", ""
    return deduped


def _write_progress(model, what: str):
    """A progress bar over the bytes written (stderr; none off a terminal), as ``ir.save``'s callback."""
    from tqdm import tqdm

    sizes = [v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None]
    bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=what, leave=False, disable=None, file=sys.stderr)

    def callback(tensor, info) -> None:
        bar.update(tensor.nbytes)

    return bar, callback


def save_onnx(model, path: str | Path, *, log: Callable[[str], None] = lambda s: None) -> dict:
    """Write an ``onnx_ir`` model to ``path`` with its weights in ``<name>.onnx.data``, atomically.

    Written into a temporary directory beside ``path``, checked with ``onnx.checker`` (which reads the
    graph, not the weights), then moved: the ``.data`` first, the ``.onnx`` last (a crash between the two
    leaves no ``.onnx``, so nothing is reused; never an old graph beside new weights)."""
    path = Path(path)
    try:
        return _save_onnx(model, path, log=log)
    except OSError as e:  # a full disk names the graph, not the temporary folder (or nothing at all)
        if getattr(e, "worded", False):
            raise
        raise path_error(e, path, "cannot write") from e


def _save_onnx(model, path: Path, *, log: Callable[[str], None]) -> dict:
    onnx, ir = _onnx(), _onnx_ir()
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_path = Path(tmp) / path.name
        bar, callback = _write_progress(model, f"writing {path.name}")
        with bar, stage(log, f"{path.name}: write {weights / 2**20:.0f} MiB"):
            # one tensor in flight at a time: the bytes of the write stay far below the weights'
            ir.save(
                model,
                tmp_path,
                external_data=data_name,
                size_threshold_bytes=EXTERNAL_MIN_BYTES,
                callback=callback,
                max_workers=1,
            )
        onnx.checker.check_model(str(tmp_path))
        external = (Path(tmp) / data_name).is_file()
        path.unlink(missing_ok=True)
        if external:
            os.replace(Path(tmp) / data_name, path.parent / data_name)
        else:  # a graph without any initializer of EXTERNAL_MIN_BYTES
            (path.parent / data_name).unlink(missing_ok=True)
        os.replace(tmp_path, path)
    return {"external_data": data_name if external else None, "weights_bytes": weights}


def rewrite_onnx(path: str | Path, rewrite: Callable) -> object:
    """Apply ``rewrite(model_proto)`` to the graph of a written export and save it back atomically.

    Loads the graph without its external weights (which stay where they are: the rewrite changes nodes,
    not weights; small new initializers stay inline), so it costs the graph's size, not the model's.
    Returns what ``rewrite`` returns."""
    from arvid.runtime.files import atomic_write

    onnx = _onnx()
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    result = rewrite(model)

    def write(tmp: Path) -> None:
        onnx.save_model(model, str(tmp))
        onnx.checker.check_model(str(tmp))

    atomic_write(path, write)
    return result


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
    """The exported graph as an ``onnx_ir`` model. dynamo: the program's own IR model, whose initializers
    wrap the module's tensors; TorchScript: its file (``onnx_path``, external data beside it where the
    exporter chose so) loaded lazily by ``onnx_ir``, so ``onnx_path`` must outlive the model's use."""
    ir = _onnx_ir()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:  # ``module`` is the torch.export program here (export_onnx checked it for in-place writes)
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
            return prog.model
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
        return ir.load(str(onnx_path))


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | Callable[[], Sequence[torch.Tensor]],
    spec,
    path: str | Path,
    *,
    dynamo: bool = True,
    opset: int = DEFAULT_OPSET,
    parity: bool = True,
    reference: Sequence[torch.Tensor] | None = None,
    name: str | None = None,
    trace_inputs: Sequence[torch.Tensor] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Export ``module`` (functional; I/O named by ``spec``) to ``path``, weights in ``<name>.onnx.data``.

    Parameters
    ----------
    example_inputs : the inputs the eager reference and the parity run on, or a function that makes
        them, called only when something runs the module (the TorchScript exporter, the parity).
    spec : a ``GraphSpec`` (or dict / ``None``) naming the inputs and outputs in order.
    dynamo : ``torch.onnx.export(dynamo=True)`` (default); ``False`` uses the TorchScript exporter
        (what modelopt's Q/DQ models need).
    parity : run the exported graph in ONNX Runtime (CPU) on the example inputs and measure the
        max abs difference per output against the eager forward.
    reference : the outputs of :func:`refuse_inplace` on ``module`` and ``example_inputs`` where the caller
        ran it already (Q/DQ export: the fake-quant forward it measures against): the module is then
        neither probed nor run again.
    trace_inputs : what the dynamo trace runs on instead of ``example_inputs``: tensors of the same shapes
        and dtypes whose values are never read (``placeholder_inputs()`` of a graph of
        :mod:`arvid.export.graphs`: uninitialised, so a 3.45 GB example cache costs no memory unless
        the parity runs).
    log : called with a line when each stage (eager reference, trace, passes, write, parity) starts
        and ends, with its time.

    Returns
    -------
    ``{"path", "nodes", "opset", "exporter", "deduplicated_initializers", "external_data",
    "weights_bytes", "export_s", "stages_s", "parity": {output: max_abs_diff} | {"skipped": why},
    "parity_rel_l2": {output: ||onnx - eager|| / ||eager||}}``.
    """
    _onnx(), _onnx_ir()  # the missing-dependency message before any work
    path = Path(path)
    name = name or getattr(spec, "name", None) or type(module).__name__
    module = module.eval()
    times: dict[str, float] = {}
    made: list[tuple[torch.Tensor, ...]] = []

    def inputs() -> tuple[torch.Tensor, ...]:
        """The example inputs, made once and only when the module runs."""
        if not made:
            made.append(tuple(example_inputs() if callable(example_inputs) else example_inputs))
        return made[0]

    @contextlib.contextmanager
    def timed(key: str, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with stage(log, f"{path.name}: {what}"):
            yield
        times[key] = round(time.perf_counter() - t0, 2)

    eager = tuple(reference) if reference is not None else None
    if not dynamo and eager is None:  # the TorchScript exporter runs the module: probe that run first
        with timed("eager", "eager reference (and the in-place probe)"):
            eager = refuse_inplace(module, inputs(), name=name)
    traced_on = tuple(trace_inputs) if dynamo and trace_inputs is not None else inputs()
    input_names = _names(spec, "inputs", len(traced_on), "input_")
    output_names = _names(spec, "outputs", len(eager) if eager is not None else 0, "output_")
    if len(input_names) != len(traced_on) or (eager is not None and len(output_names) != len(eager)):
        raise ValueError(
            f"{name}: spec names {len(input_names)} inputs / {len(output_names)} outputs, the module takes "
            f"{len(traced_on)} and returns {len(eager)}"
        )
    t0 = time.perf_counter()
    kind = "dynamo" if dynamo else "TorchScript"
    with tempfile.TemporaryDirectory() as tmp:
        with timed("trace", f"trace ({kind})"):
            try:
                traced = torch.export.export(module, traced_on, strict=False) if dynamo else module
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"{name}: the {kind} ONNX exporter failed: {first[:300]}") from e
            if dynamo:
                refuse_inplace_traced(traced, name=name)
            try:
                model = _torch_export(
                    traced,
                    traced_on,
                    Path(tmp) / "ts.onnx",
                    dynamo=dynamo,
                    opset=opset,
                    input_names=input_names or None,
                    output_names=output_names or None,
                )
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"{name}: the {kind} ONNX exporter failed: {first[:300]}") from e
        output_names = output_names or [v.name for v in model.graph.outputs]
        with timed("passes", "passes (inline, dedup, metadata)"):
            deduped = clean_up(model)
        needs = ort_memory_bytes(model, traced_on)
        saved = save_onnx(model, path, log=log)
    export_s = time.perf_counter() - t0
    opset_used = model.opset_imports.get("", opset)
    result = {
        "path": str(path),
        "nodes": sum(1 for _ in model.graph),
        "opset": opset_used,
        "exporter": "dynamo" if dynamo else "torchscript",
        "deduplicated_initializers": deduped,
        "export_s": round(export_s, 3),
        "ort_needs_bytes": needs,
        **saved,
    }
    del model
    if parity:
        skip = ort_unavailable(traced_on, needs) or _too_slow(module, traced_on)
        if skip:
            result["parity"], result["parity_rel_l2"] = {"skipped": skip}, {}
        else:
            if eager is None:
                with timed("eager", "eager reference"), torch.no_grad():
                    eager = module(*inputs())
                    eager = tuple(eager) if isinstance(eager, (tuple, list)) else (eager,)
            with timed("parity", "parity in ONNX Runtime"):
                result["parity"], result["parity_rel_l2"] = measure_parity(path, inputs(), eager, output_names)
    result["stages_s"] = times
    return result


def _too_slow(module, inputs: Sequence[torch.Tensor]) -> str | None:
    """:func:`~arvid.export.parity.too_slow_for_parity` for a graph of :mod:`arvid.export.graphs` (which
    knows its FLOPs), the same rule as the AOTInductor export's; other modules are not estimated."""
    flops = getattr(module, "flops", None)
    if flops is None or not inputs:
        return None
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else inputs[0].dtype
    return too_slow_for_parity(inputs[0].device, dtype, flops())


def ort_memory_bytes(model, inputs: Sequence[torch.Tensor]) -> int:
    """What a parity run in ONNX Runtime's CPU provider needs for an ``onnx_ir`` model, roughly: its own
    copy of the weights, the inputs twice (the caller's and ORT's), the most bytes of values alive at
    once in the graph's order (each from the node that makes it to the last that reads it: what ORT's
    memory planner reuses buffers by; the outputs live to the end), and the eager reference's outputs,
    held beside them.

    Measured on Wan2.1's VAE step at 480x832 (fp32; random weights): "the largest intermediate twice",
    the rule before, let a parity run start that took the machine's last memory (killed at 1.3 GB
    available of 24 GB); with the inputs once this estimate was 12.6 GiB and the run peaked at 19.7 GiB
    RSS over a process already holding those inputs (3.5 GiB), the model and the decoder's warm-up,
    so the inputs count twice (16.1 GiB)."""
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)

    def nbytes(value) -> int:
        if value is None or value.shape is None or value.dtype is None or not value.shape.is_static():
            return 0
        numel = 1
        for d in value.shape.numpy():
            numel *= int(d)
        return numel * value.dtype.itemsize

    nodes = list(model.graph)
    last_read = {v: i for i, node in enumerate(nodes) for v in node.inputs if v is not None}
    outputs = set(model.graph.outputs)
    alive: dict = {}
    live = peak = 0
    for i, node in enumerate(nodes):
        for v in node.outputs:
            alive[v] = nbytes(v)
            live += alive[v]
        peak = max(peak, live)
        for v in (*node.inputs, *node.outputs):
            if v in alive and v not in outputs and last_read.get(v, i) <= i:
                live -= alive.pop(v)
    held = sum(nbytes(v) for v in outputs)
    return weights + 2 * sum(x.nbytes for x in inputs if isinstance(x, torch.Tensor)) + peak + held


def ort_unavailable(inputs: Sequence[torch.Tensor], needs_bytes: int = 0) -> str | None:
    """Why ONNX Runtime (CPU) cannot run the graph here, or ``None``: a bf16 graph, or more memory than is
    free (:func:`ort_memory_bytes`): a parity measurement must not take the machine's last memory with
    the export already written."""
    import psutil

    if any(isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 for x in inputs):
        return "bf16 graph: ONNX Runtime's CPU provider has no bf16 Conv; measure on a GPU runtime"
    available = psutil.virtual_memory().available
    if needs_bytes > 0.9 * available:
        return (
            f"ONNX Runtime would need about {needs_bytes / 2**30:.1f} GiB on the CPU (weights, inputs, the values "
            f"alive at once, the reference outputs); {available / 2**30:.1f} GiB available"
        )
    return None


def ort_outputs(path, inputs: Sequence[torch.Tensor], *, needs_bytes: int = 0) -> tuple[torch.Tensor, ...] | str:
    """The graph's outputs in ONNX Runtime (CPU) on ``inputs``, or why there are none (a string)."""
    from .ort_engine import OrtGraph

    skip = ort_unavailable(inputs, needs_bytes)
    if skip:
        return skip
    try:
        return OrtGraph(path, providers=["CPUExecutionProvider"])(*inputs)
    except Exception as e:  # parity is a measurement; its failure is recorded, not fatal
        return f"ONNX Runtime could not run it: {str(e).splitlines()[0][:200]}"


def measure_parity(
    path, inputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], output_names=None
) -> tuple[dict, dict]:
    """``(max abs, relative L2)`` per output of the ONNX graph in ORT (CPU) against ``reference``; with
    ``{"skipped": why}`` as the first where it could not run."""
    outs = ort_outputs(path, inputs)
    if isinstance(outs, str):
        return {"skipped": outs}, {}
    names = output_names or [f"output_{i}" for i in range(len(outs))]
    return max_abs_diff(outs, reference, names), relative_l2(outs, reference, names)
