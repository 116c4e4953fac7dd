"""The `triton` attention backend end to end: same latents as the eager baseline (tiny preset).

On the CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py), in fp32.
"""

import pytest
import torch
from _refs import eager_stream
from conftest import assert_close, mismatch_report

from arvid.runtime import StreamConfig, StreamingGenerator, build_model, default_backend, get_backend, get_preset

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _generate(model, backend, frames, switches, stream, device="cpu", cuda_graphs=False, granularity="chunk"):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, frames, 16, *HW, generator=g)
    prompts = [torch.randn(1, 16, 32, generator=g) for _ in range(len(switches) + 1)]
    gen = StreamingGenerator(
        model, stream, latent_size=HW, backend=backend, cuda_graphs=cuda_graphs, graph_granularity=granularity
    )
    return gen.generate(noise, prompts, switches, generator=torch.Generator().manual_seed(1)), gen


@pytest.mark.slow
@pytest.mark.parametrize("global_sink", [True, False])
def test_triton_backend_matches_eager_baseline(global_sink):
    model = build_model(TINY.model)
    stream = StreamConfig(global_sink=global_sink)
    # 30 frames: fill phase, evictions, a switch at s <= 12 and one at s > 12 (test_chunk_step checks
    # the plans these switches make); the eager baseline is computed once per session (tests/_refs.py)
    want = eager_stream(30, (6, 21), stream)
    out, gen = _generate(model, "triton", 30, (6, 21), stream)
    assert gen.backend_name == "triton"
    assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_triton_is_not_the_cpu_default():
    assert default_backend("cpu", torch.float32) == "sdpa"


def test_triton_backend_precondition_message(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the precondition holds")
    with pytest.raises(ValueError, match=r"cannot run here.*CUDA"):
        get_backend("triton", "cpu", torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", ["chunk", "step"])
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_cuda_graph_replay_matches_eager_static_path(backend, granularity):
    """Replayed graphs give the latents of the same static code run eagerly (bf16, tiny)."""
    model = build_model(TINY.model, device="cuda", dtype=torch.bfloat16)
    stream = StreamConfig()
    want, _ = _generate(model, backend, 45, (6, 21, 36), stream, device="cuda")
    out, gen = _generate(model, backend, 45, (6, 21, 36), stream, "cuda", cuda_graphs=True, granularity=granularity)
    assert gen.executor.graphs, "no graph was captured"
    # Same kernels, same inputs, same order: a replay must reproduce the static code bit for bit.
    assert torch.equal(out, want), mismatch_report(out, want, atol=0.0, rtol=0.0)


@pytest.mark.gpu
def test_triton_matches_sdpa_bf16_on_gpu():
    model = build_model(TINY.model, device="cuda", dtype=torch.bfloat16)
    want, _ = _generate(model, "sdpa", 30, (6, 21), StreamConfig(), device="cuda")
    out, _ = _generate(model, "triton", 30, (6, 21), StreamConfig(), device="cuda")
    # bf16 keeps 8 mantissa bits: two kernels with different summation orders drift by ~1e-2.
    assert_close(out, want, atol=5e-2, rtol=5e-2)


def test_cuda_graphs_need_cuda():
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without CUDA")
    model = build_model(TINY.model)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StreamingGenerator(model, latent_size=HW, backend="sdpa", cuda_graphs=True)
    with pytest.raises(ValueError, match="cannot be graph-captured"):
        StreamingGenerator(model, latent_size=HW, backend="eager", cuda_graphs=True)
    with pytest.raises(ValueError, match="granularity"):
        StreamingGenerator(model, latent_size=HW, backend="sdpa", graph_granularity="layer")
