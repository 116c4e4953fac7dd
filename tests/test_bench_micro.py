"""CPU micro-benchmarks of the streaming hot path at tiny shapes (pytest-benchmark).

They run in the default test session (a few rounds each, well under a second) and double as
checks; ``pytest tests/test_bench_micro.py --benchmark-json out.json`` records the timings.
CPU timings of tiny shapes say nothing about GPU speed: they catch gross regressions (an
accidental copy of the whole cache, a host sync) and keep the benchmark code itself working.
"""

import pytest
import torch
import torch.nn.functional as F

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


def test_ring_slice_write(benchmark):
    # The ring buffer's write: one chunk's K and V into its slots, no roll, no concatenation.
    k_cache, v_cache = torch.zeros(1, LK, H, D), torch.zeros(1, LK, H, D)
    k, v = torch.randn(1, LQ, H, D), torch.randn(1, LQ, H, D)
    start = 3 * LQ  # the last slot

    def write():
        k_cache[:, start : start + LQ] = k
        v_cache[:, start : start + LQ] = v

    _pedantic(benchmark, write)
    assert torch.equal(k_cache[:, start:], k) and torch.equal(v_cache[:, start:], v)
    assert not k_cache[:, :start].any()


def test_append_norm_rope_write(benchmark, model):
    # The sdpa backend's append: q/k RMSNorm + 3D RoPE, then the write of rotated K and V into the
    # last slot of a full ring (frames 12..14), at the device-side write offset.
    from arvid.runtime import ForwardPlan, PlanTensors
    from arvid.runtime.attention import sdpa_append
    from arvid.runtime.kv_cache import RingLayer
    from arvid.runtime.rope import RopeInput

    attn = model.blocks[0].self_attn
    layer = RingLayer(torch.zeros(1, LK, H, D), torch.zeros(1, LK, H, D))
    start = LK - LQ
    tensors = PlanTensors.zeros(1, "cpu")
    plan = ForwardPlan(12, STREAM.chunk_frames, start, LK, 4, 1, tensors)
    tensors.fill(plan)
    rope = RopeInput(*model.rope_tables(), (STREAM.chunk_frames, 4, 4), 12)
    q, k, v = (torch.randn(1, LQ, H, D) for _ in range(3))

    with torch.no_grad():
        q_rot = _pedantic(benchmark, lambda: sdpa_append(q, k, v, attn.qk_norm, rope, layer, plan))
    assert q_rot.shape == q.shape and not torch.equal(q_rot, q)
    assert torch.equal(layer.v[:, start:], v) and not layer.v[:, :start].any()


def test_attention_over_cache_prefix(benchmark):
    # Reference attention of a chunk's queries over the valid prefix of the ring: a view, no copy.
    g = torch.Generator().manual_seed(0)
    k_cache, v_cache = torch.randn(1, LK, H, D, generator=g), torch.randn(1, LK, H, D, generator=g)
    q = torch.randn(1, H, LQ, D, generator=g)
    kv_len = LK - LQ  # fill phase: the last slot not valid yet
    k, v = k_cache[:, :kv_len].transpose(1, 2), v_cache[:, :kv_len].transpose(1, 2)
    assert k.data_ptr() == k_cache.data_ptr()  # a view of the cache
    out = _pedantic(benchmark, lambda: F.scaled_dot_product_attention(q, k, v))
    want = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1) @ v
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
