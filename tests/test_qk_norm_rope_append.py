"""qk_norm_rope_append: Triton kernel (interpreter on the CPU) vs the PyTorch reference.

Besides the values, every kernel test checks that the cache outside ``[write_start, write_start + L)``
is bit-for-bit untouched, and the reference itself is checked against independent re-writings
of Wan's ``WanRMSNorm`` and complex-number ``rope_apply`` (with a frame offset, as in causal Wan).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import mismatch_report

from arvid.kernels._triton_utils import triton_available
from arvid.kernels.fp8 import quantize_fp8_per_token_head_ref
from arvid.kernels.layouts import PlanTensors, RingLayer, RopeCosSin
from arvid.kernels.qk_norm_rope_append import (
    qk_norm_rope_append_kv_cache,
    qk_norm_rope_append_kv_cache_ref,
    rms_norm_across_heads_ref,
)
from arvid.kernels.rope_3d import apply_rope_3d_ref, rope_3d_cos_sin, rope_3d_tables

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton (or TRITON_INTERPRET=1) not available")

# The kernel rounds exactly where Wan's reference rounds (after x * rstd, after * w, after RoPE),
# so the remaining difference is 1/sqrt vs torch.rsqrt (~1 fp32 ulp in rstd). fp32: 1e-5 is
# ~100 ulps on O(1) values. fp16/bf16: one ulp of rstd can flip one intermediate rounding,
# i.e. 1-2 ulps of the result (fp16 2**-10, bf16 2**-7 relative); values are O(1-10).
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 4e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 1.6e-2},
}


def _inputs(b, h, d, grid, s, write_start, frame_offset, dtype, *, device=DEVICE, cache_dtype=None, seed=0):
    """Keyword arguments of the op, by name, with a cache full of random old K/V."""
    g = torch.Generator().manual_seed(seed)
    seq = grid[0] * grid[1] * grid[2]
    q, k, v = (3 * torch.randn(b, seq, h, d, generator=g).to(device, dtype) for _ in range(3))
    wq = (1 + 0.5 * torch.randn(h * d, generator=g)).to(device, dtype)
    wk = (1 + 0.5 * torch.randn(h * d, generator=g)).to(device, dtype)
    rope = RopeCosSin(*rope_3d_tables(d, max(frame_offset + grid[0], grid[1], grid[2]) + 1, device=device))
    if cache_dtype is not None and cache_dtype.is_floating_point and cache_dtype.itemsize == 1:
        k_cache, ks = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(device))
        v_cache, vs = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(device))
        cache = RingLayer(k_cache, v_cache, k_scale=ks, v_scale=vs)
    else:
        k_cache = torch.randn(b, s, h, d, generator=g).to(device, cache_dtype or dtype)
        v_cache = torch.randn(b, s, h, d, generator=g).to(device, cache_dtype or dtype)
        cache = RingLayer(k_cache, v_cache)
    plan = PlanTensors(
        write_start=torch.tensor([write_start], dtype=torch.int32, device=device),
        kv_len=torch.full((b,), min(write_start + seq, s), dtype=torch.int32, device=device),  # not read
        frame_offset=torch.tensor([frame_offset], dtype=torch.int32, device=device),
    )
    return {
        "q": q, "k": k, "v": v, "norm_q_weight": wq, "norm_k_weight": wk,
        "cache": cache, "rope": rope, "plan": plan, "grid_sizes": grid,
    }  # fmt: skip


def _clone_cache(cache):
    """A copy of a layer's cache tensors (scales too), so kernel and reference each get their own."""
    clone = lambda t: None if t is None else t.clone()
    return RingLayer(cache.k.clone(), cache.v.clone(), clone(cache.k_scale), clone(cache.v_scale))


def _clone_state(inputs):
    """The op's arguments with fresh copies of the mutable cache."""
    return {**inputs, "cache": _clone_cache(inputs["cache"])}


def _assert_close(actual, expected, dtype, name):
    report = mismatch_report(actual, expected, name=name, **TOL[dtype])
    assert not report, report


def _assert_untouched(after, before, ws, seq, name):
    """Slots outside [ws, ws + seq) must be bit-identical (compared as raw bytes: NaN-safe, fp8-safe)."""
    keep = torch.ones(after.shape[1], dtype=torch.bool, device=after.device)
    keep[ws : ws + seq] = False
    a, b = after[:, keep].view(torch.uint8), before[:, keep].view(torch.uint8)
    n = int((a != b).sum())
    assert n == 0, f"{name}: {n} bytes changed outside the written slots [{ws}, {ws + seq})"


def _run_and_compare(inputs, dtype, *, block_t=None):
    q, cache = inputs["q"], inputs["cache"]
    seq, ws = q.shape[1], int(inputs["plan"].write_start.item())
    before = _clone_cache(cache)
    ker, ref = _clone_state(inputs), _clone_state(inputs)
    q_out = qk_norm_rope_append_kv_cache(**ker, block_t=block_t)  # block_t forces a tokens-per-program tile
    q_ref = qk_norm_rope_append_kv_cache_ref(**ref)
    assert q_out.shape == q.shape and q_out.dtype == dtype and q_out.is_contiguous()
    _assert_close(q_out, q_ref, dtype, "q_out")
    sl = slice(ws, ws + seq)
    kc, rc = ker["cache"], ref["cache"]
    if cache.is_fp8:
        # FP8: compare dequantized values; a 1-ulp difference of the rotated K before quantization
        # may move a value by one e4m3 step (2**-3 relative; 2**-9 * scale in the subnormal range).
        for name, x, sc in (("k_cache", "k", "k_scale"), ("v_cache", "v", "v_scale")):
            k_x, k_sc, r_x, r_sc = getattr(kc, x), getattr(kc, sc), getattr(rc, x), getattr(rc, sc)
            got = k_x[:, sl].float() * k_sc[:, sl, :, None]
            exp = r_x[:, sl].float() * r_sc[:, sl, :, None]
            step = r_sc[:, sl, :, None] * 2.0**-9
            err_ok = (got - exp).abs() <= 0.125 * exp.abs() + step
            assert err_ok.all(), mismatch_report(got, exp, atol=0, rtol=0.125, name=name)
            n_codes = int((k_x[:, sl].view(torch.uint8) != r_x[:, sl].view(torch.uint8)).sum())
            assert n_codes <= max(1, got.numel() // 200), f"{name}: {n_codes} of {got.numel()} fp8 codes differ"
            _assert_close(k_sc[:, sl], r_sc[:, sl], torch.float32, sc)
            _assert_untouched(k_sc, getattr(cache, sc), ws, seq, sc)
    else:
        _assert_close(kc.k[:, sl], rc.k[:, sl], dtype, "k_cache")
        # V is only cast: bit-exact.
        assert torch.equal(kc.v[:, sl], rc.v[:, sl]), "v_cache written slots differ"
    _assert_untouched(kc.k, before.k, ws, seq, "k_cache")
    _assert_untouched(kc.v, before.v, ws, seq, "v_cache")


# (B, H, D, (F, Hp, Wp), S, write_start, frame_offset)
CASES = [
    pytest.param(1, 1, 32, (1, 1, 1), 8, 3, 0, id="L1"),
    pytest.param(2, 3, 32, (1, 1, 3), 30, 5, 2, id="L3-mid-cache"),
    pytest.param(1, 2, 128, (1, 1, 19), 40, 0, 0, id="L19-d128-write-at-0"),
    pytest.param(2, 2, 64, (3, 3, 11), 200, 99, 9, id="L99-overwrite-middle"),
    pytest.param(1, 1, 32, (1, 11, 107), 1300, 123, 3, id="L1177"),
    pytest.param(1, 12, 128, (2, 2, 3), 36, 24, 5, id="wan-heads-ends-at-S"),
    pytest.param(2, 3, 16, (2, 2, 2), 16, 8, 1, id="d16"),
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("b", "h", "d", "grid", "s", "ws", "fo"), CASES)
def test_kernel_matches_reference(b, h, d, grid, s, ws, fo, dtype):
    _run_and_compare(_inputs(b, h, d, grid, s, ws, fo, dtype), dtype)


@needs_triton
@pytest.mark.parametrize("block_t", [1, 4])
def test_tokens_per_program(block_t):
    """The GPU picks one token per program at Wan's H*D; cover that tile (and a partial one) too."""
    _run_and_compare(_inputs(2, 3, 64, (1, 3, 5), 40, 7, 2, torch.float16), torch.float16, block_t=block_t)


def test_block_t_must_be_a_power_of_2():
    inputs = _inputs(1, 2, 32, (1, 2, 3), 20, 0, 0, torch.float32, device="cpu")
    for bad in (0, 3, -4):
        with pytest.raises(ValueError, match="block_t must be a power of 2"):
            qk_norm_rope_append_kv_cache(**inputs, block_t=bad)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_strided_views(dtype):
    """q/k/v as views of a fused qkv output; caches as views of a fused [B, S, 2, H, D] buffer."""
    b, h, d, grid, s = 2, 3, 32, (1, 3, 4), 30
    inputs = _inputs(b, h, d, grid, s, 10, 1, dtype)
    qkv = torch.stack([inputs["q"], inputs["k"], inputs["v"]], dim=2)  # [B, L, 3, H, D]
    kv = torch.stack([inputs["cache"].k, inputs["cache"].v], dim=2)  # [B, S, 2, H, D]
    views = {**inputs, "q": qkv[:, :, 0], "k": qkv[:, :, 1], "v": qkv[:, :, 2]}
    views["cache"] = RingLayer(kv[:, :, 0], kv[:, :, 1])
    ref = {n: views[n].contiguous() for n in ("q", "k", "v")}
    ref = {**views, **ref, "cache": RingLayer(kv[:, :, 0].contiguous(), kv[:, :, 1].contiguous())}
    q_out = qk_norm_rope_append_kv_cache(**views)
    q_ref = qk_norm_rope_append_kv_cache_ref(**ref)
    _assert_close(q_out, q_ref, dtype, "q_out")
    _assert_close(kv[:, :, 0], ref["cache"].k, dtype, "k_cache")
    assert torch.equal(kv[:, :, 1], ref["cache"].v)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fp8_cache(dtype):
    """Quantize-on-write to float8_e4m3fn with per token-head scales (rounding done in-kernel)."""
    inputs = _inputs(2, 3, 32, (2, 2, 5), 50, 12, 4, dtype, cache_dtype=torch.float8_e4m3fn)
    inputs["v"][0, 0, 1] = 0.0  # an all-zero head: scale floors at FP8_SCALE_MIN, values stay 0
    _run_and_compare(inputs, dtype)


@needs_triton
def test_out_of_range_slots_raise_where_host_known_else_are_dropped():
    """A host-known plan (CPU scalars) past the cache raises before any write, as the reference does;
    a device-only plan (CUDA scalars: no sync) keeps memory safe, slots past S are skipped."""
    inputs = _inputs(1, 2, 32, (1, 2, 3), 10, 7, 0, torch.float32)
    big_k = torch.randn(1, 16, 2, 32, device=DEVICE)
    big_v = torch.randn(1, 16, 2, 32, device=DEVICE)
    before_k, before_v = big_k.clone(), big_v.clone()
    # The cache is the first 10 slots of a larger buffer.
    cache = RingLayer(big_k[:, :10], big_v[:, :10])
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match=r"qk_norm_rope_append_kv_cache: write_start=7 \+ L=6 is outside"):
            qk_norm_rope_append_kv_cache(**{**inputs, "cache": cache})
        assert torch.equal(big_k, before_k) and torch.equal(big_v, before_v)
        return
    qk_norm_rope_append_kv_cache(**{**inputs, "cache": cache})
    assert torch.equal(big_k[:, 10:], before_k[:, 10:]) and torch.equal(big_v[:, 10:], before_v[:, 10:])
    assert torch.equal(big_k[:, :7], before_k[:, :7]) and not torch.equal(big_k[:, 7:10], before_k[:, 7:10])


@needs_triton
def test_frames_past_the_rope_table_raise_where_host_known():
    inputs = _inputs(1, 2, 32, (2, 2, 3), 20, 0, 0, torch.float32)
    inputs["plan"].frame_offset.fill_(3)  # the table has 4 positions (0-3): frame 4 is past it
    before = inputs["cache"].k.clone()
    if DEVICE != "cpu":
        pytest.skip("a CUDA plan is device-only: the kernel reads cos = sin = 0 there (documented)")
    for fn in (qk_norm_rope_append_kv_cache, qk_norm_rope_append_kv_cache_ref):
        with pytest.raises(ValueError, match=rf"{fn.__name__}: RoPE position 4 .* past the table's 4 positions"):
            fn(**inputs)
    assert torch.equal(inputs["cache"].k, before)
    inputs["plan"].frame_offset.fill_(-1)
    with pytest.raises(ValueError, match="past the table"):
        qk_norm_rope_append_kv_cache(**inputs)


# ---------------------------------------------------------------------------------------------
# The reference against independent re-writings of Wan's code
# ---------------------------------------------------------------------------------------------


class _WanRMSNorm(torch.nn.Module):
    """Wan 2.1's WanRMSNorm, verbatim in substance."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self._norm(x.float()).type_as(x) * self.weight

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)


def _wan_rope_params(max_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = torch.outer(torch.arange(max_len), 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64) / dim))
    return torch.polar(torch.ones_like(freqs), freqs)


def _wan_causal_rope_apply(x: torch.Tensor, grid: tuple[int, int, int], start_frame: int) -> torch.Tensor:
    """Wan's complex-number rope_apply with the causal start-frame offset, in float64."""
    b, seq, n, d = x.shape
    c = d // 2
    freqs = torch.cat(
        [
            _wan_rope_params(64, d - 4 * (d // 6)),
            _wan_rope_params(64, 2 * (d // 6)),
            _wan_rope_params(64, 2 * (d // 6)),
        ],
        dim=1,
    ).split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    xc = torch.view_as_complex(x.double().reshape(b, seq, n, -1, 2))
    fr = torch.cat(
        [
            freqs[0][start_frame : start_frame + f].view(f, 1, 1, -1).expand(f, h, w, -1),
            freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(seq, 1, -1)
    return torch.view_as_real(xc * fr).flatten(3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reference_norm_is_wan_rmsnorm(dtype):
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(2, 7, 3, 32, generator=g)).to(dtype)
    norm = _WanRMSNorm(96).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(96, generator=g))
        expected = norm(x.flatten(2)).unflatten(-1, (3, 32))
    assert torch.equal(rms_norm_across_heads_ref(x, norm.weight.detach(), 1e-6), expected)


@pytest.mark.parametrize("d", [32, 128])
def test_reference_rope_is_wan_rope_with_frame_offset(d):
    grid, start = (2, 3, 4), 5
    x = torch.randn(1, 24, 2, d, generator=torch.Generator().manual_seed(6))
    cos, sin = rope_3d_cos_sin(*rope_3d_tables(d, 16), grid, torch.tensor([start], dtype=torch.int32))
    report = mismatch_report(
        apply_rope_3d_ref(x, cos, sin), _wan_causal_rope_apply(x, grid, start), atol=1e-5, rtol=1e-5, name="rope"
    )
    assert not report, report


def test_reference_rejects_write_past_cache_and_frames_past_table():
    inputs = _inputs(1, 1, 32, (1, 2, 3), 10, 5, 0, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="outside the cache"):
        qk_norm_rope_append_kv_cache_ref(**inputs)
    inputs = _inputs(1, 1, 32, (1, 2, 3), 10, 0, 0, torch.float32, device="cpu")
    inputs["plan"].frame_offset.fill_(50)  # the table has only 4 positions
    with pytest.raises(ValueError, match="past the table"):
        qk_norm_rope_append_kv_cache_ref(**inputs)


def test_input_validation():
    inputs = _inputs(1, 2, 32, (1, 2, 3), 20, 0, 0, torch.float32, device="cpu")
    k, v, wq, cache, rope, plan = (inputs[n] for n in ("k", "v", "norm_q_weight", "cache", "rope", "plan"))
    kc, vc = cache.k, cache.v

    def swap(**changes):
        return {**inputs, **changes}

    bad = [
        (swap(grid_sizes=(1, 2, 4)), "hold 8 tokens"),
        (swap(k=k[:, :5]), "must share a shape"),
        (swap(v=v.half()), "must share a float16"),
        (swap(norm_q_weight=wq[:10]), "norm_q_weight must be"),
        (swap(rope=replace(rope, cos=rope.cos.double())), "rope_cos must be float32"),
        (swap(cache=RingLayer(kc[:, :, :1], vc[:, :, :1])), "the cache is"),
        (swap(cache=RingLayer(kc[:, :4], vc[:, :4])), "do not fit"),
        (swap(cache=RingLayer(kc, vc[:, :5])), "must match"),
        (swap(plan=replace(plan, write_start=plan.write_start.long())), "write_start must be an int32"),
        (swap(plan=replace(plan, frame_offset=plan.frame_offset.reshape(()))), "frame_offset must be an int32"),
        (swap(cache=replace(cache, k_scale=torch.ones(1, 20, 2))), "give both"),
        (swap(grid_sizes=(1, 2)), "three ints"),
    ]
    for fn in (qk_norm_rope_append_kv_cache_ref, qk_norm_rope_append_kv_cache):
        for a, msg in bad:
            with pytest.raises(ValueError, match=msg):
                fn(**a)
    k8 = kc.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="needs k_scale"):
        qk_norm_rope_append_kv_cache_ref(**swap(cache=RingLayer(k8, k8)))


# ---------------------------------------------------------------------------------------------
# GPU: bf16, the real shape, CUDA-graph capture
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("b", "h", "d", "grid", "s", "ws", "fo"),
    [(1, 12, 128, (3, 30, 52), 18720, 4680, 6), (2, 3, 32, (1, 11, 107), 2000, 100, 3)],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_matches_reference(b, h, d, grid, s, ws, fo, dtype):
    _run_and_compare(_inputs(b, h, d, grid, s, ws, fo, dtype, device="cuda"), dtype)


@pytest.mark.gpu
def test_gpu_fp8_cache():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8_e4m3fn needs sm_89+")
    inputs = _inputs(1, 12, 128, (3, 30, 52), 18720, 1560, 3, torch.bfloat16, device="cuda",
                     cache_dtype=torch.float8_e4m3fn)  # fmt: skip
    _run_and_compare(inputs, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_reads_offsets_on_device():
    """Capture once; moving write_start / frame_offset in place moves the write and the RoPE frames."""
    inputs = _inputs(1, 12, 128, (3, 30, 52), 18720, 0, 0, torch.bfloat16, device="cuda")
    inputs["rope"] = RopeCosSin(*rope_3d_tables(128, 64, device="cuda"))
    qk_norm_rope_append_kv_cache(**inputs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_out = qk_norm_rope_append_kv_cache(**inputs)
    plan, cache = inputs["plan"], inputs["cache"]
    for ws, fo in ((4680, 3), (14040, 9)):
        plan.write_start.fill_(ws)
        plan.frame_offset.fill_(fo)
        graph.replay()
        torch.cuda.synchronize()
        ref = _clone_state(inputs)
        q_ref = qk_norm_rope_append_kv_cache_ref(**ref)
        _assert_close(q_out, q_ref, torch.bfloat16, f"q_out ws={ws}")
        _assert_close(cache.k[:, ws : ws + 4680], ref["cache"].k[:, ws : ws + 4680], torch.bfloat16, "k_cache")
