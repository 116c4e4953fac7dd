"""sink_window_attention: Triton kernel (interpreter on the CPU) vs the PyTorch reference.

Invalid cache slots are filled with NaN in every test: a masked slot that leaked into the
softmax or into P @ V would turn the output into NaN.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import mismatch_report

from arvid.kernels import sink_window_attention as swa
from arvid.kernels._triton_utils import triton_available
from arvid.kernels.fp8 import quantize_fp8_per_token_head_ref
from arvid.kernels.layouts import RingLayer
from arvid.kernels.sink_window_attention import (
    sink_window_attention_ref,
    sink_window_attention_with_kv_cache,
    warmup_sink_window_attention,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton (or TRITON_INTERPRET=1) not available")

# Tolerances per dtype. fp32: both sides accumulate in fp32 over <= ~1300 keys; the kernel's
# exp2 with log2(e) folded into the scale, its online rescaling and its summation order give
# ~1e-6 relative differences, so 1e-4 leaves a wide margin. fp16/bf16: the kernel rounds P to
# the input dtype before P @ V (fp16 2**-11 relative, bf16 2**-8) and rounds the output once;
# outputs are convex combinations of N(0, 1) values (|out| <~ 3), so a few output ulps.
TOL = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


def _make(b, lq, h, d, s, kv_lens, dtype, device=DEVICE, seed=0):
    """Random q, a cache whose slots past kv_len hold NaN garbage, and kv_len."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g).to(device, dtype)
    k = torch.randn(b, s, h, d, generator=g).to(device, dtype)
    v = torch.randn(b, s, h, d, generator=g).to(device, dtype)
    for i, n in enumerate(kv_lens):
        k[i, n:] = float("nan")
        v[i, n:] = float("nan")
    kv_len = torch.tensor(kv_lens, dtype=torch.int32, device=device)
    return q, RingLayer(k, v), kv_len


def _check(out, ref, dtype, name):
    report = mismatch_report(out, ref, name=name, **TOL[dtype])
    assert not report, report


# (B, Lq, H, D, S, kv_len per batch element): query counts 1/3/19/99/1177, cache states from
# one valid key to full, per-batch lengths, tails that are not a tile multiple.
CASES = [
    pytest.param(1, 1, 1, 32, 64, [1], id="q1-kv1"),
    pytest.param(2, 3, 2, 32, 100, [1, 100], id="q3-kv1-and-full"),
    pytest.param(2, 19, 3, 64, 130, [77, 45], id="q19-partial-per-batch"),
    pytest.param(1, 99, 2, 128, 96, [96], id="q99-d128-full"),
    pytest.param(1, 19, 1, 128, 200, [160], id="q19-d128-sink-plus-window"),
    pytest.param(2, 3, 1, 16, 50, [50, 0], id="q3-d16-empty-batch"),
    pytest.param(1, 1177, 1, 32, 150, [150], id="q1177"),
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("b", "lq", "h", "d", "s", "kv_lens"), CASES)
def test_kernel_matches_reference(b, lq, h, d, s, kv_lens, dtype):
    q, cache, kv_len = _make(b, lq, h, d, s, kv_lens, dtype)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all(), "NaN/inf leaked from the invalid cache slots"
    _check(out, ref, dtype, "out")
    for i, n in enumerate(kv_lens):
        if n == 0:  # no valid key: defined as zeros by both
            assert (out[i] == 0).all()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_strided_views_and_sm_scale(dtype):
    """q a slice of a fused qkv output, K/V slices of a fused [B, S, 2, H, D] cache; custom scale."""
    b, lq, h, d, s = 2, 19, 3, 32, 90
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(b, lq, 3, h, d, generator=g).to(DEVICE, dtype)
    kv = torch.randn(b, s, 2, h, d, generator=g).to(DEVICE, dtype)
    kv[0, 70:] = float("nan")
    q, k_cache, v_cache = qkv[:, :, 0], kv[:, :, 0], kv[:, :, 1]
    kv_len = torch.tensor([70, 90], dtype=torch.int32, device=DEVICE)
    out = sink_window_attention_with_kv_cache(q, RingLayer(k_cache, v_cache), kv_len, sm_scale=0.3)
    contiguous = RingLayer(k_cache.contiguous(), v_cache.contiguous())
    ref = sink_window_attention_ref(q.contiguous(), contiguous, kv_len, sm_scale=0.3)
    _check(out, ref, dtype, "out")


@needs_triton
def test_kv_len_past_cache_is_clamped():
    q, cache, _ = _make(1, 3, 1, 32, 40, [40], torch.float32)
    out = sink_window_attention_with_kv_cache(q, cache, torch.tensor([1000], dtype=torch.int32, device=DEVICE))
    ref = sink_window_attention_ref(q, cache, torch.tensor([40], dtype=torch.int32, device=DEVICE))
    _check(out, ref, torch.float32, "out")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16], ids=["fp16"])
def test_fp8_cache_matches_reference(dtype):
    """float8_e4m3fn cache with per token-head scales (the interpreter loads e4m3 correctly)."""
    b, lq, h, d, s = 2, 19, 2, 32, 100
    g = torch.Generator().manual_seed(2)
    q = torch.randn(b, lq, h, d, generator=g).to(DEVICE, dtype)
    k8, ks = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(DEVICE) * 3)
    v8, vs = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(DEVICE))
    kv_len = torch.tensor([5, 83], dtype=torch.int32, device=DEVICE)
    ks[0, 5:] = float("nan")  # garbage scales past kv_len must not leak either
    vs[0, 5:] = float("nan")
    cache = RingLayer(k8, v8, k_scale=ks, v_scale=vs)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    _check(out, ref, dtype, "out")


def test_reference_matches_concatenated_sdpa():
    """The reference equals what LongLive does: concatenate sink + window, then plain attention."""
    b, lq, h, d, s, sink = 1, 12, 2, 32, 60, 15
    q, cache, kv_len = _make(b, lq, h, d, s, [48], torch.float32, device="cpu")
    k, v = cache.k, cache.v
    k_cat = torch.cat([k[:, :sink], k[:, sink:48]], dim=1).transpose(1, 2)
    v_cat = torch.cat([v[:, :sink], v[:, sink:48]], dim=1).transpose(1, 2)
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k_cat, v_cat).transpose(1, 2)
    _check(sink_window_attention_ref(q, cache, kv_len), sdpa, torch.float32, "ref vs sdpa")


@needs_triton
def test_key_order_does_not_matter():
    """A ring buffer never rolls: permuting the valid slots leaves the output unchanged."""
    q, cache, kv_len = _make(1, 19, 2, 32, 80, [70], torch.float32)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    k, v = cache.k, cache.v
    k2, v2 = k.clone(), v.clone()
    k2[:, :70], v2[:, :70] = k[:, perm], v[:, perm]
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    out2 = sink_window_attention_with_kv_cache(q, RingLayer(k2, v2), kv_len)
    _check(out2, out, torch.float32, "permuted")


def test_input_validation():
    q, cache, kv_len = _make(2, 3, 2, 32, 40, [40, 40], torch.float32, device="cpu")
    k, v = cache.k, cache.v
    ones = torch.ones(2, 40, 2)
    bad = [
        ((q, cache, kv_len.long()), "kv_len must be an int32"),
        ((q, cache, kv_len[:1]), "kv_len must be an int32"),
        ((q, RingLayer(k, v[..., :16]), kv_len), "differ in shape"),
        ((q[..., :16], cache, kv_len), "head dim mismatch"),
        ((q[:, :, :1], cache, kv_len), "but the cache is"),
        ((q.half(), cache, kv_len), "must share a dtype"),
        ((q, RingLayer(k, v, k_scale=ones), kv_len), "give both"),
        ((q, RingLayer(k, v, k_scale=ones, v_scale=ones), kv_len), "only for a float8"),
        ((q[0], cache, kv_len), "4-D tensor"),
    ]
    for fn in (sink_window_attention_ref, sink_window_attention_with_kv_cache):
        for args, msg in bad:
            with pytest.raises(ValueError, match=msg):
                fn(*args)
    k8 = k.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="needs k_scale"):
        sink_window_attention_ref(q.half(), RingLayer(k8, k8), kv_len)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_clear_error_without_triton_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, cache, kv_len = _make(1, 3, 1, 32, 40, [40], torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="cannot run"):
        sink_window_attention_with_kv_cache(q, cache, kv_len)


def test_bench_sink_window_attention_ref(benchmark):
    """CPU timing of the reference at a small shape (pytest-benchmark; select with --benchmark-only)."""
    q, cache, kv_len = _make(1, 64, 2, 32, 256, [200], torch.float32, device="cpu")
    out = benchmark(sink_window_attention_ref, q, cache, kv_len)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# GPU: bf16 (the interpreter's bf16 tl.dot is wrong), real head dims, CUDA-graph capture
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("b", "lq", "h", "d", "s", "kv_lens"),
    [
        (2, 19, 3, 64, 300, [77, 300]),
        (1, 1560, 12, 128, 4680, [4680]),
        (1, 4680, 12, 128, 18720, [9360]),
        (2, 99, 2, 32, 1000, [1, 999]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_matches_reference(b, lq, h, d, s, kv_lens, dtype):
    q, cache, kv_len = _make(b, lq, h, d, s, kv_lens, dtype, device="cuda")
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    _check(out, ref, dtype, "out")


@pytest.mark.gpu
def test_gpu_fp8_cache():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8_e4m3fn needs sm_89+")
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 1560, 12, 128, generator=g).cuda().bfloat16()
    k8, ks = quantize_fp8_per_token_head_ref(torch.randn(1, 4680, 12, 128, generator=g).cuda())
    v8, vs = quantize_fp8_per_token_head_ref(torch.randn(1, 4680, 12, 128, generator=g).cuda())
    kv_len = torch.tensor([3000], dtype=torch.int32, device="cuda")
    cache = RingLayer(k8, v8, k_scale=ks, v_scale=vs)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    _check(out, ref, torch.bfloat16, "out")


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_reads_kv_len_on_device():
    """Warm up (autotune) outside the capture, capture once, change kv_len in place, replay."""
    q, cache, kv_len = _make(1, 1560, 4, 128, 4680, [1560], torch.bfloat16, device="cuda")
    # Every slot becomes valid at some point in this test.
    cache = RingLayer(torch.nan_to_num(cache.k), torch.nan_to_num(cache.v))
    warmup_sink_window_attention(q, cache, kv_len)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    for n in (3120, 4680, 1):
        kv_len.fill_(n)
        graph.replay()
        torch.cuda.synchronize()
        _check(out, sink_window_attention_ref(q, cache, kv_len), torch.bfloat16, f"replay kv_len={n}")


def test_default_scale_is_inverse_sqrt_d():
    q, cache, kv_len = _make(1, 3, 1, 16, 20, [20], torch.float32, device="cpu")
    a = sink_window_attention_ref(q, cache, kv_len)
    b = sink_window_attention_ref(q, cache, kv_len, sm_scale=1 / math.sqrt(16))
    assert torch.equal(a, b)
    assert swa.SUPPORTED_HEAD_DIMS == (16, 32, 64, 128)
