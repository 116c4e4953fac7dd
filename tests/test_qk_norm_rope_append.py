"""qk_norm_rope_append: Triton kernel (interpreter on the CPU) vs the PyTorch reference.

Besides the values, every kernel test checks that the cache outside ``[write_start, write_start + L)``
is bit-for-bit untouched, and the reference itself is checked against independent re-writings
of Wan's ``WanRMSNorm`` and complex-number ``rope_apply`` (with a frame offset, as in causal Wan).
"""

from __future__ import annotations

import pytest
import torch
from conftest import mismatch_report

from arvid.kernels import qk_norm_rope_append as mod
from arvid.kernels._triton_utils import triton_available
from arvid.kernels.fp8 import quantize_fp8_per_token_head_ref
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
    """Arguments of the op (positional list + kwargs) with a cache full of random old K/V."""
    g = torch.Generator().manual_seed(seed)
    seq = grid[0] * grid[1] * grid[2]
    q, k, v = (3 * torch.randn(b, seq, h, d, generator=g).to(device, dtype) for _ in range(3))
    wq = (1 + 0.5 * torch.randn(h * d, generator=g)).to(device, dtype)
    wk = (1 + 0.5 * torch.randn(h * d, generator=g)).to(device, dtype)
    rope_cos, rope_sin = rope_3d_tables(d, max(frame_offset + grid[0], grid[1], grid[2]) + 1, device=device)
    kwargs = {}
    if cache_dtype is not None and cache_dtype.is_floating_point and cache_dtype.itemsize == 1:
        k_cache, ks = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(device))
        v_cache, vs = quantize_fp8_per_token_head_ref(torch.randn(b, s, h, d, generator=g).to(device))
        kwargs = {"k_scale": ks, "v_scale": vs}
    else:
        k_cache = torch.randn(b, s, h, d, generator=g).to(device, cache_dtype or dtype)
        v_cache = torch.randn(b, s, h, d, generator=g).to(device, cache_dtype or dtype)
    ws = torch.tensor([write_start], dtype=torch.int32, device=device)
    fo = torch.tensor([frame_offset], dtype=torch.int32, device=device)
    args = [q, k, v, wq, wk, rope_cos, rope_sin, k_cache, v_cache, ws, fo, grid]
    return args, kwargs


def _clone_state(args, kwargs):
    """Fresh copies of the mutable cache tensors, so kernel and reference each get their own."""
    args = list(args)
    args[7], args[8] = args[7].clone(), args[8].clone()
    return args, {k: v.clone() for k, v in kwargs.items()}


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


def _run_and_compare(args, kwargs, dtype, *, block_t=None):
    seq, ws = args[0].shape[1], int(args[9].item())
    before = [args[7].clone(), args[8].clone()]
    ker_args, ker_kwargs = _clone_state(args, kwargs)
    ref_args, ref_kwargs = _clone_state(args, kwargs)
    if block_t is None:
        q_out = qk_norm_rope_append_kv_cache(*ker_args, **ker_kwargs)
    else:  # the launch layer, to force a tokens-per-program tile
        ks, vs = ker_kwargs.get("k_scale"), ker_kwargs.get("v_scale")
        q_out = mod._qk_norm_rope_append_fwd(*ker_args, 1e-6, ks, vs, block_t=block_t)
    q_ref = qk_norm_rope_append_kv_cache_ref(*ref_args, **ref_kwargs)
    assert q_out.shape == args[0].shape and q_out.dtype == dtype and q_out.is_contiguous()
    _assert_close(q_out, q_ref, dtype, "q_out")
    sl = slice(ws, ws + seq)
    if "k_scale" in kwargs:
        # FP8: compare dequantized values; a 1-ulp difference of the rotated K before quantization
        # may move a value by one e4m3 step (2**-3 relative; 2**-9 * scale in the subnormal range).
        for name, i, sc in (("k_cache", 7, "k_scale"), ("v_cache", 8, "v_scale")):
            got = ker_args[i][:, sl].float() * ker_kwargs[sc][:, sl, :, None]
            exp = ref_args[i][:, sl].float() * ref_kwargs[sc][:, sl, :, None]
            step = ref_kwargs[sc][:, sl, :, None] * 2.0**-9
            err_ok = (got - exp).abs() <= 0.125 * exp.abs() + step
            assert err_ok.all(), mismatch_report(got, exp, atol=0, rtol=0.125, name=name)
            n_codes = int((ker_args[i][:, sl].view(torch.uint8) != ref_args[i][:, sl].view(torch.uint8)).sum())
            assert n_codes <= max(1, got.numel() // 200), f"{name}: {n_codes} of {got.numel()} fp8 codes differ"
            _assert_close(ker_kwargs[sc][:, sl], ref_kwargs[sc][:, sl], torch.float32, sc)
            _assert_untouched(ker_kwargs[sc], kwargs[sc], ws, seq, sc)
    else:
        _assert_close(ker_args[7][:, sl], ref_args[7][:, sl], dtype, "k_cache")
        # V is only cast: bit-exact.
        assert torch.equal(ker_args[8][:, sl], ref_args[8][:, sl]), "v_cache written slots differ"
    _assert_untouched(ker_args[7], before[0], ws, seq, "k_cache")
    _assert_untouched(ker_args[8], before[1], ws, seq, "v_cache")


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
    args, kwargs = _inputs(b, h, d, grid, s, ws, fo, dtype)
    _run_and_compare(args, kwargs, dtype)


@needs_triton
@pytest.mark.parametrize("block_t", [1, 4])
def test_tokens_per_program(block_t):
    """The GPU picks one token per program at Wan's H*D; cover that tile (and a partial one) too."""
    args, kwargs = _inputs(2, 3, 64, (1, 3, 5), 40, 7, 2, torch.float16)
    _run_and_compare(args, kwargs, torch.float16, block_t=block_t)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_strided_views(dtype):
    """q/k/v as views of a fused qkv output; caches as views of a fused [B, S, 2, H, D] buffer."""
    b, h, d, grid, s = 2, 3, 32, (1, 3, 4), 30
    args, _ = _inputs(b, h, d, grid, s, 10, 1, dtype)
    qkv = torch.stack(args[:3], dim=2)  # [B, L, 3, H, D]
    kv = torch.stack(args[7:9], dim=2)  # [B, S, 2, H, D]
    args[:3] = [qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]]
    args[7:9] = [kv[:, :, 0], kv[:, :, 1]]
    ref_args = list(args)
    ref_args[:3] = [t.contiguous() for t in args[:3]]
    ref_args[7:9] = [t.contiguous() for t in args[7:9]]
    q_out = qk_norm_rope_append_kv_cache(*args)
    q_ref = qk_norm_rope_append_kv_cache_ref(*ref_args)
    _assert_close(q_out, q_ref, dtype, "q_out")
    _assert_close(kv[:, :, 0], ref_args[7], dtype, "k_cache")
    assert torch.equal(kv[:, :, 1], ref_args[8])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fp8_cache(dtype):
    """Quantize-on-write to float8_e4m3fn with per token-head scales (rounding done in-kernel)."""
    args, kwargs = _inputs(2, 3, 32, (2, 2, 5), 50, 12, 4, dtype, cache_dtype=torch.float8_e4m3fn)
    args[2][0, 0, 1] = 0.0  # an all-zero head: scale floors at FP8_SCALE_MIN, values stay 0
    _run_and_compare(args, kwargs, dtype)


@needs_triton
def test_out_of_range_slots_are_dropped():
    """write_start is only known on the device: slots past S are skipped, never written out of bounds."""
    args, _ = _inputs(1, 2, 32, (1, 2, 3), 10, 7, 0, torch.float32)
    big_k = torch.randn(1, 16, 2, 32)
    big_v = torch.randn(1, 16, 2, 32)
    before_k, before_v = big_k.clone(), big_v.clone()
    args[7], args[8] = big_k[:, :10], big_v[:, :10]  # the cache is the first 10 slots of a larger buffer
    qk_norm_rope_append_kv_cache(*args)
    assert torch.equal(big_k[:, 10:], before_k[:, 10:]) and torch.equal(big_v[:, 10:], before_v[:, 10:])
    assert torch.equal(big_k[:, :7], before_k[:, :7]) and not torch.equal(big_k[:, 7:10], before_k[:, 7:10])


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
    args, _ = _inputs(1, 1, 32, (1, 2, 3), 10, 5, 0, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="outside the cache"):
        qk_norm_rope_append_kv_cache_ref(*args)
    args, _ = _inputs(1, 1, 32, (1, 2, 3), 10, 0, 0, torch.float32, device="cpu")
    args[10] = torch.tensor([50], dtype=torch.int32)  # the table has only 4 positions
    with pytest.raises(ValueError, match="past the table"):
        qk_norm_rope_append_kv_cache_ref(*args)


def test_input_validation():
    args, _ = _inputs(1, 2, 32, (1, 2, 3), 20, 0, 0, torch.float32, device="cpu")
    _, k, v, wq, _, cos, _, kc, vc, ws, fo, _ = args

    def swap(*pairs):
        a = list(args)
        for i, value in zip(pairs[::2], pairs[1::2], strict=True):
            a[i] = value
        return a

    bad = [
        (swap(11, (1, 2, 4)), {}, "hold 8 tokens"),
        (swap(1, k[:, :5]), {}, "must share a shape"),
        (swap(2, v.half()), {}, "must share a float16"),
        (swap(3, wq[:10]), {}, "norm_q_weight must be"),
        (swap(5, cos.double()), {}, "rope_cos must be float32"),
        (swap(7, kc[:, :, :1], 8, vc[:, :, :1]), {}, "the cache is"),
        (swap(7, kc[:, :4], 8, vc[:, :4]), {}, "do not fit"),
        (swap(8, vc[:, :5]), {}, "must match"),
        (swap(9, ws.long()), {}, "write_start must be an int32"),
        (swap(10, fo.reshape(())), {}, "frame_offset must be an int32"),
        (args, {"k_scale": torch.ones(1, 20, 2)}, "give both"),
        (swap(11, (1, 2)), {}, "three ints"),
    ]
    for fn in (qk_norm_rope_append_kv_cache_ref, qk_norm_rope_append_kv_cache):
        for a, kwargs, msg in bad:
            with pytest.raises(ValueError, match=msg):
                fn(*a, **kwargs)
    k8 = kc.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="needs k_scale"):
        qk_norm_rope_append_kv_cache_ref(*swap(7, k8, 8, k8))


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
    args, kwargs = _inputs(b, h, d, grid, s, ws, fo, dtype, device="cuda")
    _run_and_compare(args, kwargs, dtype)


@pytest.mark.gpu
def test_gpu_fp8_cache():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8_e4m3fn needs sm_89+")
    args, kwargs = _inputs(1, 12, 128, (3, 30, 52), 18720, 1560, 3, torch.bfloat16, device="cuda",
                           cache_dtype=torch.float8_e4m3fn)  # fmt: skip
    _run_and_compare(args, kwargs, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_reads_offsets_on_device():
    """Capture once; moving write_start / frame_offset in place moves the write and the RoPE frames."""
    args, _ = _inputs(1, 12, 128, (3, 30, 52), 18720, 0, 0, torch.bfloat16, device="cuda")
    args[5], args[6] = rope_3d_tables(128, 64, device="cuda")
    qk_norm_rope_append_kv_cache(*args)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_out = qk_norm_rope_append_kv_cache(*args)
    for ws, fo in ((4680, 3), (14040, 9)):
        args[9].fill_(ws)
        args[10].fill_(fo)
        graph.replay()
        torch.cuda.synchronize()
        ref_args, _ = _clone_state(args, {})
        q_ref = qk_norm_rope_append_kv_cache_ref(*ref_args)
        _assert_close(q_out, q_ref, torch.bfloat16, f"q_out ws={ws}")
        _assert_close(args[7][:, ws : ws + 4680], ref_args[7][:, ws : ws + 4680], torch.bfloat16, "k_cache")
