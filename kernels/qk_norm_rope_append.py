"""Fused q/k RMSNorm (across heads) + 3D RoPE + ring-buffer KV-cache append for one self-attention layer.

Wan's self-attention does, per token, ``q = rope(rms_norm(q))``, ``k = rope(rms_norm(k))`` with
the RMS statistic taken over all ``H*D`` features of the token, then LongLive writes the
rotated K and the raw V into the chunk's slots of the layer's ring buffer. Done in PyTorch
that is ~10 elementwise passes plus two cache copies; here one program per token reads q, k
and v once, writes q_out and the two cache slots once, optionally quantizing K/V to FP8.

Three layers:

* ``_qk_norm_rope_append_kernel`` (``triton.jit``): one program per (token, batch element);
* ``_qk_norm_rope_append_fwd``: strides, grid and launch;
* :func:`qk_norm_rope_append_kv_cache`: checks and the public API.

:func:`qk_norm_rope_append_kv_cache_ref` is the plain-PyTorch reference with the same signature,
built from :func:`arvid.kernels.rope_3d.rope_3d_cos_sin` and :func:`~arvid.kernels.rope_3d.apply_rope_3d_ref`.

Besides the activations and norm weights both take the bundles of :mod:`arvid.kernels.layouts`:
the layer's cache (:class:`~arvid.kernels.layouts.RingLayer`), the RoPE tables
(:class:`~arvid.kernels.layouts.RopeCosSin`) and the plan's device scalars
(:class:`~arvid.kernels.layouts.PlanTensors`; ``write_start`` and ``frame_offset`` are read).
"""

from __future__ import annotations

import torch

from ._triton_utils import (
    FLOAT_DTYPES,
    SUPPORTED_HEAD_DIMS,
    check_cache_dtypes,
    check_kernel_device,
    has_sm89,
    import_triton,
    interpreting,
    next_power_of_2,
    require_triton,
)
from .fp8 import FP8_E4M3_MAX, FP8_SCALE_MIN, quantize_fp8_per_token_head_ref
from .layouts import PlanTensors, RingLayer, RopeCosSin
from .rope_3d import apply_rope_3d_ref, rope_3d_cos_sin, rope_3d_split

triton, tl = import_triton()  # optional: the reference must import and run without it

__all__ = [
    "plan_is_host_known",
    "qk_norm_rope_append_kv_cache",
    "qk_norm_rope_append_kv_cache_ref",
    "rms_norm_across_heads_ref",
    "rms_norm_ref",
]


# ----------------------------------------------------------------------------------------
# Input checks (host-side, shapes and dtypes only: never reads device values)
# ----------------------------------------------------------------------------------------


def _check_inputs(
    q, k, v, norm_q_weight, norm_k_weight, rope_cos, rope_sin, k_cache, v_cache, write_start, frame_offset,
    grid_sizes, k_scale, v_scale, name: str,
) -> bool:  # fmt: skip
    """Validate shapes / dtypes / devices; return True when the cache is FP8. Errors start with ``name``."""
    for t, n in ((q, "q"), (k, "k"), (v, "v"), (k_cache, "k_cache"), (v_cache, "v_cache")):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: {n} must be a 4-D tensor [B, L, H, D], got {getattr(t, 'shape', type(t))}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"{name}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share a shape")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name}: q, k, v must share a float16/bfloat16/float32 dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    b, seq, h, d = q.shape
    if d % 2:
        raise ValueError(f"{name}: head dim D={d} must be even for RoPE")
    try:
        f, hp, wp = (int(x) for x in grid_sizes)
    except Exception as exc:
        raise ValueError(f"{name}: grid_sizes must be three ints (F, Hp, Wp), got {grid_sizes!r}") from exc
    if f * hp * wp != seq:
        raise ValueError(f"{name}: grid_sizes {(f, hp, wp)} hold {f * hp * wp} tokens but q has L={seq}")
    for t, n in ((norm_q_weight, "norm_q_weight"), (norm_k_weight, "norm_k_weight")):
        if t.dim() != 1 or t.shape[0] != h * d or t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}: {n} must be a float vector of H*D={h * d}, got {t.dtype} {tuple(t.shape)}")
    for t, n in ((rope_cos, "rope_cos"), (rope_sin, "rope_sin")):
        if t.dim() != 2 or t.shape[1] != d // 2 or t.dtype != torch.float32:
            raise ValueError(f"{name}: {n} must be float32 [P, D/2={d // 2}], got {t.dtype} {tuple(t.shape)}")
    if rope_cos.shape != rope_sin.shape:
        raise ValueError(f"{name}: rope_cos {tuple(rope_cos.shape)} and rope_sin {tuple(rope_sin.shape)} differ")
    if max(hp, wp) > rope_cos.shape[0]:
        raise ValueError(f"{name}: grid {(f, hp, wp)} needs more than the table's {rope_cos.shape[0]} positions")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{name}: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must match")
    bc, s, hc, dc = k_cache.shape
    if (bc, hc, dc) != (b, h, d):
        raise ValueError(f"{name}: the cache is [B={bc}, S, H={hc}, D={dc}] but q is [B={b}, L, H={h}, D={d}]")
    if seq > s:
        raise ValueError(f"{name}: L={seq} tokens do not fit a cache of S={s} slots")
    is_fp8 = check_cache_dtypes(name, q.dtype, k_cache, v_cache, k_scale, v_scale)
    for t, n in ((write_start, "write_start"), (frame_offset, "frame_offset")):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (1,):
            raise ValueError(
                f"{name}: {n} must be an int32 tensor of shape [1] on the device, got "
                f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}"
            )
    named = {
        "k": k, "v": v, "norm_q_weight": norm_q_weight, "norm_k_weight": norm_k_weight, "rope_cos": rope_cos,
        "rope_sin": rope_sin, "k_cache": k_cache, "v_cache": v_cache, "write_start": write_start,
        "frame_offset": frame_offset, "k_scale": k_scale, "v_scale": v_scale,
    }  # fmt: skip
    for n, t in named.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"{name}: {n} is on {t.device}, q on {q.device}")
    return is_fp8


def plan_is_host_known(*scalars: torch.Tensor) -> bool:
    """Whether the plan's scalars can be read on the host for free: CPU tensors outside any tracing.

    A CUDA scalar costs a device sync (and breaks CUDA-graph capture); a traced one (torch.compile,
    torch.export) has no value yet. Those keep the kernel's device-side contract instead.
    """
    return all(t.device.type == "cpu" for t in scalars) and not torch.compiler.is_compiling()


def _check_plan_values(
    name: str, write_start: int, frame_offset: int, seq: int, s: int, grid: tuple[int, int, int], p: int
) -> None:
    """The plan's values against the cache and the RoPE table (one rule for the kernel and the reference)."""
    if write_start < 0 or write_start + seq > s:
        raise ValueError(f"{name}: write_start={write_start} + L={seq} is outside the cache's S={s} slots")
    top = max(frame_offset + grid[0], grid[1], grid[2]) - 1
    if frame_offset < 0 or top >= p:
        raise ValueError(
            f"{name}: RoPE position {top} (frame_offset={frame_offset}, F={grid[0]}) is past the table's {p} "
            "positions (raise ModelConfig.rope_max_positions)"
        )


# ----------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Wan's ``WanRMSNorm`` over the last dim: the statistic in float32, rounded to ``x.dtype``, then scaled."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rms_norm_across_heads_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """:func:`rms_norm_ref` over all ``H*D`` features of each token of ``x`` ``[B, L, H, D]``; dtype of ``x``."""
    return rms_norm_ref(x.flatten(-2), weight, eps).to(x.dtype).unflatten(-1, x.shape[-2:])


def qk_norm_rope_append_kv_cache_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm_q_weight: torch.Tensor,
    norm_k_weight: torch.Tensor,
    *,
    cache: RingLayer,
    rope: RopeCosSin,
    plan: PlanTensors,
    grid_sizes: tuple[int, int, int],
    eps: float = 1e-6,
    block_t: int | None = None,
) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`qk_norm_rope_append_kv_cache` (reads ``plan.write_start`` on the host).

    Same parameters and effects (``block_t`` is accepted and ignored: the reference has no tiles);
    raises ``ValueError`` when ``write_start + L`` runs past the cache.
    """
    del block_t
    rope_cos, rope_sin, k_cache, v_cache = rope.cos, rope.sin, cache.k, cache.v
    k_scale, v_scale = cache.k_scale, cache.v_scale
    write_start, frame_offset = plan.write_start, plan.frame_offset
    name = "qk_norm_rope_append_kv_cache_ref"
    is_fp8 = _check_inputs(
        q, k, v, norm_q_weight, norm_k_weight, rope_cos, rope_sin, k_cache, v_cache, write_start, frame_offset,
        grid_sizes, k_scale, v_scale, name,
    )  # fmt: skip
    seq, s = q.shape[1], k_cache.shape[1]
    # The reference reads the plan on the host (wherever it lives) and checks it before any write.
    grid = tuple(int(x) for x in grid_sizes)
    ws, fo = int(write_start.item()), int(frame_offset.item())
    _check_plan_values(name, ws, fo, seq, s, grid, rope_cos.shape[0])
    cos, sin = rope_3d_cos_sin(rope_cos, rope_sin, grid, fo)
    q_out = apply_rope_3d_ref(rms_norm_across_heads_ref(q, norm_q_weight, eps), cos, sin).contiguous()
    k_rot = apply_rope_3d_ref(rms_norm_across_heads_ref(k, norm_k_weight, eps), cos, sin)
    if is_fp8:
        k8, ks = quantize_fp8_per_token_head_ref(k_rot)
        v8, vs = quantize_fp8_per_token_head_ref(v)
        k_cache[:, ws : ws + seq] = k8
        v_cache[:, ws : ws + seq] = v8
        k_scale[:, ws : ws + seq] = ks
        v_scale[:, ws : ws + seq] = vs
    else:
        k_cache[:, ws : ws + seq] = k_rot.to(k_cache.dtype)
        v_cache[:, ws : ws + seq] = v.to(v_cache.dtype)
    return q_out


# ----------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _rms_norm_across_heads(x0, x1, W, w_off, w_mask, inv_hd, eps, DTYPE: tl.constexpr):
        """WanRMSNorm of tokens held as even/odd lanes ``[BLOCK_T, BLOCK_H, HALF_D]`` (fp32 in and out).

        The statistic covers all H*D features of a token (padding heads load as 0 and add nothing).
        Wan rounds ``x * rstd`` to x's dtype and then ``(.) * w`` to x's dtype: round where it rounds.
        """
        ss = tl.sum(tl.sum(x0 * x0, 2), 1) + tl.sum(tl.sum(x1 * x1, 2), 1)
        rstd = (1.0 / tl.sqrt(ss * inv_hd + eps))[:, None, None]
        w0 = tl.load(W + w_off, mask=w_mask, other=0.0).to(tl.float32)
        w1 = tl.load(W + w_off + 1, mask=w_mask, other=0.0).to(tl.float32)
        y0 = ((x0 * rstd).to(DTYPE).to(tl.float32) * w0).to(DTYPE).to(tl.float32)
        y1 = ((x1 * rstd).to(DTYPE).to(tl.float32) * w1).to(DTYPE).to(tl.float32)
        return y0, y1

    @triton.jit
    def _round_to_e4m3(x):
        """Round fp32 ``x`` (``|x| <= 448``) to the nearest float8_e4m3fn value, ties to even, in fp32.

        The later ``.to(tl.float8e4nv)`` is then exact. Hardware conversion already rounds this
        way; doing it by hand makes the result independent of the converter (the CPU
        interpreter's fp32 -> e4m3 cast mis-rounds ties and mantissa carries).
        """
        ax = tl.abs(x)
        # Below 2**-6 e4m3 is subnormal with a fixed step 2**-9: shifting by 2**-6 puts the value in
        # [2**-6, 2**-5), whose normal step is also 2**-9, so one rounding rule serves both ranges.
        small = ax < 0.015625
        t = tl.where(small, ax + 0.015625, ax)
        bits = t.to(tl.int32, bitcast=True)
        # Keep 3 of fp32's 23 mantissa bits: add half an e4m3 ulp minus 1 plus the kept lsb (RNE),
        # then clear the 20 dropped bits; a carry rolls into the exponent as it should.
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576
        r = bits.to(tl.float32, bitcast=True)
        r = tl.where(small, r - 0.015625, r)
        return tl.where(x < 0, -r, r)

    @triton.jit
    def _qk_norm_rope_append_kernel(
        Q, K, V, WQ, WK, COS, SIN, KC, VC, KS, VS, WRITE_START, FRAME_OFFSET, QO,
        stride_qb, stride_ql, stride_qh,
        stride_kb, stride_kl, stride_kh,
        stride_vb, stride_vl, stride_vh,
        stride_kcb, stride_kcs, stride_kch,
        stride_vcb, stride_vcs, stride_vch,
        stride_ksb, stride_kss, stride_ksh,
        stride_vsb, stride_vss, stride_vsh,
        stride_qob, stride_qol, stride_qoh,
        stride_rope,
        L, H, S, P, Hp, Wp, inv_hd, eps,
        HALF_D: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
        CF: tl.constexpr,
        CH: tl.constexpr,
        IS_FP8: tl.constexpr,
        FP8_MAX: tl.constexpr,  # FP8_E4M3_MAX
        SCALE_MIN: tl.constexpr,  # FP8_SCALE_MIN
    ):  # fmt: skip
        # One program holds BLOCK_T whole tokens (all H*D features each: the RMS spans heads).
        b = tl.program_id(1).to(tl.int64)  # 64-bit: B * S * H * D of a cache can pass 2**31
        tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [T]
        offs_h = tl.arange(0, BLOCK_H)
        offs_j = tl.arange(0, HALF_D)
        t_ok = tok < L
        tok3 = tok.to(tl.int64)[:, None, None]
        h3 = offs_h[None, :, None]
        # Pair j of a head is (x[2j], x[2j+1]): even and odd lanes as two [T, BLOCK_H, HALF_D] tiles.
        even3 = 2 * offs_j[None, None, :]
        w_mask = (h3 < H) & (even3 < 2 * HALF_D)  # [1, BLOCK_H, HALF_D]
        mask = w_mask & t_ok[:, None, None]  # [T, BLOCK_H, HALF_D]
        dtype = QO.dtype.element_ty  # q/k/v dtype: where Wan rounds

        # 3D RoPE: pair j takes the frame, row or column position of the axis that owns it.
        ww = tok % Wp
        hh = (tok // Wp) % Hp
        frame = tl.load(FRAME_OFFSET) + tok // (Wp * Hp)
        j2 = offs_j[None, :]
        rope_row = tl.where(j2 < CF, frame[:, None], tl.where(j2 < CF + CH, hh[:, None], ww[:, None]))  # [T, J]
        # Where frame_offset is only on the device the host cannot check it (the wrapper does where
        # it can): the mask keeps the read in bounds (such pairs get cos = sin = 0).
        r_mask = (rope_row >= 0) & (rope_row < P) & t_ok[:, None]
        rope_off = rope_row.to(tl.int64) * stride_rope + j2
        cos = tl.load(COS + rope_off, mask=r_mask, other=0.0)[:, None, :]
        sin = tl.load(SIN + rope_off, mask=r_mask, other=0.0)[:, None, :]
        # Feature (h, 2j) sits at h * D + 2j of the flat [H*D] norm weight.
        w_off = h3 * (2 * HALF_D) + even3

        slot = tl.load(WRITE_START) + tok  # [T]
        # A slot outside the cache (a plan the host could not check) is dropped, never written out of bounds.
        s_ok = t_ok & (slot >= 0) & (slot < S)
        slot3 = slot.to(tl.int64)[:, None, None]
        st_mask = mask & s_ok[:, None, None]

        # ---- q: normalise across heads, rotate, write q_out ----
        q_ptr = Q + b * stride_qb + tok3 * stride_ql + h3 * stride_qh + even3
        x0 = tl.load(q_ptr, mask=mask, other=0.0).to(tl.float32)
        x1 = tl.load(q_ptr + 1, mask=mask, other=0.0).to(tl.float32)
        y0, y1 = _rms_norm_across_heads(x0, x1, WQ, w_off, w_mask, inv_hd, eps, dtype)
        o_ptr = QO + b * stride_qob + tok3 * stride_qol + h3 * stride_qoh + even3
        tl.store(o_ptr, (y0 * cos - y1 * sin).to(dtype), mask=mask)
        tl.store(o_ptr + 1, (y0 * sin + y1 * cos).to(dtype), mask=mask)

        # ---- k: the same, rounded to k's dtype as the reference caches it ----
        k_ptr = K + b * stride_kb + tok3 * stride_kl + h3 * stride_kh + even3
        x0 = tl.load(k_ptr, mask=mask, other=0.0).to(tl.float32)
        x1 = tl.load(k_ptr + 1, mask=mask, other=0.0).to(tl.float32)
        y0, y1 = _rms_norm_across_heads(x0, x1, WK, w_off, w_mask, inv_hd, eps, dtype)
        k0 = (y0 * cos - y1 * sin).to(dtype).to(tl.float32)
        k1 = (y0 * sin + y1 * cos).to(dtype).to(tl.float32)

        # ---- v: raw ----
        v_ptr = V + b * stride_vb + tok3 * stride_vl + h3 * stride_vh + even3
        v0 = tl.load(v_ptr, mask=mask, other=0.0).to(tl.float32)
        v1 = tl.load(v_ptr + 1, mask=mask, other=0.0).to(tl.float32)

        if IS_FP8:
            # Per token-head scale [T, H] = amax|x| / 448: x / scale fills e4m3's finite range [-448, 448].
            k_sc = tl.maximum(tl.maximum(tl.max(tl.abs(k0), 2), tl.max(tl.abs(k1), 2)) / FP8_MAX, SCALE_MIN)
            v_sc = tl.maximum(tl.maximum(tl.max(tl.abs(v0), 2), tl.max(tl.abs(v1), 2)) / FP8_MAX, SCALE_MIN)
            k0 = _round_to_e4m3(k0 / k_sc[:, :, None])
            k1 = _round_to_e4m3(k1 / k_sc[:, :, None])
            v0 = _round_to_e4m3(v0 / v_sc[:, :, None])
            v1 = _round_to_e4m3(v1 / v_sc[:, :, None])
            slot2 = slot.to(tl.int64)[:, None]
            h2 = offs_h[None, :]
            sc_mask = s_ok[:, None] & (h2 < H)
            tl.store(KS + b * stride_ksb + slot2 * stride_kss + h2 * stride_ksh, k_sc, mask=sc_mask)
            tl.store(VS + b * stride_vsb + slot2 * stride_vss + h2 * stride_vsh, v_sc, mask=sc_mask)
        kc_ptr = KC + b * stride_kcb + slot3 * stride_kcs + h3 * stride_kch + even3
        vc_ptr = VC + b * stride_vcb + slot3 * stride_vcs + h3 * stride_vch + even3
        tl.store(kc_ptr, k0.to(KC.dtype.element_ty), mask=st_mask)
        tl.store(kc_ptr + 1, k1.to(KC.dtype.element_ty), mask=st_mask)
        tl.store(vc_ptr, v0.to(VC.dtype.element_ty), mask=st_mask)
        tl.store(vc_ptr + 1, v1.to(VC.dtype.element_ty), mask=st_mask)


def _qk_norm_rope_append_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm_q_weight: torch.Tensor,
    norm_k_weight: torch.Tensor,
    cache: RingLayer,
    rope: RopeCosSin,
    plan: PlanTensors,
    grid_sizes: tuple[int, int, int],
    eps: float,
    block_t: int | None = None,
) -> torch.Tensor:
    """Launch the kernel; inputs are validated already. Returns a new contiguous q_out ``[B, L, H, D]``.

    ``block_t`` (tokens per program, a power of 2) is picked from the tile size when ``None``.
    """
    rope_cos, rope_sin, k_cache, v_cache = rope.cos, rope.sin, cache.k, cache.v
    k_scale, v_scale = cache.k_scale, cache.v_scale
    write_start, frame_offset = plan.write_start, plan.frame_offset
    b, seq, h, d = q.shape
    q_out = torch.empty((b, seq, h, d), dtype=q.dtype, device=q.device)
    if seq == 0 or b == 0 or h == 0:
        return q_out
    _, hp, wp = (int(x) for x in grid_sizes)
    cf, ch, _ = rope_3d_split(d)
    is_fp8 = k_scale is not None
    ks = k_scale if is_fp8 else write_start  # valid but unused pointers when not quantizing
    vs = v_scale if is_fp8 else write_start
    ks_strides = k_scale.stride() if is_fp8 else (0, 0, 0)
    vs_strides = v_scale.stride() if is_fp8 else (0, 0, 0)
    block_h = next_power_of_2(h)
    if block_t is None:
        # ~2K elements per tensor per program on a GPU (one token of Wan 1.3B's 12 x 128, padded
        # to 16 heads); the interpreter pays per operation, not per element, so give it more.
        budget = 16384 if interpreting() else 2048
        block_t = max(1, min(next_power_of_2(seq), budget // (block_h * d)))
    tile = block_t * block_h * d
    num_warps = 1 if tile <= 256 else 2 if tile <= 512 else 4 if tile <= 4096 else 8
    _qk_norm_rope_append_kernel[(triton.cdiv(seq, block_t), b)](
        q, k, v, norm_q_weight, norm_k_weight, rope_cos, rope_sin, k_cache, v_cache, ks, vs,
        write_start, frame_offset, q_out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        *ks_strides, *vs_strides,
        q_out.stride(0), q_out.stride(1), q_out.stride(2),
        rope_cos.stride(0),
        seq, h, k_cache.shape[1], rope_cos.shape[0], hp, wp, 1.0 / (h * d), float(eps),
        HALF_D=d // 2, BLOCK_T=block_t, BLOCK_H=block_h, CF=cf, CH=ch, IS_FP8=is_fp8,
        FP8_MAX=FP8_E4M3_MAX, SCALE_MIN=FP8_SCALE_MIN, num_warps=num_warps,
    )  # fmt: skip
    return q_out


def qk_norm_rope_append_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm_q_weight: torch.Tensor,
    norm_k_weight: torch.Tensor,
    *,
    cache: RingLayer,
    rope: RopeCosSin,
    plan: PlanTensors,
    grid_sizes: tuple[int, int, int],
    eps: float = 1e-6,
    block_t: int | None = None,
) -> torch.Tensor:
    """RMSNorm q and k across heads, apply 3D RoPE, append rotated K and raw V to the cache (Triton).

    Reads ``plan.write_start`` and ``plan.frame_offset`` on the device: no host sync, CUDA-graph
    capturable.

    The plan's contract is the reference's: ``0 <= write_start`` and ``write_start + L <= S``, and
    every RoPE position (``frame_offset + F - 1``, ``Hp - 1``, ``Wp - 1``) below the table's ``P``
    rows. Where the plan is host-known (CPU scalars, not traced: see :func:`plan_is_host_known`)
    a violation raises ``ValueError`` before anything is written, as the reference does. Where
    it is not (CUDA scalars, inside a captured graph or a compiled region) the host cannot look
    without a sync, so the kernel keeps memory safe instead: slots outside ``[0, S)`` are not
    written and RoPE rows outside ``[0, P)`` read cos = sin = 0. The caller's planner
    (``arvid.runtime.kv_cache``) is what guarantees the contract there.

    Parameters
    ----------
    q, k, v : Tensor ``[B, L, H, D]``
        Outputs of the q/k/v linear layers for ``L = F*Hp*Wp`` tokens in row-major (f, h, w)
        order; one float dtype; any strides with a contiguous last dim (views of a fused
        ``[B, L, 3, H, D]`` qkv output are fine).
    norm_q_weight, norm_k_weight : Tensor ``[H*D]``
        RMSNorm weights (the norm runs over all ``H*D`` features of a token), contiguous.
    cache : RingLayer
        The layer's ring buffer: ``cache.k`` / ``cache.v`` ``[B, S, H, D]`` (any strides,
        contiguous last dim), written in place in slots ``[write_start, write_start + L)`` only
        (see the plan's contract above). For a float8_e4m3fn cache, ``cache.k_scale`` /
        ``cache.v_scale`` float32 ``[B, S, H]``: per token-head scales written beside the
        quantized values (``scale = amax|x| / 448``, floored at 1e-12).
    rope : RopeCosSin
        ``rope.cos`` / ``rope.sin`` float32 ``[P, D/2]`` from
        :func:`arvid.kernels.rope_3d.rope_3d_tables`, contiguous last dim (checked as ``rope_cos`` /
        ``rope_sin``).
    plan : PlanTensors
        ``plan.write_start`` and ``plan.frame_offset``, int32 ``[1]`` on the device: first cache
        slot to write; absolute latent-frame index of the chunk's first frame (``frame_offset + F``
        must stay within the table's ``P`` rows). ``plan.kv_len`` is not read.
    grid_sizes : tuple of int
        ``(F, Hp, Wp)``.
    eps : float
        RMSNorm epsilon.
    block_t : int, optional
        Tokens per program (a power of 2); by default picked from the tile size. A tuning knob:
        the result does not depend on it.

    Returns
    -------
    Tensor ``[B, L, H, D]``: normalised and rotated q, new and contiguous, dtype of ``q``.
    """
    rope_cos, rope_sin, k_cache, v_cache = rope.cos, rope.sin, cache.k, cache.v
    k_scale, v_scale = cache.k_scale, cache.v_scale
    write_start, frame_offset = plan.write_start, plan.frame_offset
    op = "qk_norm_rope_append_kv_cache"
    is_fp8 = _check_inputs(
        q, k, v, norm_q_weight, norm_k_weight, rope_cos, rope_sin, k_cache, v_cache, write_start, frame_offset,
        grid_sizes, k_scale, v_scale, op,
    )  # fmt: skip
    if plan_is_host_known(write_start, frame_offset):  # free to read: the reference's rule, before any write
        grid = tuple(int(x) for x in grid_sizes)
        _check_plan_values(
            op, int(write_start.item()), int(frame_offset.item()), q.shape[1], k_cache.shape[1], grid,
            rope_cos.shape[0],
        )  # fmt: skip
    if block_t is not None and (not isinstance(block_t, int) or block_t < 1 or block_t & (block_t - 1)):
        raise ValueError(f"{op}: block_t must be a power of 2, got {block_t!r}")
    require_triton(op)
    tensors = [q, k, v, norm_q_weight, norm_k_weight, rope_cos, rope_sin, k_cache, v_cache, write_start, frame_offset]
    check_kernel_device(op, *tensors, *([k_scale, v_scale] if is_fp8 else []))
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{op}: head dim D={d} is not one of {SUPPORTED_HEAD_DIMS}")
    named = {"q": q, "k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache, "rope_cos": rope_cos}
    named.update(rope_sin=rope_sin, norm_q_weight=norm_q_weight, norm_k_weight=norm_k_weight)
    for n, t in named.items():
        if t.stride(-1) != 1:
            raise ValueError(f"{op}: {n} must have a contiguous last dim, got strides {t.stride()}")
    if rope_cos.stride() != rope_sin.stride():
        raise ValueError(
            f"{op}: rope_cos and rope_sin must share strides, got {rope_cos.stride()}, {rope_sin.stride()}"
        )
    if is_fp8 and q.is_cuda and not has_sm89(q.device):
        raise RuntimeError(f"{op}: a float8_e4m3fn cache needs an sm_89+ GPU (Ada, Hopper)")
    return _qk_norm_rope_append_fwd(q, k, v, norm_q_weight, norm_k_weight, cache, rope, plan, grid_sizes, eps, block_t)
