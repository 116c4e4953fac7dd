"""Fused sink + window attention read straight off one layer's ring-buffer KV cache.

LongLive keeps, per layer, K/V for a pinned "sink" chunk plus a sliding window of recent
chunks in fixed slots ``[0, S)``; the valid tokens always form a prefix ``[0, kv_len[b])``.
Softmax attention does not depend on the order of the keys, so the chunk's queries attend
to the cache prefix as it lies: no roll, no copy, no concatenation of sink and window.

Three layers, as in the Triton fused-attention tutorial:

* ``_sink_window_attn_kernel`` (``triton.jit``): one program per (query tile, batch * head),
  online softmax in base 2 with fp32 accumulation, the key loop stopping at ``kv_len[b]``
  read on the device;
* ``_sink_window_attn_fwd``: strides, grid and launch;
* :func:`sink_window_attention_with_kv_cache`: checks and the public API.

:func:`sink_window_attention_ref` is the plain-PyTorch reference with the same signature. Both
take the layer's cache as a :class:`~arvid.kernels.layouts.RingLayer` (K, V and, for FP8, their
scales) and the valid lengths ``kv_len`` (``PlanTensors.kv_len`` of the plan).

Autotuning happens on the first call for each shape key; call
:func:`warmup_sink_window_attention` (or the op itself) once with the real shapes before
capturing a CUDA graph, since benchmarking configs cannot run inside a capture.
"""

from __future__ import annotations

import math

import torch

from ._triton_utils import (
    FLOAT_DTYPES,
    SUPPORTED_HEAD_DIMS,
    check_cache_dtypes,
    check_kernel_device,
    has_sm89,
    import_triton,
    interpreting,
    max_shared_memory,
    next_power_of_2,
    require_triton,
)
from .layouts import RingLayer

triton, tl = import_triton()  # optional: the reference must import and run without it

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "sink_window_attention_ref",
    "sink_window_attention_with_kv_cache",
    "warmup_sink_window_attention",
]

_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------
# Input checks (host-side, shapes and dtypes only: never reads device values)
# ----------------------------------------------------------------------------------------


def _check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_len: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    name: str,
) -> bool:
    """Validate shapes / dtypes / devices; return True when the cache is FP8. Errors start with ``name``."""
    for t, n in ((q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache")):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: {n} must be a 4-D tensor [B, L, H, D], got {getattr(t, 'shape', type(t))}")
    b, _, h, d = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{name}: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    bk, _, hk, dk = k_cache.shape
    if bk != b or hk != h:
        raise ValueError(f"{name}: q is [B={b}, Lq, H={h}, D] but the cache is [B={bk}, S, H={hk}, D]")
    if dk != d:
        raise ValueError(f"{name}: head dim mismatch: q has D={d}, the cache D={dk}")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: q must be float16, bfloat16 or float32, got {q.dtype}")
    is_fp8 = check_cache_dtypes(name, q.dtype, k_cache, v_cache, k_scale, v_scale)
    if is_fp8:
        for t, n in ((k_scale, "k_scale"), (v_scale, "v_scale")):
            if t.device != q.device:
                raise ValueError(f"{name}: {n} is on {t.device}, q on {q.device}")
    if not isinstance(kv_len, torch.Tensor) or kv_len.dtype != torch.int32 or tuple(kv_len.shape) != (b,):
        raise ValueError(
            f"{name}: kv_len must be an int32 tensor of shape [B={b}] on the device, got "
            f"{getattr(kv_len, 'dtype', type(kv_len))} {tuple(getattr(kv_len, 'shape', ()))}"
        )
    for t, n in ((k_cache, "k_cache"), (v_cache, "v_cache"), (kv_len, "kv_len")):
        if t.device != q.device:
            raise ValueError(f"{name}: {n} is on {t.device}, q on {q.device}")
    return is_fp8


# ----------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------


def sink_window_attention_ref(
    q: torch.Tensor,
    cache: RingLayer,
    kv_len: torch.Tensor,
    *,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`sink_window_attention_with_kv_cache` (reads ``kv_len`` on the host).

    Parameters
    ----------
    q : Tensor ``[B, Lq, H, D]``
        The chunk's queries, already RoPE-rotated.
    cache : RingLayer
        One layer's ring buffer ``cache.k`` / ``cache.v`` ``[B, S, H, D]``; slots ``[0, kv_len[b])``
        are valid, the rest is ignored. For a float8_e4m3fn cache, ``cache.k_scale`` /
        ``cache.v_scale`` float32 ``[B, S, H]``: per token-head dequantization scales
        (``k = k_fp8.float() * k_scale``).
    kv_len : int32 Tensor ``[B]``
        Number of valid cache slots per batch element.
    sm_scale : float, optional
        Softmax scale, default ``1 / sqrt(D)``.

    Returns
    -------
    Tensor ``[B, Lq, H, D]`` in ``q.dtype``: ``softmax(q k^T * sm_scale) v`` over the valid keys,
    computed in float32. A batch element with ``kv_len == 0`` gets zeros.
    """
    k_cache, v_cache, k_scale, v_scale = cache.k, cache.v, cache.k_scale, cache.v_scale
    is_fp8 = _check_inputs(q, k_cache, v_cache, kv_len, k_scale, v_scale, "sink_window_attention_ref")
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    lens = kv_len.tolist()
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for b, n in enumerate(lens):
        n = max(0, min(int(n), k_cache.shape[1]))
        if n == 0:
            continue
        k = k_cache[b, :n].float()  # [n, H, D]
        v = v_cache[b, :n].float()
        if is_fp8:
            k = k * k_scale[b, :n, :, None]
            v = v * v_scale[b, :n, :, None]
        s = torch.einsum("qhd,khd->hqk", q[b].float(), k) * scale
        p = torch.softmax(s, dim=-1)
        out[b] = torch.einsum("hqk,khd->qhd", p, v)
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages): a short list around the tutorial's H100 optimum
# (128 x 64 or 128 x 128, 8 warps, 3 stages) plus smaller tiles for short chunks / small D.
_GPU_CONFIGS = [
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (128, 128, 8, 3),
    (128, 128, 8, 2),
    (128, 32, 4, 4),
    (128, 64, 8, 4),
    (64, 64, 4, 3),
    (64, 128, 4, 3),
    (64, 32, 4, 4),
    (64, 64, 4, 2),
]
# The interpreter runs every config it is given: one small tile keeps CPU tests fast and
# still exercises the multi-tile key loop and the masked tail.
_INTERPRET_CONFIGS = [(32, 32, 4, 1)]


# Configs that spill more than SPILL_TOLERATED_BYTES of registers per thread at head dim 128, by
# (sm_<arch>, FP8 cache): compiled on the CPU for each target (``python -m arvid.bench.kernel_resources``,
# bench/results/kernel_resources_*.json), the union over triton 3.6 (the GPU image) and 3.9 (CI), fp16
# and bf16 alike. Smaller spills are tolerated (e.g. 24-28 B for 128 x 64, 8 warps, 3 stages with an
# FP8 cache on sm_90 under triton 3.6, where only the 64 x 32 tile spills nothing): dropping them would
# leave the autotuner a single small tile. The pruning drops these configs while a fitting one without
# them remains; sm_120 with an FP8 cache has none (every config there spills, under 3.6 and 3.9).
SPILL_TOLERATED_BYTES = 128
_HEAVY_SPILLS_D128: dict[tuple[int, bool], frozenset[tuple[int, int, int, int]]] = {
    (90, False): frozenset({(128, 64, 4, 3)}),
    (90, True): frozenset(
        {(64, 64, 4, 2), (64, 128, 4, 3), (128, 32, 4, 4), (128, 64, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3)}
    ),
    (120, False): frozenset(
        {
            (64, 64, 4, 2),
            (64, 64, 4, 3),
            (64, 128, 4, 3),
            (128, 32, 4, 4),
            (128, 64, 4, 3),
            (128, 128, 8, 2),
            (128, 128, 8, 3),
        }
    ),
    (120, True): frozenset(
        {
            (64, 32, 4, 4),
            (64, 64, 4, 2),
            (64, 64, 4, 3),
            (64, 128, 4, 3),
            (128, 32, 4, 4),
            (128, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 64, 8, 4),
            (128, 128, 8, 2),
            (128, 128, 8, 3),
        }
    ),
}


def _smem_bytes(
    block_m: int, block_n: int, stages: int, head_dim: int, q_bytes: int, kv_bytes: int, arch: int = 90
) -> int:
    """An upper bound of the shared memory Triton allocates for a config on ``sm_<arch>``.

    K and V tiles are multi-buffered ``stages`` deep in the cache's own dtype (1 byte for FP8). On
    sm_90 the wgmma reads its A operand, the resident Q tile, from shared memory; sm_120's mma.sync
    reads it from registers. An FP8 cache adds one K/V tile converted to the query dtype on its way
    to the MMA and the per-token scales of each stage. Checked against the compiled values for sm_90
    and sm_120 (tests/test_kernel_resources.py); other targets are modelled as sm_90, which counts more.
    """
    kv = stages * 2 * block_n * head_dim * kv_bytes
    q = 0 if arch == 120 else block_m * head_dim * q_bytes
    converted = block_n * head_dim * q_bytes + (stages + 1) * block_n * 8 if kv_bytes < q_bytes else 0
    # Measured on sm_120 (triton 3.6 and 3.9): key tiles narrower than 64 add a BLOCK_M x BLOCK_N
    # float32 scratch (16 KiB at 128 x 32) that the formula above does not see.
    narrow = block_m * block_n * 4 if arch == 120 and block_n < 64 else 0
    return q + kv + converted + narrow


def kept_configs(
    configs: list[tuple[int, int, int, int]],
    arch: int,
    lq: int,
    head_dim: int,
    q_bytes: int,
    kv_bytes: int,
    smem_limit: int,
) -> list[tuple[int, int, int, int]]:
    """The ``(BLOCK_M, BLOCK_N, warps, stages)`` configs the autotuner tries on ``sm_<arch>`` for ``lq`` queries.

    Drops tiles whose query rows dwarf ``lq``, configs over ``smem_limit`` by :func:`_smem_bytes`, and,
    while a fitting one without them remains, the configs measured to spill heavily on that target.
    """
    max_m = max(64, next_power_of_2(lq))  # a 64-row tile is the smallest the list offers
    fits = [
        c
        for c in configs
        if c[0] <= max_m and _smem_bytes(c[0], c[1], c[3], head_dim, q_bytes, kv_bytes, arch) <= smem_limit
    ]
    spilling = _HEAVY_SPILLS_D128.get((arch, kv_bytes < q_bytes), frozenset()) if head_dim == 128 else frozenset()
    kept = [c for c in fits if c not in spilling] or fits
    if not kept:  # never return nothing: fall back to the smallest footprint
        kept = [min(configs, key=lambda c: (c[0] * c[1] * c[3], c[2]))]
    return kept


def _prune_configs(configs, named_args, **kwargs):
    """The autotuner's early prune: :func:`kept_configs` for the device the kernel runs on."""
    args = {**named_args, **kwargs}
    lq, head_dim = int(args["Lq"]), int(args["HEAD_DIM"])
    q, k = args["Q"], args["K"]
    if q.is_cuda:
        major, minor = torch.cuda.get_device_capability(q.device)
        arch, smem = 10 * major + minor, max_shared_memory(q.device.index or 0)
    else:  # the interpreter: no target, no limit
        arch, smem = 0, 1 << 30
    key = lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
    by_key = {key(c): c for c in configs}
    return [by_key[t] for t in kept_configs(list(by_key), arch, lq, head_dim, q.element_size(), k.element_size(), smem)]


if triton is not None:
    _CONFIGS = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in (_INTERPRET_CONFIGS if interpreting() else _GPU_CONFIGS)
    ]

    @triton.jit
    def _attn_tile(
        acc,
        l_i,
        m_i,
        q,
        k_ptrs,
        v_ptrs,
        ks_ptrs,
        vs_ptrs,
        offs_n,
        n_left,
        qk_scale,
        MASKED: tl.constexpr,
        IS_FP8: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        """One BLOCK_N tile of keys: update the running max ``m_i``, sum ``l_i`` and output ``acc``."""
        if MASKED:
            # Only the tail tile is partial. Masked loads return 0 (never the garbage past kv_len),
            # and masked scores are set to -inf below so they get probability exactly 0.
            valid = offs_n < n_left
            kt = tl.load(k_ptrs, mask=valid[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
        else:
            kt = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if IS_FP8:
            kt = kt.to(q.dtype)
            v = v.to(q.dtype)
        # Scores in the log2 domain: log2(e) is folded into qk_scale, so exp2 gives e^(s * scale).
        qk = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale
        if IS_FP8:
            # q . (k8 * s_k) = (q . k8) * s_k: the per-key dequant scale acts on score columns.
            if MASKED:  # noqa: SIM108 (constexpr branch; keep the plain form Triton compiles everywhere)
                ks = tl.load(ks_ptrs, mask=valid, other=0.0)
            else:
                ks = tl.load(ks_ptrs)
            qk = qk * ks[None, :]
        if MASKED:
            qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # Every tile holds >= 1 valid key, so m_new is finite and no -inf - -inf NaN arises.
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IS_FP8:
            # sum_n p_n (v8_n * s_v,n) = s_max * ((p * s_v / s_max) @ v8): the probability columns
            # carry the V scales relative to the tile's largest, and s_max multiplies the fp32 dot
            # product. Multiplying by s_v itself would put p * s_v into the 16-bit dot operand:
            # below fp16's normal range (s_v < 6.1e-5, i.e. amax|V| < ~0.027) it goes subnormal
            # and the error grows as 1/|V|. Relative to s_max, the operand does not depend on
            # V's overall scale, and neither does the result's relative error.
            if MASKED:  # noqa: SIM108
                vs = tl.load(vs_ptrs, mask=valid, other=0.0)
            else:
                vs = tl.load(vs_ptrs)
            vs_max = tl.max(vs, 0)
            vs_rel = tl.where(vs_max > 0.0, vs / vs_max, 0.0)
            pv = tl.dot((p * vs_rel[None, :]).to(v.dtype), v, input_precision=INPUT_PRECISION) * vs_max
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        acc = acc * alpha[:, None] + pv
        return acc, l_i, m_new

    @triton.autotune(
        configs=_CONFIGS,
        key=["LQ_BUCKET", "S", "HEAD_DIM"],  # argument dtypes are added to the key by Triton
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit
    def _sink_window_attn_kernel(
        Q,
        K,
        V,
        KV_LEN,
        K_SCALE,
        V_SCALE,
        Out,
        stride_qb,
        stride_qm,
        stride_qh,
        stride_kb,
        stride_kn,
        stride_kh,
        stride_vb,
        stride_vn,
        stride_vh,
        stride_ksb,
        stride_ksn,
        stride_ksh,
        stride_vsb,
        stride_vsn,
        stride_vsh,
        stride_ob,
        stride_om,
        stride_oh,
        H,
        Lq,
        S,
        LQ_BUCKET,
        qk_scale,
        HEAD_DIM: tl.constexpr,
        IS_FP8: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        # 64-bit batch/head offsets: B * S * H * D of a cache can pass 2**31 elements.
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)

        # The grid covers every query tile for any kv_len; the key loop bound comes from the
        # device, so the launch needs no host sync and is CUDA-graph capturable.
        kv_len = tl.load(KV_LEN + b)
        kv_len = tl.minimum(tl.maximum(kv_len, 0), S)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        m_mask = offs_m < Lq
        rows = offs_m.to(tl.int64)

        q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :]
        q = tl.load(q_ptrs, mask=m_mask[:, None], other=0.0)
        # K is read transposed ([D, BLOCK_N]) so the score tile is a plain q @ kt.
        k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None]
        v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
        ks_ptrs = K_SCALE + b * stride_ksb + h * stride_ksh + offs_n * stride_ksn
        vs_ptrs = V_SCALE + b * stride_vsb + h * stride_vsh + offs_n * stride_vsn

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        # Full tiles without masks, then at most one masked tail tile (e.g. 4680 = 36.56 * 128).
        n_full = (kv_len // BLOCK_N) * BLOCK_N
        for _ in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _attn_tile(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, ks_ptrs, vs_ptrs, offs_n, BLOCK_N, qk_scale,
                False, IS_FP8, INPUT_PRECISION,
            )  # fmt: skip
            # Advance pointers (64-bit) instead of recomputing start_n * stride in int32.
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
            ks_ptrs += BLOCK_N * stride_ksn
            vs_ptrs += BLOCK_N * stride_vsn
        if n_full < kv_len:
            acc, l_i, m_i = _attn_tile(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, ks_ptrs, vs_ptrs, offs_n, kv_len - n_full, qk_scale,
                True, IS_FP8, INPUT_PRECISION,
            )  # fmt: skip

        # kv_len == 0 leaves l_i = 0 and acc = 0: output zeros rather than 0/0.
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_i[:, None]
        o_ptrs = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_mask[:, None])


def _sink_window_attn_fwd(q: torch.Tensor, cache: RingLayer, kv_len: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Launch the kernel; inputs are validated already. Returns a new contiguous ``[B, Lq, H, D]``."""
    k_cache, v_cache, k_scale, v_scale = cache.k, cache.v, cache.k_scale, cache.v_scale
    b, lq, h, d = q.shape
    s = k_cache.shape[1]
    out = torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
    if lq == 0 or b == 0 or h == 0:
        return out
    is_fp8 = k_scale is not None
    # Scale pointers must be valid even when unused: pass kv_len with zero strides.
    ks = k_scale if is_fp8 else kv_len
    vs = v_scale if is_fp8 else kv_len
    ks_strides = k_scale.stride() if is_fp8 else (0, 0, 0)
    vs_strides = v_scale.stride() if is_fp8 else (0, 0, 0)
    # Bucketed query count for the autotune key: chunk sizes the runtime uses recur, odd ones share.
    lq_bucket = min(next_power_of_2(lq), 8192)

    def grid(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]), b * h)

    _sink_window_attn_kernel[grid](
        q, k_cache, v_cache, kv_len, ks, vs, out,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        *ks_strides, *vs_strides,
        out.stride(0), out.stride(1), out.stride(2),
        h, lq, s, lq_bucket, sm_scale * _LOG2E,
        HEAD_DIM=d,
        IS_FP8=is_fp8,
        # fp32 tests want true fp32 products; 16-bit operands ignore this.
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return out


def sink_window_attention_with_kv_cache(
    q: torch.Tensor,
    cache: RingLayer,
    kv_len: torch.Tensor,
    *,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Attention of a chunk's queries over the valid prefix of a ring-buffer KV cache (Triton).

    Full (non-causal) attention: every query attends to every valid key, so the chunk's own
    keys (written into the cache before the call) are attended bidirectionally. The call
    reads ``kv_len`` on the device and never syncs with the host: it is CUDA-graph capturable
    once autotuning has run (see :func:`warmup_sink_window_attention`).

    Parameters
    ----------
    q : Tensor ``[B, Lq, H, D]``
        Queries (NHD layout, already RoPE-rotated), float16 / bfloat16 / float32. Any strides
        with a contiguous last dim (e.g. a slice of a fused qkv output).
    cache : RingLayer
        One layer's ring buffer ``cache.k`` / ``cache.v`` ``[B, S, H, D]``, same dtype as ``q`` (or
        float8_e4m3fn with scales); any strides with a contiguous last dim. Slots ``[kv_len[b], S)``
        may hold garbage (even NaN): ignored. ``cache.k_scale`` / ``cache.v_scale`` float32
        ``[B, S, H]``: per token-head dequantization scales, required for (and only for) a
        float8_e4m3fn cache.
    kv_len : int32 Tensor ``[B]``, on the same device
        Valid cache slots per batch element (clamped to ``[0, S]`` in the kernel); the plan's
        ``PlanTensors.kv_len``.
    sm_scale : float, optional
        Softmax scale, default ``1 / sqrt(D)``.

    Returns
    -------
    Tensor ``[B, Lq, H, D]``, contiguous, dtype of ``q``. Rows of a batch element with
    ``kv_len == 0`` are zeros.

    Raises
    ------
    ValueError
        On shape / dtype / device mismatches or an unsupported head dim.
    RuntimeError
        When Triton (or a CUDA device / the interpreter) is not available.
    """
    op = "sink_window_attention_with_kv_cache"
    k_cache, v_cache, k_scale, v_scale = cache.k, cache.v, cache.k_scale, cache.v_scale
    is_fp8 = _check_inputs(q, k_cache, v_cache, kv_len, k_scale, v_scale, op)
    require_triton(op)
    check_kernel_device(op, q, k_cache, v_cache, kv_len)
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{op}: head dim D={d} is not one of {SUPPORTED_HEAD_DIMS}")
    for t, n in ((q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache")):
        if t.stride(-1) != 1:
            raise ValueError(f"{op}: {n} must have a contiguous last dim, got strides {t.stride()}")
    if is_fp8 and not interpreting() and not has_sm89(q.device):
        raise RuntimeError(f"{op}: a float8_e4m3fn cache needs an sm_89+ GPU (Ada, Hopper)")
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    return _sink_window_attn_fwd(q, cache, kv_len, scale)


def warmup_sink_window_attention(
    q: torch.Tensor,
    cache: RingLayer,
    kv_len: torch.Tensor,
    *,
    sm_scale: float | None = None,
) -> None:
    """Compile and autotune for these shapes/dtypes outside any CUDA-graph capture.

    Autotuning benchmarks several configs on the first call per key (bucketed ``Lq``, ``S``,
    ``D``, dtypes); that cannot happen inside ``torch.cuda.graph``. Call this (or the op) once
    per distinct query count with the real tensors before capture. The output is discarded;
    the inputs are only read; the parameters are those of :func:`sink_window_attention_with_kv_cache`.
    """
    sink_window_attention_with_kv_cache(q, cache, kv_len, sm_scale=sm_scale)
    if q.is_cuda:
        torch.cuda.synchronize(q.device)
