"""export/qdq.py: FP8 Q/DQ standardization and modelopt INT8 SmoothQuant / FP8 Q/DQ ONNX on tiny.

Measured when written (tiny, one forward of 3 frames at t = 500 on random inputs, calibrated on
one prompt x 3 streaming frames): SQNR vs the float model 21.8 dB (INT8 SmoothQuant) / 31.0 dB (FP8).
Static per-tensor INT8 scales from so little calibration data carry poorly to unseen inputs (see
tests/test_quant_modelopt.py); the bound on that only asserts the graph is a quantized version of the
model, not its quality.

ORT against modelopt's fake-quant forward is not a float comparison: wherever an activation lies within
float rounding of a quantization boundary, the two engines' last-bit differences (their GEMM kernels,
chosen by CPU instruction set) round it to neighbouring levels, and that one-step change propagates
through attention to most of the output. Measured 2026-12-07 on this repo's CPU machine (AMD EPYC, AVX2;
onnxruntime 1.32.0, modelopt 0.47.0, torch 2.13.0) over 30 input draws: max |ORT - fake-quant| below
1.5e-6 on 22 (INT8) / 23 (FP8) of them and up to 1.6e-2 / 6.3e-2 on the rest, so the old `< 1e-5` held
on the one draw it checked here and failed with 1.0e-2 on another machine with the same releases.
"""

import copy

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from arvid.export.onnx_check import check_onnx  # noqa: E402
from arvid.export.ort_engine import OrtGraph  # noqa: E402
from arvid.export.qdq import qdq_counts, standardize_fp8_qdq  # noqa: E402
from arvid.runtime import build_model, get_preset  # noqa: E402

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)


def _trt_fp8_model(scale: float):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [scale])
    nodes = [
        helper.make_node("TRT_FP8QuantizeLinear", ["x", "s"], ["q"], domain="trt", name="q"),
        helper.make_node("TRT_FP8DequantizeLinear", ["q", "s"], ["y"], domain="trt", name="dq"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[s])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt", 1)])


def test_fp8_standardization_runs_in_ort(tmp_path):
    scale = 0.05
    model = _trt_fp8_model(scale)
    assert {p.kind for p in check_onnx(model).problems} >= {"custom-domain"}
    assert standardize_fp8_qdq(model) == 2
    assert qdq_counts(model) == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    assert [o.domain for o in model.opset_import] == [""] and model.opset_import[0].version == 19
    onnx.checker.check_model(model)
    assert check_onnx(model).ready, check_onnx(model).lines()
    onnx.save(model, tmp_path / "fp8.onnx")
    x = torch.randn(4, 8) * 3
    (y,) = OrtGraph(tmp_path / "fp8.onnx")(x)
    ref = (x / scale).to(torch.float8_e4m3fn).float() * scale  # e4m3 round trip, saturating (|x|/s < 448 here)
    torch.testing.assert_close(y, ref, atol=0, rtol=0)
    assert standardize_fp8_qdq(model) == 0  # idempotent


class _FullForward(nn.Module):
    """A stateless forward (no cache) of the tiny DiT: enough to test the Q/DQ export path."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, t, text):
        return self.model(x, t, text)


@pytest.fixture(scope="session")
def qdq_exports(tmp_path_factory):
    pytest.importorskip("modelopt.torch.quantization")
    from arvid.export.qdq import calibrate, export_qdq
    from arvid.quant.calibrate import streaming_forward_loop

    out = tmp_path_factory.mktemp("qdq")
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g)]
    inputs = (
        torch.randn(1, 3, TINY.model.in_dim, *HW, generator=g),
        torch.full((1, 3), 500.0),
        torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g),
    )
    base = build_model(TINY.model, seed=0)
    with torch.no_grad():
        ref = (_FullForward(base)(*inputs),)
    results = {}
    for scheme in ("int8-smoothquant", "fp8"):
        q = calibrate(copy.deepcopy(base), scheme, streaming_forward_loop(calib, latent_size=HW, frames=3))
        results[scheme] = export_qdq(
            _FullForward(q), inputs, None, out / f"{scheme}.onnx", scheme=scheme, float_reference=ref
        )
        results[scheme]["models"] = (_FullForward(base), _FullForward(q))
    return results


def _inputs(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 3, TINY.model.in_dim, *HW, generator=g),
        torch.full((1, 3), 500.0),
        torch.randn(1, TINY.model.text_len, TINY.model.text_dim, generator=g),
    )


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8-smoothquant", "fp8"])
def test_modelopt_qdq_export(qdq_exports, scheme):
    res = qdq_exports[scheme]
    linears = TINY.model.num_layers * 10  # q k v o, cross q k v o, ffn.0 ffn.2 per block
    # one Q/DQ pair on each quantized linear's input and one on its weight; nothing else quantized
    assert res["qdq_counts"] == {"DequantizeLinear": 2 * linears, "QuantizeLinear": 2 * linears}
    assert res["fp8_standardized"] == (4 * linears if scheme == "fp8" else 0)
    model = onnx.load(res["path"])
    assert all(n.domain == "" for n in model.graph.node)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    conv = [n for n in model.graph.node if n.op_type == "Conv"]  # the patch embedding stays high precision
    assert conv and not any(producer.get(i) == "DequantizeLinear" for n in conv for i in n.input)
    sqnr = res["sqnr_db_vs_float"]["output_0"]
    assert 15.0 < sqnr < 80.0  # quantized (not identical) and still the same model
    kinds = {p.kind for p in check_onnx(res["path"]).problems}
    assert "custom-domain" not in kinds and "unsupported-op" not in kinds


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8-smoothquant", "fp8"])
def test_qdq_graph_is_the_calibrated_model(qdq_exports, scheme):
    """ORT runs the calibrated model: it differs from modelopt's fake-quant forward by rounding flips only.

    A flip moves one activation by one quantization step q, where quantization itself leaves every
    activation off by a uniform error of variance q^2 / 12. Flips on a fraction p of the activations add
    noise of energy p * q^2 against q^2 / 12: 10 dB below the quantization noise is p <= 1 / 120. So ORT
    vs fake-quant must sit >= 10 dB above fake-quant vs float; measured on 30 draws (module docstring):
    >= 32.3 dB (INT8) / 14.9 dB (FP8) above. What a user reads off the graph, its SQNR vs the float
    model, must then match the fake-quant model's: within 0.1 dB (measured: 0.008 / 0.036 dB at most).
    The bounds leave room for rounding flips, not for a graph that quantizes otherwise than the model (its
    exact Q/DQ pairs are counted in test_modelopt_qdq_export). Eight draws: on the CPU machine above, 2 of them flip for
    each scheme (max |ORT - fake-quant| 2.8e-3 and 7.1e-3 INT8, 2.3e-2 and 2.6e-2 FP8; the rest < 1.2e-5)."""
    from arvid.quant.metrics import sqnr_db

    res = qdq_exports[scheme]
    base, fake_quant = res["models"]
    graph = OrtGraph(res["path"])
    for seed in range(100, 108):
        x = _inputs(seed)
        with torch.no_grad():
            ref, fq = base(*x), fake_quant(*x)
        (out,) = graph(*x)
        quant_noise_db, engine_db = sqnr_db(ref, fq), sqnr_db(fq, out)
        assert engine_db >= quant_noise_db + 10.0, (seed, engine_db, quant_noise_db)
        assert abs(sqnr_db(ref, out) - quant_noise_db) <= 0.1, (seed, sqnr_db(ref, out), quant_noise_db)
    assert res["sqnr_db_vs_fake_quant"]["output_0"] >= res["sqnr_db_vs_float"]["output_0"] + 10.0
