"""Kernel contracts (issue 14, item 7): FP8 attention invariant to the scale of V, one cache-dtype
rule for both kernels, error messages that name the public function.

The plan's bounds (write past the cache end, frames past the RoPE table) are tested beside the
append kernel in ``tests/test_qk_norm_rope_append.py``.
"""

from __future__ import annotations

import pytest
import torch

from arvid.kernels._triton_utils import triton_available
from arvid.kernels.fp8 import quantize_fp8_per_token_head_ref
from arvid.kernels.layouts import PlanTensors, RingLayer, RopeCosSin
from arvid.kernels.qk_norm_rope_append import qk_norm_rope_append_kv_cache, qk_norm_rope_append_kv_cache_ref
from arvid.kernels.rope_3d import rope_3d_tables
from arvid.kernels.sink_window_attention import sink_window_attention_ref, sink_window_attention_with_kv_cache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton (or TRITON_INTERPRET=1) not available")
FP8 = torch.float8_e4m3fn


def _fp8_attention_case(v_magnitude: float, dtype: torch.dtype, *, b=1, lq=19, h=2, d=32, s=80, kv=70):
    """q, an FP8 cache whose V is N(0, 1) * v_magnitude (K unit scale), and kv_len."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(b, lq, h, d, generator=g).to(DEVICE, dtype)
    k8, ks = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(DEVICE))
    v8, vs = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(DEVICE) * v_magnitude)
    return q, RingLayer(k8, v8, k_scale=ks, v_scale=vs), torch.full((b,), kv, dtype=torch.int32, device=DEVICE)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|: the error on the scale of the output (0 for equal tensors)."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@needs_triton
@pytest.mark.parametrize("v_magnitude", [1.0, 1e-2, 1e-3])
def test_fp8_attention_error_does_not_grow_as_v_shrinks_fp16(v_magnitude):
    """fp16 queries over an FP8 cache: p * s_v once went subnormal in the fp16 dot operand below
    amax|V| ~ 0.027 (1.1e-2 relative error at a 2**-10 V scale); now the V scales enter the dot
    relative to the tile's largest, so the relative error is that of fp16 rounding at every scale."""
    q, cache, kv_len = _fp8_attention_case(v_magnitude, torch.float16)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    # fp16 rounds p (2**-11 relative) and the output once: a few 1e-4 of max|out|.
    assert _relative_error(out, ref) < 2e-3, f"relative error {_relative_error(out, ref):.2e} at |V| ~ {v_magnitude}"


@needs_triton
def test_fp8_attention_scales_exactly_with_a_power_of_two_v():
    """V * 2**-10 quantizes to the same e4m3 values with scales * 2**-10, and the kernel's output
    is exactly the unit-scale output * 2**-10: no part of it depends on V's overall scale."""
    q, cache, kv_len = _fp8_attention_case(1.0, torch.float32)
    small = RingLayer(cache.k, cache.v, k_scale=cache.k_scale, v_scale=cache.v_scale * 2.0**-10)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    out_small = sink_window_attention_with_kv_cache(q, small, kv_len)
    assert torch.equal(out_small, out * 2.0**-10)


@needs_triton
def test_fp8_cache_with_fp32_activations_in_both_kernels():
    """The one rule: an FP8 cache takes fp16 / bf16 / fp32 activations, in the append and the attention."""
    q, cache, kv_len = _fp8_attention_case(1.0, torch.float32)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    assert _relative_error(out, ref) < 1e-5
    kw = _append_kwargs(torch.float32, FP8)
    qk_norm_rope_append_kv_cache(**kw)  # accepted as well
    qk_norm_rope_append_kv_cache_ref(**kw)


def _append_kwargs(act_dtype: torch.dtype, cache_dtype: torch.dtype, *, b=1, h=2, d=32, grid=(1, 2, 3), s=12):
    g = torch.Generator().manual_seed(0)
    seq = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(b, seq, h, d, generator=g).to(DEVICE, act_dtype) for _ in range(3))
    w = torch.ones(h * d, dtype=act_dtype, device=DEVICE)
    if cache_dtype == FP8:
        k8, ks = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(DEVICE))
        v8, vs = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(DEVICE))
        cache = RingLayer(k8, v8, k_scale=ks, v_scale=vs)
    else:
        cache = RingLayer(*(torch.zeros(b, s, h, d, dtype=cache_dtype, device=DEVICE) for _ in range(2)))
    plan = PlanTensors.zeros(b, DEVICE)
    rope = RopeCosSin(*rope_3d_tables(d, 8, device=DEVICE))
    return {"q": q, "k": k, "v": v, "norm_q_weight": w, "norm_k_weight": w, "cache": cache, "rope": rope,
            "plan": plan, "grid_sizes": grid}  # fmt: skip


@needs_triton
@pytest.mark.parametrize(("act", "cache"), [(torch.float16, torch.float32), (torch.float32, torch.float16)])
def test_a_float_cache_of_another_dtype_is_refused_by_both_kernels(act, cache):
    msg = r"the activations \(torch\.\w+\) and the cache \(torch\.\w+\) must share a dtype"
    kw = _append_kwargs(act, cache)
    for fn in (qk_norm_rope_append_kv_cache, qk_norm_rope_append_kv_cache_ref):
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: {msg}"):
            fn(**kw)
    q = torch.randn(1, 3, 2, 32, dtype=act, device=DEVICE)
    kv_len = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    for fn in (sink_window_attention_with_kv_cache, sink_window_attention_ref):
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: {msg}"):
            fn(q, kw["cache"], kv_len)


@needs_triton
def test_errors_name_the_public_function():
    kw = _append_kwargs(torch.float32, torch.float32)
    for fn in (qk_norm_rope_append_kv_cache, qk_norm_rope_append_kv_cache_ref):
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: grid_sizes"):
            fn(**{**kw, "grid_sizes": (1, 2, 4)})
    q = torch.randn(1, 3, 2, 16, device=DEVICE)
    for fn in (sink_window_attention_with_kv_cache, sink_window_attention_ref):
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: head dim mismatch"):
            fn(q, kw["cache"], torch.zeros(1, dtype=torch.int32, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("v_magnitude", [1.0, 1e-2, 1e-3])
def test_gpu_fp8_attention_error_does_not_grow_as_v_shrinks(dtype, v_magnitude):
    """bf16 only here: the interpreter's tl.dot is wrong for bf16 operands."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8_e4m3fn needs sm_89+")
    q, cache, kv_len = _fp8_attention_case(v_magnitude, dtype, lq=1560, h=12, d=128, s=4680, kv=3000)
    out = sink_window_attention_with_kv_cache(q, cache, kv_len)
    ref = sink_window_attention_ref(q, cache, kv_len)
    # bf16 rounds p to 2**-8 relative; fp16 to 2**-11 (then the output once).
    limit = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
    assert _relative_error(out, ref) < limit
