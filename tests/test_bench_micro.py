"""CPU micro-benchmarks of the streaming hot path at tiny shapes (pytest-benchmark).

They run in the default test session (a few rounds each, well under a second) and double as
checks; ``pytest tests/test_bench_micro.py --benchmark-json out.json`` records the timings.
CPU timings of tiny shapes say nothing about GPU speed: they catch gross regressions (an
accidental copy of the whole cache, a host sync) and keep the benchmark code itself working.
"""

import pytest
import torch

from arvid.kernels.layouts import PlanTensors, RingLayer, RopeCosSin
from arvid.kernels.qk_norm_rope_append import qk_norm_rope_append_kv_cache_ref
from arvid.kernels.rope_3d import rope_3d_tables
from arvid.kernels.sink_window_attention import sink_window_attention_ref
from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset

TINY = get_preset("tiny")
CFG = TINY.model
TPF = TINY.tokens_per_frame  # 16
STREAM = StreamConfig()
LQ, LK = STREAM.chunk_frames * TPF, STREAM.attention_frames * TPF  # 48 query, 192 key tokens
H, D = CFG.num_heads, CFG.head_dim


def _pedantic(benchmark, fn, rounds=20, iterations=5):
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=2)


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, seed=0)


@pytest.fixture(scope="module")
def stream_iter(model):
    """A chunk stream whose ring cache is already full (4 chunks done): each next() is a steady-state chunk."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)
    noise = torch.randn(1, 3 * 40, CFG.in_dim, TINY.latent_height, TINY.latent_width, generator=g)
    gen = StreamingGenerator(model, STREAM, latent_size=(TINY.latent_height, TINY.latent_width), backend="sdpa")
    it = gen.stream(noise, [emb])
    with torch.no_grad():
        for _ in range(STREAM.slot_chunks):
            next(it)
    return it


def test_ring_append_write(benchmark):
    # The ring buffer's write through arvid's append reference (q/k norm + RoPE + K/V into the last
    # slot, frames 12..14): the chunk's slots only, no roll, no concatenation of the cache.
    g = torch.Generator().manual_seed(0)
    k_cache, v_cache = torch.randn(1, LK, H, D, generator=g), torch.randn(1, LK, H, D, generator=g)
    old_k, old_v = k_cache.clone(), v_cache.clone()
    q, k, v = (torch.randn(1, LQ, H, D, generator=g) for _ in range(3))
    wq, wk = torch.ones(H * D), torch.ones(H * D)
    grid = (STREAM.chunk_frames, 4, 4)
    rope = RopeCosSin(*rope_3d_tables(D, 16))
    start = LK - LQ
    plan = PlanTensors.zeros(1, "cpu")
    plan.fill(write_start=start, kv_len=LK, frame_offset=12)
    cache = RingLayer(k_cache, v_cache)
    q_rot = _pedantic(
        benchmark,
        lambda: qk_norm_rope_append_kv_cache_ref(q, k, v, wq, wk, cache=cache, rope=rope, plan=plan, grid_sizes=grid),
    )
    assert q_rot.shape == q.shape and torch.equal(v_cache[:, start:], v)
    assert torch.equal(k_cache[:, :start], old_k[:, :start]) and torch.equal(v_cache[:, :start], old_v[:, :start])


def test_append_norm_rope_write(benchmark, model):
    # The sdpa backend's append: q/k RMSNorm + 3D RoPE, then the write of rotated K and V into the
    # last slot of a full ring (frames 12..14), at the device-side write offset.
    from arvid.runtime import ForwardPlan
    from arvid.runtime.attention import sdpa_append
    from arvid.runtime.rope import RopeInput

    attn = model.blocks[0].self_attn
    layer = RingLayer(torch.zeros(1, LK, H, D), torch.zeros(1, LK, H, D))
    start = LK - LQ
    tensors = PlanTensors.zeros(1, "cpu")
    plan = ForwardPlan(12, STREAM.chunk_frames, start, LK, 4, 1, tensors)
    plan.load(tensors)
    rope = RopeInput(RopeCosSin(*model.rope_tables()), (STREAM.chunk_frames, 4, 4), 12)
    q, k, v = (torch.randn(1, LQ, H, D) for _ in range(3))

    with torch.no_grad():
        q_rot = _pedantic(benchmark, lambda: sdpa_append(q, k, v, attn.qk_norm, rope, layer, plan))
    assert q_rot.shape == q.shape and not torch.equal(q_rot, q)
    assert torch.equal(layer.v[:, start:], v) and not layer.v[:, :start].any()


def test_attention_over_cache_prefix(benchmark):
    # arvid's reference sink + window attention of a chunk's queries over the valid prefix of the ring.
    g = torch.Generator().manual_seed(0)
    k_cache, v_cache = torch.randn(1, LK, H, D, generator=g), torch.randn(1, LK, H, D, generator=g)
    q = torch.randn(1, LQ, H, D, generator=g)
    kv_len = LK - LQ  # fill phase: the last slot not valid yet
    lens = torch.tensor([kv_len], dtype=torch.int32)
    cache = RingLayer(k_cache, v_cache)
    out = _pedantic(benchmark, lambda: sink_window_attention_ref(q, cache, lens))
    k, v = k_cache[:, :kv_len].transpose(1, 2), v_cache[:, :kv_len].transpose(1, 2)
    want = (torch.softmax(q.transpose(1, 2) @ k.transpose(-1, -2) / D**0.5, dim=-1) @ v).transpose(1, 2)
    assert torch.allclose(out, want, atol=1e-5)


def test_tiny_dit_forward_no_cache(benchmark, model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, STREAM.chunk_frames, CFG.in_dim, TINY.latent_height, TINY.latent_width, generator=g)
    t = torch.full((1, STREAM.chunk_frames), 500.0)
    text = torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)
    with torch.no_grad():
        out = _pedantic(benchmark, lambda: model(x, t, text), rounds=10, iterations=2)
    assert out.shape == (1, STREAM.chunk_frames, CFG.out_dim, TINY.latent_height, TINY.latent_width)
    assert torch.isfinite(out).all()


def test_tiny_steady_state_chunk(benchmark, stream_iter):
    # One whole chunk in the steady state (4 denoising forwards + the clean-context update, over a
    # full ring with eviction), through the public streaming API.
    with torch.no_grad():
        out = benchmark.pedantic(lambda: next(stream_iter), rounds=8, iterations=1, warmup_rounds=1)
    assert out.latents.shape == (1, STREAM.chunk_frames, CFG.out_dim, TINY.latent_height, TINY.latent_width)
    assert torch.isfinite(out.latents).all()
