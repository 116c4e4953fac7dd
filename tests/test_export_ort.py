"""The ``ort`` executor: exported graphs run by ONNX Runtime inside StreamingGenerator.generate().

36 latent frames, prompt switches at 12 (the re-cache span starts at frame 0: the whole cache,
sink included, is rebuilt) and 24 (> 12: with global_sink the sink is kept and the 9-frame window
graph runs), both global_sink settings, against the eager baseline on the same noise.
"""

import os

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from arvid.export.manifest import read_manifest
from arvid.export.qdq import qdq_counts
from arvid.quant.metrics import sqnr_db
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
FRAMES, SWITCHES = 36, [12, 24]


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    old = os.environ.get("ARVID_EXPORT_CACHE")
    os.environ["ARVID_EXPORT_CACHE"] = str(tmp_path_factory.mktemp("export_cache"))
    yield os.environ["ARVID_EXPORT_CACHE"]
    if old is None:
        os.environ.pop("ARVID_EXPORT_CACHE")
    else:
        os.environ["ARVID_EXPORT_CACHE"] = old


@pytest.fixture(scope="session")
def inputs():
    g = torch.Generator().manual_seed(0)
    cfg = TINY.model
    prompts = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g) for _ in range(3)]
    noise = torch.randn(1, FRAMES, cfg.in_dim, *HW, generator=g)
    renoise = torch.randn(FRAMES // 3, 3, 1, 3, cfg.in_dim, *HW, generator=g)
    return build_model(cfg, seed=0), prompts, noise, renoise


def _run(model, stream, inputs, backend, **kw):
    _, prompts, noise, renoise = inputs
    gen = StreamingGenerator(model, stream, latent_size=HW, backend=backend, **kw)
    return gen.generate(noise, prompts, SWITCHES, renoise=renoise)


@pytest.fixture(scope="session")
def eager(inputs):
    """The eager baseline on ``inputs`` per StreamConfig, computed once (three tests compare the default
    stream against it); a clone each time."""
    memo = {}

    def ref(stream):
        if stream not in memo:
            memo[stream] = _run(inputs[0], stream, inputs, "eager")
        return memo[stream].clone()

    return ref


@pytest.mark.slow
@pytest.mark.parametrize("global_sink", [True, False], ids=["global_sink", "no_global_sink"])
def test_ort_step_graphs_in_generate_match_eager(export_cache, inputs, eager, global_sink, capfd):
    model = inputs[0]
    stream = StreamConfig(global_sink=global_sink)
    torch.set_num_threads(1)
    ref = eager(stream)
    out = _run(model, stream, inputs, "ort")  # dynamo graphs, exported once: the plan is the host's
    assert (out - ref).abs().max().item() < 1e-5
    dirs = sorted(os.listdir(export_cache))
    assert [d.split("-")[0] for d in dirs] == ["recache", "step"]
    man = read_manifest(os.path.join(export_cache, next(d for d in dirs if d.startswith("recache"))))
    assert man["artifact"] == ["recache_f6.onnx", "recache_f9.onnx", "recache_f12.onnx"]  # F=3 is the step graph
    assert man["exporter"] == "dynamo" and man["rope_positions"] >= FRAMES
    if not global_sink:  # the second run reused the export of the first
        assert "reusing" in capfd.readouterr().err


@pytest.mark.slow
def test_ort_chunk_graph_in_generate_matches_eager(export_cache, inputs, eager):
    # TorchScript exporter here to keep the suite short (the dynamo chunk export takes ~40 s on 2 cores)
    model = inputs[0]
    ref = eager(StreamConfig())
    out = _run(model, StreamConfig(), inputs, "ort", engine_flags={"chunk"}, engine_options={"exporter": "torchscript"})
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.slow
def test_ort_int8_qdq_in_generate(export_cache, inputs, eager):
    pytest.importorskip("modelopt.torch.quantization")
    model = inputs[0]
    ref = eager(StreamConfig())
    out = _run(model, StreamConfig(), inputs, "ort", engine_flags={"int8"})
    assert torch.isfinite(out).all()
    assert 10.0 < sqnr_db(ref, out) < 80.0  # quantized, still the same model (value in the report)
    step_dir = next(d for d in sorted(os.listdir(export_cache)) if d.startswith("step-int8"))
    man = read_manifest(os.path.join(export_cache, step_dir))
    linears = TINY.model.num_layers * 8  # q k v o, cross-attention q o (text K/V are inputs), ffn.0 ffn.2
    assert qdq_counts(os.path.join(export_cache, step_dir, "step.onnx")) == {
        "DequantizeLinear": 2 * linears,
        "QuantizeLinear": 2 * linears,
    }
    assert man["format"] == "onnx-qdq" and man["exporter"] == "torchscript"
    assert max(man["parity"]["step.onnx"].values()) < 1e-5  # ORT vs modelopt fake-quant, same inputs
