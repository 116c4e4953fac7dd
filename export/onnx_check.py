"""TensorRT-readiness of an ONNX graph, checked on the CPU (``arvid export check MODEL.onnx``).

TensorRT cannot be installed on this project's machines, so what its ONNX parser would refuse is
checked statically, against the parser's published operator table (:mod:`.trt_onnx_ops`):

* ``double``: no DOUBLE tensors (initializers, inputs / outputs / inferred values, ``Cast`` or
  ``Constant`` producing DOUBLE): TensorRT has no float64.
* ``custom-domain``: every node in the default ONNX domain (``trt::``, ``com.microsoft`` or
  exporter function domains are not standard operators).
* ``dynamic-shape``: graph inputs and outputs fully static (one engine profile, no dim params).
* ``attention-mask``: the masks of opset-23 ``Attention`` nodes are 4-D (ORT broadcasts only the
  first two mask dims; TensorRT's importer expects the full rank).
* ``unsupported-op`` / ``opset``: each operator in the parser's supported list, the opset in its range.
* ``external-data``: a model over 2 GB keeps its weights in external data (protobuf's limit), and
  every external data file the graph names is beside it and holds the byte ranges it names.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from arvid.runtime.optional import MissingDependencyError, require  # noqa: F401  (export's modules import it here)

from .trt_onnx_ops import TABLES

TWO_GB = 2**31
STANDARD_DOMAINS = ("", "ai.onnx")


def _onnx():
    return require("onnx", purpose="ONNX export")


@dataclasses.dataclass
class Problem:
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclasses.dataclass
class CheckReport:
    path: str
    target: str
    opset: int | None
    nodes: int
    op_counts: dict[str, int]
    size_bytes: int
    external_data: bool
    problems: list[Problem]

    @property
    def ready(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        base = f"{self.path}: opset {self.opset}, {self.nodes} nodes, {len(self.op_counts)} op types"
        if self.ready:
            return f"{base}: ready for TensorRT {self.target}"
        kinds = Counter(p.kind for p in self.problems)
        detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        return f"{base}: NOT ready for TensorRT {self.target}: {len(self.problems)} problem(s) ({detail})"

    def lines(self) -> list[str]:
        return [self.summary(), *(f"  {p}" for p in self.problems)]

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "target": self.target,
            "ready": self.ready,
            "opset": self.opset,
            "nodes": self.nodes,
            "op_counts": self.op_counts,
            "size_bytes": self.size_bytes,
            "external_data": self.external_data,
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }


def _load(model_or_path):
    onnx = _onnx()
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise ValueError(f"no ONNX file at {path}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError and friends
            raise ValueError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from None
        return model, str(path), path.stat().st_size
    return model_or_path, "<model>", model_or_path.ByteSize()


def _all_graphs(graph):
    """The graph and its subgraphs (If / Loop / Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_graphs(attr.g)
            for g in attr.graphs:
                yield from _all_graphs(g)


def check_onnx(model_or_path, *, target: str = "10") -> CheckReport:
    """Check an ONNX model (a path or a ``ModelProto``) for TensorRT ``target`` ("10"; 11 parses what
    10 does and more, so "11" is checked against the same table)."""
    onnx = _onnx()
    from onnx import TensorProto

    key = target.split(".")[0]
    if key == "11":
        key = "10"
    if key not in TABLES:
        raise ValueError(f"no TensorRT operator table for version {target!r}; known: {sorted(TABLES)} and 11")
    supported, (op_lo, op_hi), source = TABLES[key]
    model, name, file_size = _load(model_or_path)
    problems: list[Problem] = []
    double = TensorProto.DOUBLE

    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    if opset is not None and not op_lo <= opset <= op_hi:
        problems.append(Problem("opset", f"opset {opset} outside {op_lo}..{op_hi} ({source})"))

    # Inferred value types: DOUBLE intermediates, Attention mask ranks.
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # an uninferable graph is still checked node by node
        inferred = model
    vtypes = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        vtypes[vi.name] = vi.type.tensor_type

    external = False
    total_init = 0
    ops: Counter[str] = Counter()
    nodes = 0
    data_end: dict[str, int] = {}  # external data file -> the largest offset + length a tensor names
    for g in _all_graphs(model.graph):
        for init in g.initializer:
            if init.data_location == TensorProto.EXTERNAL:
                external = True
                where = {e.key: e.value for e in init.external_data}
                loc = where.get("location", "")
                end = int(where.get("offset", 0)) + int(where.get("length", 0))
                data_end[loc] = max(data_end.get(loc, 0), end)
            n = 1
            for d in init.dims:
                n *= d
            total_init += n * max(1, _itemsize(init.data_type))
            if init.data_type == double:
                problems.append(Problem("double", f"initializer {init.name!r} is DOUBLE"))
        for node in g.node:
            nodes += 1
            ops[node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"] += 1
            label = f"{node.op_type} {node.name!r}" if node.name else node.op_type
            if node.domain not in STANDARD_DOMAINS:
                problems.append(Problem("custom-domain", f"{label} is in domain {node.domain!r}"))
                continue
            if node.op_type not in supported:
                problems.append(Problem("unsupported-op", f"{label} is not in the parser's list ({source})"))
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to == double:
                    problems.append(Problem("double", f"{label} casts to DOUBLE"))
            elif node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.t.data_type == double:
                        problems.append(Problem("double", f"{label} makes a DOUBLE constant"))
            elif node.op_type == "Attention" and len(node.input) > 3 and node.input[3]:
                tt = vtypes.get(node.input[3])
                rank = len(tt.shape.dim) if tt is not None and tt.HasField("shape") else None
                if rank != 4:
                    problems.append(Problem("attention-mask", f"{label} mask {node.input[3]!r} has rank {rank}, not 4"))
    seen_double = {p.message.split("'")[1] for p in problems if p.kind == "double" and "'" in p.message}
    for vname, tt in vtypes.items():
        if tt.elem_type == double and vname not in seen_double:
            problems.append(Problem("double", f"value {vname!r} is DOUBLE"))
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        bad = [d.dim_param or "?" for d in dims if not d.HasField("dim_value") or d.dim_value <= 0]
        if not vi.type.tensor_type.HasField("shape") or bad:
            problems.append(Problem("dynamic-shape", f"{vi.name!r} has non-static dims {bad or 'unknown rank'}"))
    for f in model.functions:
        problems.append(Problem("custom-domain", f"local function {f.domain}::{f.name} (inline it before TensorRT)"))
    if isinstance(model_or_path, (str, Path)):
        problems += _external_data_problems(Path(model_or_path).parent, data_end)
    if total_init >= TWO_GB and not external:
        problems.append(
            Problem("external-data", f"{total_init / 2**30:.2f} GiB of weights inline; over 2 GB needs external data")
        )
    return CheckReport(
        path=name,
        target=target,
        opset=opset,
        nodes=nodes,
        op_counts=dict(sorted(ops.items())),
        size_bytes=max(file_size, total_init),
        external_data=external,
        problems=problems,
    )


def _external_data_problems(folder: Path, data_end: dict[str, int]) -> list[Problem]:
    """Each external data file the graph names is there, beside it, and holds every byte range named."""
    problems = []
    for loc, end in sorted(data_end.items()):
        path = folder / loc
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
            problems.append(Problem("external-data", f"external data location {loc!r} is not a file beside the graph"))
        elif not path.is_file():
            problems.append(Problem("external-data", f"{loc} (the weights) is missing beside the graph"))
        elif path.stat().st_size < end:
            size = path.stat().st_size
            problems.append(Problem("external-data", f"{loc} holds {size} bytes; the graph reads up to byte {end}"))
    return problems


def _itemsize(data_type: int) -> int:
    from onnx import helper

    try:
        return helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except Exception:  # float8 / int4 kinds without a numpy dtype
        return 1
