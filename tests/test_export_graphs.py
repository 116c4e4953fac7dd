"""The export graphs: declared I/O matches what they compute, in-place caches are refused."""

import pytest
import torch

from arvid.export.graphs import build_graph, recache_graph_spans
from arvid.export.onnx_export import refuse_inplace
from arvid.runtime import StreamConfig, build_model, get_preset
from arvid.runtime.kv_cache import recache_spans

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)


@pytest.fixture(scope="module")
def model():
    return build_model(TINY.model, seed=0)


@pytest.mark.parametrize("kind, frames", [("step", None), ("chunk", None), ("recache", 6), ("recache", 12)])
def test_spec_matches_inputs_and_outputs(model, kind, frames):
    graph = build_graph(kind, model, latent_size=HW, num_frames=frames)
    spec, ins = graph.spec(), graph.example_inputs()
    outs = graph(*ins)
    assert [(tuple(t.shape), t.dtype) for t in ins] == [(s.shape, s.dtype) for s in spec.inputs]
    assert [(tuple(t.shape), t.dtype) for t in outs] == [(s.shape, s.dtype) for s in spec.outputs]
    assert spec.meta["rope_positions"] == model.rope.positions
    assert spec.to_json()["inputs"][0]["dtype"] == "float32"


def test_graph_passes_the_in_place_probe(model):
    """The graph of a step writes no state in place (the runtime's own ring forward is refused:
    tests/test_export_onnx.py)."""
    graph = build_graph("step", model, latent_size=HW)
    assert len(refuse_inplace(graph, graph.example_inputs())) == len(graph.spec().outputs)


def test_bad_graph_requests_are_one_line_errors(model):
    with pytest.raises(ValueError, match="unknown graph"):
        build_graph("vae", model, latent_size=HW)
    with pytest.raises(ValueError, match="multiple of the chunk"):
        build_graph("recache", model, latent_size=HW, num_frames=4)
    with pytest.raises(ValueError, match="divisible"):
        build_graph("step", model, latent_size=(7, 8))


def test_recache_spans_cover_every_plan():
    assert recache_spans(StreamConfig()) == [3, 6, 9, 12]
    assert recache_spans(StreamConfig(global_sink=False)) == [3, 6, 9, 12]
    assert recache_spans(StreamConfig(chunk_frames=2, sink_frames=4, attention_frames=10)) == [2, 4, 6, 8, 10]
    assert recache_graph_spans(StreamConfig()) == [6, 9, 12]  # the step graph serves one chunk


def test_graph_traces_with_torch_export(model):
    """Traced on uninitialised placeholders (what the exporters trace on, so the 1.3B example cache is never
    drawn: a trace reads shapes only), the program computes what the eager graph does."""
    graph = build_graph("step", model, latent_size=HW)
    held = graph.placeholder_inputs()
    assert [(tuple(t.shape), t.dtype) for t in held] == [(s.shape, s.dtype) for s in graph.spec().inputs]
    ep = torch.export.export(graph, held, strict=False)
    ins = graph.example_inputs()
    for got, want in zip(ep.module()(*ins), graph(*ins), strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)
    # functional: no in-place copy into a graph input survives in the exported program
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("index_copy" in t or "index_put" in t for t in targets), targets


def test_example_cache_is_drawn_in_its_own_dtype():
    """bf16 example inputs come out in bf16, drawn one layer at a time (no float32 twin of the whole cache),
    and are the float32 model's draw rounded: one draw for both dtypes."""
    m32 = build_model(TINY.model, seed=0)
    m16 = build_model(TINY.model, seed=0, dtype=torch.bfloat16)
    a = build_graph("step", m32, latent_size=HW).example_inputs()
    b = build_graph("step", m16, latent_size=HW).example_inputs()
    for x, y in zip(a[3:7], b[3:7], strict=True):  # text_k, text_v, cache_k, cache_v
        assert y.dtype == torch.bfloat16 and torch.equal(x.to(torch.bfloat16), y)


def test_parity_is_skipped_where_the_eager_reference_would_take_hours():
    from arvid.export.parity import too_slow_for_parity

    tiny_step = build_graph("step", build_model(TINY.model, seed=0), latent_size=HW)
    assert too_slow_for_parity("cpu", torch.bfloat16, tiny_step.flops()) is None
    assert too_slow_for_parity("cpu", torch.float32, tiny_step.flops()) is None
    why = too_slow_for_parity("cpu", torch.bfloat16, 28e12)  # the 1.3B step
    assert why is not None and "on a GPU" in why and "bfloat16" in why
    assert too_slow_for_parity("cuda", torch.bfloat16, 28e12) is None


def test_onnx_export_applies_the_same_parity_rule(model, monkeypatch):
    from arvid.export.onnx_export import _too_slow

    graph = build_graph("step", model, latent_size=HW)
    held = graph.placeholder_inputs()
    assert _too_slow(graph, held) is None  # the tiny step: milliseconds
    monkeypatch.setattr(graph, "flops", lambda: 28e12)  # the 1.3B step's
    assert "would take about" in _too_slow(graph, held)
    assert _too_slow(torch.nn.Linear(2, 2), (torch.zeros(2),)) is None  # not a graph of arvid.export.graphs


def test_graph_kinds_have_one_torch_free_home():
    """runtime/config.py is the one home of the graph kinds, for the torch-free parser too: it imports
    nothing beyond the standard library."""
    import ast
    import sys
    from pathlib import Path

    import arvid.runtime.config as config

    tree = ast.parse(Path(config.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
    assert all(n.split(".")[0] in sys.stdlib_module_names or n == "__future__" for n in names), names
    assert config.GRAPH_KINDS[: len(config.DIT_GRAPH_KINDS)] == config.DIT_GRAPH_KINDS
