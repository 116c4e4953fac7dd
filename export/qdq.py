"""Q/DQ ONNX for INT8 (SmoothQuant) and FP8: modelopt calibration, TorchScript export, FP8 standardization.

nvidia-modelopt fake-quantizes the model's block linears (``arvid.quant.calibrate``; arvid's skip
list keeps the text / time embeddings, the time projection, the head and the patch embedding in
high precision). The TorchScript exporter turns its quantizers into Q/DQ pairs (``dynamo=True``
fails on modelopt models on the CPU). INT8 comes out as standard ``QuantizeLinear`` /
``DequantizeLinear``; FP8 comes out as ``trt::TRT_FP8QuantizeLinear`` / ``TRT_FP8DequantizeLinear``,
which ONNX Runtime refuses and which are not standard ONNX. :func:`standardize_fp8_qdq` rewrites
them to opset-19 ``QuantizeLinear`` / ``DequantizeLinear`` with a ``float8e4m3fn`` zero point,
which both ONNX Runtime and TensorRT's parser read.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .onnx_check import _onnx
from .onnx_export import export_onnx, ort_outputs, rewrite_onnx
from .parity import max_abs_diff

FP8_OPSET = 19  # QuantizeLinear / DequantizeLinear take float8 types from opset 19
TRT_FP8_OPS = {"TRT_FP8QuantizeLinear": "QuantizeLinear", "TRT_FP8DequantizeLinear": "DequantizeLinear"}


def qdq_counts(model) -> dict[str, int]:
    """Q/DQ node counts by ``domain::op`` (the default domain unprefixed)."""
    onnx = _onnx()
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    qdq = [n for n in model.graph.node if n.op_type.endswith("uantizeLinear")]
    c = collections.Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in qdq)
    return dict(sorted(c.items()))


def standardize_fp8_qdq(model) -> int:
    """Rewrite modelopt's ``trt::TRT_FP8{Quantize,Dequantize}Linear`` in place to standard ops.

    Each node keeps its inputs ``(x, scale)`` and gains a zero point: a ``float8e4m3fn`` zero of
    the scale's shape (a scalar for per-tensor scales), shared by all nodes. The ``trt`` opset
    import is dropped and the default opset raised to 19 where it is lower. Returns the number of
    nodes rewritten. (Not checked here: the model may name external weights it has not loaded;
    :func:`~arvid.export.onnx_export.rewrite_onnx` checks the file it writes.)"""
    _onnx()
    from onnx import TensorProto, helper

    graph = model.graph
    zp_name = "arvid_fp8_zero_point"
    rewritten = 0
    for node in graph.node:
        if node.domain != "trt" or node.op_type not in TRT_FP8_OPS:
            continue
        if len(node.input) != 2:
            raise ValueError(f"{node.name}: expected (x, scale) inputs on {node.op_type}, got {len(node.input)}")
        node.op_type = TRT_FP8_OPS[node.op_type]
        node.domain = ""
        node.input.append(zp_name)
        rewritten += 1
    if not rewritten:
        return 0
    # Per-tensor scales (modelopt's FP8 default) -> one scalar zero point; the bytes of e4m3 0.0 are 0x00.
    graph.initializer.append(helper.make_tensor(zp_name, TensorProto.FLOAT8E4M3FN, [], [0]))
    if not any(n.domain == "trt" for n in graph.node):
        kept = [o for o in model.opset_import if o.domain != "trt"]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < FP8_OPSET:
            o.version = FP8_OPSET
    # Stale value_info of the rewritten outputs (typed float by the exporter) would contradict float8.
    outs = {o for n in graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    for vi in [v for v in graph.value_info if v.name in outs]:
        graph.value_info.remove(vi)
    return rewritten


def calibrate(model: torch.nn.Module, scheme: str, forward_loop: Callable[[torch.nn.Module], None]):
    """modelopt calibration with arvid's skip list (``arvid.quant.calibrate.calibrate_modelopt``)."""
    from arvid.quant.calibrate import calibrate_modelopt

    _check_scheme(scheme)
    return calibrate_modelopt(model, scheme, forward_loop)


def export_qdq(
    graph: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    spec,
    path: str | Path,
    *,
    scheme: str,
    float_reference: Sequence[torch.Tensor] | None = None,
    opset: int = FP8_OPSET,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Export a graph over a modelopt-calibrated model as Q/DQ ONNX (TorchScript exporter).

    Parity is measured in ONNX Runtime (CPU) against the fake-quant eager forward, as max abs
    difference (``parity``) and SQNR (``sqnr_db_vs_fake_quant``; rounding flips at quantization
    boundaries make the max abs jump by one step's effect, see tests/test_export_qdq.py); with
    ``float_reference`` (the float graph's outputs on the same inputs) the latent SQNR of the
    Q/DQ graph against the float model is reported too (``sqnr_db`` per output)."""
    _onnx()
    from arvid.quant.metrics import sqnr_db

    from .onnx_export import refuse_inplace

    _check_scheme(scheme)
    if opset < FP8_OPSET and scheme == "fp8":
        raise ValueError(f"FP8 Q/DQ needs opset >= {FP8_OPSET}, got {opset}")
    path = Path(path)
    fake_quant = refuse_inplace(graph, example_inputs, name=getattr(spec, "name", "graph"))
    res = export_onnx(
        graph, example_inputs, spec, path, dynamo=False, opset=opset, parity=False, reference=fake_quant, log=log
    )
    res["fp8_standardized"] = rewrite_onnx(path, standardize_fp8_qdq) if scheme == "fp8" else 0
    res["qdq_counts"] = qdq_counts(path)
    res["scheme"] = scheme
    if not res["qdq_counts"]:
        raise ValueError(f"{path.name}: no Q/DQ nodes came out: is the model calibrated with modelopt?")
    names = [o["name"] if isinstance(o, dict) else o.name for o in (getattr(spec, "outputs", None) or [])]
    outs = ort_outputs(path, example_inputs, needs_bytes=res["ort_needs_bytes"])  # one ORT session
    res["parity_vs"] = "modelopt fake-quant eager"
    if isinstance(outs, str):
        res["parity"] = {"skipped": outs}
        return res
    keys = names or [f"output_{i}" for i in range(len(outs))]
    res["parity"] = max_abs_diff(outs, fake_quant, keys)
    # A rounding flip (an activation within float error of a quantization boundary) makes the max
    # difference from fake-quant jump to one quantization step's effect; the SQNR says how much of the
    # output that is, beside the quantization noise itself (sqnr_db_vs_float).
    res["sqnr_db_vs_fake_quant"] = {
        k: round(sqnr_db(r.detach().float().cpu(), o.float()), 2)
        for k, o, r in zip(keys, outs, fake_quant, strict=True)
    }
    if float_reference is not None:
        res["sqnr_db_vs_float"] = {
            k: round(sqnr_db(r.float().cpu(), o.float()), 2)
            for k, o, r in zip(keys, outs, float_reference, strict=True)
        }
    return res


CALIBRATION_PROMPTS = 4  # random prompt embeddings when no real ones are given
CALIBRATION_CHUNKS = 2  # latent chunks streamed per prompt (the sink chunk and one in the window)


def calibration_set(
    cfg, stream, latent_size: tuple[int, int], *, prompts=None, frames: int | None = None, seed: int = 0
) -> tuple[Callable, dict]:
    """The one calibration set of every Q/DQ export (``arvid export onnx --quant`` and the ``ort+int8`` /
    ``trt+fp8`` engines): modelopt's forward loop and its record for the manifest and the export key.

    ``prompts``: embeddings ``[1, text_len, text_dim]`` each, or a count of random ones drawn with seed
    ``seed + 7`` (default :data:`CALIBRATION_PROMPTS`); each streamed over ``frames`` latent frames (rounded
    down to whole chunks, at least one; default :data:`CALIBRATION_CHUNKS` chunks) with noise of ``seed``.
    The record names the set, so another set is another artifact."""
    from arvid.quant.calibrate import streaming_forward_loop

    chunk = stream.chunk_frames
    frames = max(chunk, (frames or CALIBRATION_CHUNKS * chunk) // chunk * chunk)
    if prompts is None or isinstance(prompts, int):
        count = CALIBRATION_PROMPTS if prompts is None else prompts
        if count < 1:
            raise ValueError(f"calibration needs at least one prompt, got {count}")
        g = torch.Generator().manual_seed(seed + 7)
        embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g) for _ in range(count)]
        what = f"{count} random embeddings (seed {seed + 7})"
    else:
        embeds = [p.unsqueeze(0) if p.dim() == 2 else p for p in prompts]
        from .manifest import weight_hash

        what = {"embeds_sha256": weight_hash({"e": torch.stack([e.reshape(e.shape[-2:]) for e in embeds])})}
    loop = streaming_forward_loop(embeds, latent_size=latent_size, frames=frames, stream=stream, seed=seed)
    return loop, {"prompts": what, "frames": frames, "seed": seed}


def _check_scheme(scheme: str) -> None:
    from arvid.quant.calibrate import MODELOPT_SCHEMES  # imported when a Q/DQ graph is made, not with export

    if scheme not in MODELOPT_SCHEMES:
        raise ValueError(f"unknown Q/DQ scheme {scheme!r}; choose one of {MODELOPT_SCHEMES}")
