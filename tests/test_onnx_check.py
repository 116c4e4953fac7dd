"""export/onnx_check.py: the TensorRT-readiness report flags what TensorRT's parser would refuse."""

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from arvid.export.onnx_check import check_onnx  # noqa: E402


def _model(nodes, *, inputs=None, outputs=None, opset=18, initializers=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    if any(n.domain for n in nodes):
        opsets += [helper.make_opsetid(d, 1) for d in sorted({n.domain for n in nodes if n.domain})]
    return helper.make_model(graph, opset_imports=opsets)


def test_clean_graph_is_ready(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)])
    path = tmp_path / "ok.onnx"
    onnx.save(m, path)
    rep = check_onnx(path)
    assert rep.ready, rep.lines()
    assert rep.op_counts == {"Relu": 1, "Softmax": 1}
    assert "ready for TensorRT 10" in rep.summary()


def test_planted_double_cast_and_custom_domain_are_flagged():
    m = _model(
        [
            helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE, name="to_double"),
            helper.make_node("Cast", ["xd"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("TRT_FP8QuantizeLinear", ["xf"], ["y"], domain="trt", name="q"),
        ]
    )
    rep = check_onnx(m)
    assert not rep.ready
    kinds = {p.kind for p in rep.problems}
    assert {"double", "custom-domain"} <= kinds
    msgs = [str(p) for p in rep.problems]
    assert any("to_double" in s and "DOUBLE" in s for s in msgs)
    assert any("'trt'" in s for s in msgs)
    assert "NOT ready" in rep.summary()


def test_double_initializer_dynamic_shape_unsupported_op_and_opset():
    w = helper.make_tensor("w", TensorProto.DOUBLE, [1], [1.0])
    m = _model(
        [
            helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "wf"], ["h"]),
            helper.make_node("StringNormalizer", ["h"], ["y"]),
        ],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        opset=23,
        initializers=[w],
    )
    kinds = {p.kind for p in check_onnx(m).problems}
    assert {"double", "dynamic-shape", "unsupported-op", "opset"} <= kinds


def test_attention_mask_rank():
    def attention(mask_shape):
        q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 4, 8])
        mask = helper.make_tensor_value_info("m", TensorProto.FLOAT, mask_shape)
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])
        node = helper.make_node("Attention", ["q", "q", "q", "m"], ["y"])
        return _model([node], inputs=[q, mask], outputs=[out], opset=23)

    assert "attention-mask" in {p.kind for p in check_onnx(attention([4, 4])).problems}
    assert "attention-mask" not in {p.kind for p in check_onnx(attention([1, 1, 4, 4])).problems}


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no ONNX file"):
        check_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        check_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="no TensorRT operator table"):
        check_onnx(_model([helper.make_node("Relu", ["x"], ["y"])]), target="7")
