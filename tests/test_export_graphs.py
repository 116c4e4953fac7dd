"""The export graphs: declared I/O matches what they compute, in-place caches are refused."""

import pytest
import torch

from arvid.export.graphs import build_graph, recache_graph_spans, refuse_inplace
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset
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


def test_in_place_ring_is_refused(model):
    gen = StreamingGenerator(model, latent_size=HW, backend="sdpa")
    with pytest.raises(ValueError, match="in-place ring-buffer cache cannot be exported"):
        refuse_inplace(model)
    refuse_inplace(build_graph("step", model, latent_size=HW))  # functional: fine
    assert gen.executor.cache.k.shape[0] == TINY.model.num_layers


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
    graph = build_graph("step", model, latent_size=HW)
    ins = graph.example_inputs()
    ep = torch.export.export(graph, ins, strict=False)
    for got, want in zip(ep.module()(*ins), graph(*ins), strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)
    # functional: no in-place copy into a graph input survives in the exported program
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("index_copy" in t or "index_put" in t for t in targets), targets
