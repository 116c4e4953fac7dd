"""Attention backends: a small registry with precondition checks and an explicit choice per run.

A backend provides the two per-layer operations of the streaming self-attention:

``append(q, k, v, attn, cache, layer, plan, rope) -> q_rot``
    q/k RMSNorm, 3D RoPE, and the write of K (rotated) and V into the plan's slots of one
    layer's ring buffer ``cache.k[layer]`` ``[B, S, H, D]``; returns the rotated queries
    ``[B, L, H, D]``. ``rope`` is the per-token ``(cos, sin)`` ``[L, D/2]``; a fused kernel may
    use ``cache.rope_tables`` and the plan's device frame offset instead.
``attend(q_rot, cache, layer, plan) -> out``
    attention of the queries over the valid slots ``[0, plan.kv_len)`` of that ring buffer.

With an FP8 cache (``cache.k.dtype == float8_e4m3fn``) K and V are stored as e4m3 with one
float32 scale per token and head (``cache.k_scale`` / ``cache.v_scale`` ``[layers, B, S, H]``,
``x ~= x8 * scale``): the append quantizes, the attention dequantizes.

``eager`` is the exception: it is the reference implementation's algorithm (a cache kept in
temporal order, rolled by copying, cloned and concatenated before every attention call), the
baseline every benchmark compares against. It owns its cache (see ``baseline.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    description: str
    ring: bool  # True: uses the ring-buffer cache through append/attend
    unavailable: Callable[[torch.device, torch.dtype], str | None]  # why it cannot run here, or None
    append: Callable[..., torch.Tensor] | None = None
    attend: Callable[..., torch.Tensor] | None = None
    # True: attend reads the valid length from plan.device_tensors, so one captured graph serves
    # every fill state; False: it slices by the host int plan.kv_len (a graph per fill state).
    kv_len_on_device: bool = False


_BACKENDS: dict[str, AttentionBackend] = {}


def register_backend(backend: AttentionBackend) -> AttentionBackend:
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str, device: torch.device | str, dtype: torch.dtype) -> AttentionBackend:
    """Look up a backend and check that it can run on ``device`` / ``dtype`` (clear error if not)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {backend_names()}")
    backend = _BACKENDS[name]
    reason = backend.unavailable(torch.device(device), dtype)
    if reason:
        raise ValueError(f"attention backend {name!r} cannot run here: {reason}")
    return backend


def default_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """The fastest backend that runs on ``device``: ``triton`` on CUDA where it is usable, else ``sdpa``."""
    device = torch.device(device)
    for name in ("triton", "sdpa"):
        if name in _BACKENDS and _BACKENDS[name].unavailable(device, dtype) is None:
            if name == "triton" and device.type != "cuda":
                continue  # the Triton interpreter is for tests, far too slow to be a default
            return name
    return "sdpa"


def _always(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


# -- sdpa: plain PyTorch ops over the ring buffer ---------------------------------------------
def _is_fp8(cache: Any) -> bool:
    return cache.k.dtype == torch.float8_e4m3fn


def _write(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[:, idx] = src`` along dim 1; fp8 goes through a byte view (no fp8 index_copy on the CPU)."""
    if dst.dtype == torch.float8_e4m3fn:
        dst.view(torch.uint8).index_copy_(1, idx, src.view(torch.uint8))
    else:
        dst.index_copy_(1, idx, src.to(dst.dtype))


def sdpa_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: Any,
    cache: Any,
    layer: int,
    plan: Any,
    rope: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    q, k = attn.norm_rope(q, k, *rope)
    # Write at the device-side offset so the same code runs inside a CUDA graph for every slot.
    idx = plan.device_tensors["write_start"].long() + torch.arange(k.shape[1], device=k.device)
    if _is_fp8(cache):
        from arvid.kernels.qk_norm_rope_append import quantize_fp8_per_token_head_ref

        (k, ks), (v, vs) = quantize_fp8_per_token_head_ref(k), quantize_fp8_per_token_head_ref(v)
        _write(cache.k_scale[layer], idx, ks)
        _write(cache.v_scale[layer], idx, vs)
    _write(cache.k[layer], idx, k)
    _write(cache.v[layer], idx, v)
    return q


def sdpa_attend(q: torch.Tensor, cache: Any, layer: int, plan: Any) -> torch.Tensor:
    # The valid slots are a prefix of the ring, so this is a view: no gather, no copy.
    k = cache.k[layer][:, : plan.kv_len]
    v = cache.v[layer][:, : plan.kv_len]
    if _is_fp8(cache):  # reference path: dequantize a copy (the triton kernel scales in registers)
        k = (k.float() * cache.k_scale[layer][:, : plan.kv_len, :, None]).to(q.dtype)
        v = (v.float() * cache.v_scale[layer][:, : plan.kv_len, :, None]).to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


register_backend(
    AttentionBackend(
        name="sdpa",
        description="ring-buffer cache; torch RMSNorm/RoPE/index write + scaled_dot_product_attention on a view",
        ring=True,
        unavailable=_always,
        append=sdpa_append,
        attend=sdpa_attend,
    )
)


# -- triton: fused append + sink/window attention kernels -------------------------------------
def _triton_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    from arvid.kernels._triton_utils import interpreting, triton_unavailable_reason

    reason = triton_unavailable_reason()
    if reason:
        return reason
    if device.type == "cpu" and not interpreting():
        return "the model is on the CPU; the Triton kernels run on CUDA (or under TRITON_INTERPRET=1, for tests)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels do not run on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {dtype} is not supported (float16, bfloat16, float32)"
    return None


def triton_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: Any,
    cache: Any,
    layer: int,
    plan: Any,
    rope: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    from arvid.kernels.qk_norm_rope_append import qk_norm_rope_append_kv_cache

    scales = {"k_scale": cache.k_scale[layer], "v_scale": cache.v_scale[layer]} if _is_fp8(cache) else {}
    return qk_norm_rope_append_kv_cache(
        q, k, v, attn.norm_q.weight, attn.norm_k.weight, *cache.rope_tables, cache.k[layer], cache.v[layer],
        plan.device_tensors["write_start"], plan.device_tensors["frame_offset"],
        (plan.num_frames, *cache.patch_grid), eps=attn.eps, **scales,
    )  # fmt: skip


def triton_attend(q: torch.Tensor, cache: Any, layer: int, plan: Any) -> torch.Tensor:
    from arvid.kernels.sink_window_attention import sink_window_attention_with_kv_cache

    scales = {"k_scale": cache.k_scale[layer], "v_scale": cache.v_scale[layer]} if _is_fp8(cache) else {}
    kv_len = plan.device_tensors["kv_len"]
    return sink_window_attention_with_kv_cache(q, cache.k[layer], cache.v[layer], kv_len, **scales)


register_backend(
    AttentionBackend(
        name="triton",
        description="ring-buffer cache; fused q/k-norm + RoPE + cache-write kernel, one sink+window attention kernel",
        ring=True,
        unavailable=_triton_unavailable,
        append=triton_append,
        attend=triton_attend,
        kv_len_on_device=True,
    )
)
register_backend(
    AttentionBackend(
        name="eager",
        description="reference algorithm: temporal-order cache rolled by copying, clone + concat per call",
        ring=False,
        unavailable=_always,
    )
)
