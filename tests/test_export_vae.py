"""export/vae_graph.py: the streaming VAE decoder step exported to ONNX, run in ORT over a stream."""

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("diffusers")

from arvid.export.onnx_check import check_onnx
from arvid.export.onnx_export import export_onnx
from arvid.export.ort_engine import OrtGraph
from arvid.export.vae_graph import GraphVAEDecoder, vae_step_example
from arvid.runtime.vae import StreamingVAEDecoder, tiny_vae, video_frames

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="session")
def vae_export(tmp_path_factory):
    vae = tiny_vae(seed=0)
    graph, inputs, spec = vae_step_example(vae, (8, 8))
    path = tmp_path_factory.mktemp("vae") / "vae_step.onnx"
    return vae, spec, export_onnx(graph, inputs, spec, path)


@pytest.mark.slow
def test_vae_step_graph_spec_and_readiness(vae_export):
    _, spec, res = vae_export
    assert len(spec["inputs"]) == 33 and len(spec["outputs"]) == 33  # z + 32 caches -> video + 32 caches
    assert spec["outputs"][0]["shape"] == (1, 4, 3, 64, 64)
    assert spec["meta"]["eager_frames"] == [0, 1]
    assert max(res["parity"].values()) < 1e-5
    rep = check_onnx(res["path"])
    assert rep.ready, rep.lines()


@pytest.mark.slow
def test_vae_step_in_ort_matches_eager_streaming_decode(vae_export):
    vae, _, res = vae_export
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 6, 16, 8, 8, generator=g)
    ref_dec, ort_dec = StreamingVAEDecoder(vae), GraphVAEDecoder(vae, OrtGraph(res["path"]))
    ref = torch.cat([ref_dec.decode(latents[:, i : i + 3]) for i in range(0, 6, 3)], dim=1)
    out = torch.cat([ort_dec.decode(latents[:, i : i + 3]) for i in range(0, 6, 3)], dim=1)
    assert out.shape[1] == video_frames(6) == 21
    assert (out - ref).abs().max().item() < 1e-5
    ort_dec.reset()  # a new video starts eagerly again
    torch.testing.assert_close(ort_dec.decode(latents[:, :3]), ref[:, : video_frames(3)], atol=1e-5, rtol=0)
