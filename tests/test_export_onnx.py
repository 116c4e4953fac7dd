"""export/onnx_export.py: functional export to ONNX, in-place refusal, dedup, external data, parity."""

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from arvid.export.onnx_check import check_onnx  # noqa: E402
from arvid.export.onnx_export import export_onnx, refuse_inplace  # noqa: E402
from arvid.export.ort_engine import OrtGraph  # noqa: E402
from arvid.runtime import StreamingGenerator, build_model, get_preset  # noqa: E402


class FunctionalCacheStep(nn.Module):
    """A toy of the step-graph contract: the cache comes in, the new K/V come out, no state."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.proj2 = nn.Linear(width, width)
        with torch.no_grad():  # equal contents: stored once after dedup
            self.proj2.weight.copy_(self.proj.weight)
            self.proj2.bias.copy_(self.proj.bias)

    def forward(self, x, cache, kv_len):
        new = self.proj(x)
        pos = torch.arange(cache.shape[1], dtype=torch.int32)
        mask = (pos < kv_len).to(x.dtype)[None, :, None]
        ctx = (cache * mask).sum(1, keepdim=True) + new
        return self.proj2(ctx), new


class InPlaceCacheStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.register_buffer("cache", torch.zeros(1, 4, 8))

    def forward(self, x):
        new = self.proj(x)
        self.cache.index_copy_(1, torch.tensor([0]), new)
        return self.cache.sum(1)


def _toy_inputs(width: int = 8):
    g = torch.Generator().manual_seed(0)
    x, cache = torch.randn(1, 1, width, generator=g), torch.randn(1, 4, width, generator=g)
    return x, cache, torch.tensor([2], dtype=torch.int32)


SPEC = {
    "name": "toy",
    "inputs": [{"name": n} for n in ("x", "cache", "kv_len")],
    "outputs": [{"name": n} for n in ("out", "new")],
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_functional_export_matches_eager(tmp_path, dynamo):
    mod = FunctionalCacheStep().eval()
    inputs = _toy_inputs()
    res = export_onnx(mod, inputs, SPEC, tmp_path / "toy.onnx", dynamo=dynamo)
    model = onnx.load(tmp_path / "toy.onnx")
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["x", "cache", "kv_len"]
    assert [o.name for o in model.graph.output] == ["out", "new"]
    blobs = [(i.data_type, tuple(i.dims), i.raw_data) for i in model.graph.initializer]
    assert len(blobs) == len(set(blobs))  # proj2's weight and bias equal proj's: stored once
    assert not model.metadata_props and not model.doc_string
    assert all(not n.metadata_props and not n.doc_string for n in model.graph.node)
    assert max(res["parity"].values()) < 1e-6
    out = OrtGraph(tmp_path / "toy.onnx")(*inputs)
    with torch.no_grad():
        ref = mod(*inputs)
    for o, r in zip(out, ref, strict=True):
        torch.testing.assert_close(o, r, atol=1e-6, rtol=0)
    assert check_onnx(tmp_path / "toy.onnx").ready, check_onnx(tmp_path / "toy.onnx").lines()


def test_clean_up_dedups_and_keeps_results(tmp_path):
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from arvid.export.onnx_export import clean_up, save_onnx

    w = numpy_helper.from_array(torch.randn(3, 3).numpy(), "w1")
    w2 = numpy_helper.from_array(numpy_helper.to_array(w).copy(), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[w, w2],
        doc_string="gone after clean_up",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "a.onnx")
    irm = ir.from_proto(model)
    assert clean_up(irm) == 1 and len(irm.graph.initializers) == 1
    save_onnx(irm, tmp_path / "b.onnx")
    cleaned = onnx.load(tmp_path / "b.onnx")
    assert len(cleaned.graph.initializer) == 1 and not cleaned.graph.doc_string and cleaned.producer_name == "arvid"
    x = torch.randn(2, 3)
    torch.testing.assert_close(OrtGraph(tmp_path / "a.onnx")(x)[0], OrtGraph(tmp_path / "b.onnx")(x)[0])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_weights_go_to_external_data(tmp_path, dynamo):
    """Every graph takes the path the 1.3B model needs: weights in ``<name>.onnx.data``, the graph small."""
    from arvid.export.onnx_export import EXTERNAL_MIN_BYTES

    width = 32
    assert width * width * 4 >= EXTERNAL_MIN_BYTES  # proj's weight is large enough to move
    mod = FunctionalCacheStep(width).eval()
    inputs = _toy_inputs(width)
    res = export_onnx(mod, inputs, SPEC, tmp_path / "ext.onnx", dynamo=dynamo)
    assert res["external_data"] == "ext.onnx.data" and (tmp_path / "ext.onnx.data").is_file()
    assert (tmp_path / "ext.onnx.data").stat().st_size >= width * width * 4
    assert (tmp_path / "ext.onnx").stat().st_size < width * width * 4  # the weight is not inline
    report = check_onnx(tmp_path / "ext.onnx")
    assert report.external_data and report.ready, report.lines()
    assert max(res["parity"].values()) < 1e-6
    assert set(res["stages_s"]) == {"eager", "trace", "passes", "parity"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]  # no temporaries


def test_check_names_missing_or_short_external_data(tmp_path):
    export_onnx(FunctionalCacheStep(32).eval(), _toy_inputs(32), SPEC, tmp_path / "ext.onnx", dynamo=False)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    problems = [p.message for p in check_onnx(tmp_path / "ext.onnx").problems if p.kind == "external-data"]
    assert problems and "ext.onnx.data holds 100 bytes; the graph reads up to byte" in problems[0]
    data.unlink()
    problems = [p.message for p in check_onnx(tmp_path / "ext.onnx").problems if p.kind == "external-data"]
    assert problems == ["ext.onnx.data (the weights) is missing beside the graph"]


def test_inplace_buffer_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"in-place ring-buffer cache cannot be exported.*index_copy"):
        export_onnx(InPlaceCacheStep(), (torch.randn(1, 1, 8),), None, tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())  # nothing written


class InPlaceAttribute(nn.Module):
    """The cache as a plain tensor attribute (how a runtime object holds it), written in place."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.cache = torch.zeros(1, 4, 8)

    def forward(self, x):
        self.cache[:, 1:2].copy_(self.proj(x))  # through a view
        return self.cache.sum(1)


class InPlaceInput(nn.Module):
    def forward(self, x, cache):
        cache.index_copy_(1, torch.tensor([0]), x)
        return cache.sum(1)


@pytest.mark.parametrize(
    ("module", "inputs"),
    [
        (InPlaceCacheStep(), (torch.randn(1, 1, 8),)),
        (InPlaceAttribute(), (torch.randn(1, 1, 8),)),
        (InPlaceInput(), (torch.randn(1, 1, 8), torch.zeros(1, 4, 8))),
    ],
    ids=["buffer", "attribute-view", "input"],
)
def test_traced_program_is_refused_without_running(module, inputs):
    """dynamo exports check the traced program, not a run (the 1.3B bf16 forward takes a day on an AVX2 CPU)."""
    from arvid.export.onnx_export import refuse_inplace_traced

    program = torch.export.export(module, inputs, strict=False)
    with pytest.raises(ValueError, match="in-place ring-buffer cache cannot be exported"):
        refuse_inplace_traced(program, name="toy")
    refuse_inplace_traced(torch.export.export(FunctionalCacheStep(), _toy_inputs(), strict=False))  # fine


def test_inplace_ring_cache_of_the_runtime_is_refused():
    """The runtime's ring-buffer forward writes K/V into the cache in place: refused."""
    from arvid.runtime.chunk_step import denoise_step

    preset = get_preset("tiny")
    model = build_model(preset.model)
    gen = StreamingGenerator(model, latent_size=(preset.latent_height, preset.latent_width), backend="sdpa")
    cache = gen.executor.cache
    plan = cache.plan_chunk(0)
    cache.activate(plan)
    text_kv = model.text_kv(torch.randn(1, preset.model.text_len, preset.model.text_dim))

    class RuntimeForward(nn.Module):
        def forward(self, x, t):
            return denoise_step(model, x, 0.5, text_kv, cache, plan, frame_offset=plan.frame_offset, t=t)

    x = torch.randn(1, 3, 16, preset.latent_height, preset.latent_width)
    with pytest.raises(ValueError, match="in-place ring-buffer cache"):
        refuse_inplace(RuntimeForward(), (x, torch.full((1, 3), 1000.0)))


def test_exporter_failure_is_one_clear_error(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[x > 0]  # data-dependent shape: TorchScript exports it, dynamo guards; use a bad opset

    with pytest.raises(ValueError, match="ONNX exporter failed"):
        export_onnx(DataDependent(), (torch.randn(4),), None, tmp_path / "f.onnx", dynamo=False, opset=3)


def test_parity_is_skipped_when_ort_would_not_fit(tmp_path, monkeypatch):
    """At the real size ONNX Runtime needs the weights, the inputs and the attention scores again: where that
    exceeds the free memory the parity is recorded as skipped (with both numbers), never an OOM kill."""
    import collections

    import psutil

    vm = collections.namedtuple("vm", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(available=1000))
    res = export_onnx(FunctionalCacheStep(32).eval(), _toy_inputs(32), SPEC, tmp_path / "s.onnx", dynamo=False)
    assert res["ort_needs_bytes"] >= 32 * 32 * 4  # at least the weights
    skipped = res["parity"]["skipped"]
    assert skipped.startswith("ONNX Runtime would need about") and "GiB available" in skipped
    assert res["parity_rel_l2"] == {}


def test_ort_memory_counts_the_values_alive_at_once():
    """The parity run's estimate follows liveness in the graph's order: a value read again later stays
    counted until its last reader (ORT cannot reuse its buffer before); the inputs and the outputs
    count twice (the caller's and ORT's; ORT's and the eager reference's). 4 kB per [1000] float32."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from arvid.export.onnx_export import ort_memory_bytes

    def model(nodes, out):
        vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1000])
        g = helper.make_graph(nodes, "g", [vi("x")], [vi(out)], value_info=[vi(n) for n in "abc" if n != out])
        return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))

    x = torch.zeros(1000)
    relu = lambda i, o: helper.make_node("Relu", [i], [o])
    chain = model([relu("x", "a"), relu("a", "b"), relu("b", "c")], "c")
    assert ort_memory_bytes(chain, [x]) == 2 * 4000 + 8000 + 4000  # inputs, two alive at once, the held output
    skip = model([relu("x", "a"), relu("a", "b"), helper.make_node("Add", ["a", "b"], ["c"])], "c")
    assert ort_memory_bytes(skip, [x]) == 2 * 4000 + 12000 + 4000  # a, b and c alive together at the Add


def test_parity_reports_relative_l2(tmp_path):
    res = export_onnx(FunctionalCacheStep(32).eval(), _toy_inputs(32), SPEC, tmp_path / "s.onnx", dynamo=False)
    assert set(res["parity_rel_l2"]) == {"out", "new"} and max(res["parity_rel_l2"].values()) < 1e-6
