"""Attention backends: a small registry with precondition checks and an explicit choice per run.

Each backend states its own preconditions (device, dtype, KV-cache dtype: ``unavailable``) and the
storage it reads (``cache``: the ring of ``kv_cache.py`` or the eager baseline's ``concat_cache.py``,
built by ``kv_cache.make_cache``, never by the backend) and, for the ring-buffer backends, provides
the two per-layer operations of the streaming self-attention over explicit tensors (never a model
module):

``append(q, k, v, norm, rope, layer, plan) -> q_rot``
    q/k RMSNorm (:class:`~arvid.runtime.rope.QKNorm`), 3D RoPE (:class:`~arvid.runtime.rope.RopeInput`), and the
    write of K (rotated) and V into the plan's slots of one layer's ring buffer
    (:class:`~arvid.kernels.layouts.RingLayer`); returns the rotated queries ``[B, L, H, D]``.
``attend(q_rot, layer, plan) -> out``
    attention of the queries over the valid slots ``[0, plan.kv_len)`` of that ring buffer.

With an FP8 cache (``layer.k.dtype == float8_e4m3fn``) K and V are stored as e4m3 with one
float32 scale per token and head (``layer.k_scale`` / ``layer.v_scale`` ``[B, S, H]``,
``x ~= x8 * scale``): the append quantizes, the attention dequantizes.

``eager`` is the exception: it is the reference implementation's algorithm (a cache kept in
temporal order, rolled by copying, cloned and concatenated before every attention call), the
baseline every benchmark compares against; its cache does the work itself (``concat_cache.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from arvid.kernels import has_sm89
from arvid.kernels.fp8 import quantize_fp8_per_token_head_ref

from .rope import QKNorm, RopeInput, qk_norm_rope

if TYPE_CHECKING:
    from arvid.kernels.layouts import RingLayer

    from .kv_cache import ForwardPlan

__all__ = ["AttentionBackend", "QKNorm", "backend_names", "default_backend", "get_backend", "register_backend"]


@dataclass(frozen=True)
class AttentionBackend:
    """One attention backend: what it computes and what it needs to run.

    ``unavailable(device, dtype, kv_dtype=None)`` states the backend's own preconditions: why it cannot
    run with a model on ``device`` in ``dtype`` and a KV cache of ``kv_dtype`` (None: the model's), or
    None where it can. ``cache`` names the storage it reads (``"ring"``: :class:`~arvid.runtime.kv_cache.RingKVCache`,
    ``"concat"``: the eager baseline's :class:`~arvid.runtime.concat_cache.ConcatKVCache`); the backend
    never builds it (:func:`arvid.runtime.kv_cache.make_cache` does).
    """

    name: str
    description: str
    unavailable: Callable[..., str | None]  # (device, dtype, kv_dtype=None) -> why it cannot run here, or None
    cache: str = "ring"
    append: Callable[..., torch.Tensor] | None = None
    attend: Callable[..., torch.Tensor] | None = None
    # True: attend reads the valid length from the plan's device scalars, so one captured graph
    # serves every fill state; False: it slices by the host int plan.kv_len (a graph per fill state).
    kv_len_on_device: bool = False
    # False: the cache keeps host-side state per layer that changes inside a forward: not capturable.
    capturable: bool = True


_BACKENDS: dict[str, AttentionBackend] = {}


def register_backend(backend: AttentionBackend) -> AttentionBackend:
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(
    name: str, device: torch.device | str, dtype: torch.dtype, *, kv_dtype: torch.dtype | None = None
) -> AttentionBackend:
    """Look up a backend and check that it can run on ``device`` / ``dtype`` with a ``kv_dtype`` cache
    (clear error naming the backend and the reason if not)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {backend_names()}")
    backend = _BACKENDS[name]
    device = torch.device(device)
    reason = backend.unavailable(device, dtype) if kv_dtype is None else backend.unavailable(device, dtype, kv_dtype)
    if reason:
        raise ValueError(f"attention backend {name!r} cannot run here: {reason}")
    return backend


def default_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """The fastest backend that runs on ``device``: ``triton`` on CUDA where it is usable, else ``sdpa``."""
    device = torch.device(device)
    if device.type == "cuda" and "triton" in _BACKENDS and _BACKENDS["triton"].unavailable(device, dtype) is None:
        return "triton"  # on the CPU the Triton interpreter is for tests, far too slow to be a default
    return "sdpa"


def _ring_kv_dtype(dtype: torch.dtype, kv_dtype: torch.dtype | None) -> str | None:
    """The ring stores K/V in the model's dtype or as FP8 e4m3 with per-token-head scales."""
    if kv_dtype not in (None, dtype, torch.float8_e4m3fn):
        return f"the KV cache dtype must be the model's ({dtype}) or torch.float8_e4m3fn, got {kv_dtype}"
    return None


def _model_dtype_cache_only(dtype: torch.dtype, kv_dtype: torch.dtype | None) -> str | None:
    if kv_dtype not in (None, dtype):
        return f"it keeps the KV cache in the model's dtype only ({dtype}), got {kv_dtype}: no FP8 KV cache (+fp8kv)"
    return None


def _ring_anywhere(device: torch.device, dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> str | None:
    return _ring_kv_dtype(dtype, kv_dtype)


# -- sdpa: plain PyTorch ops over the ring buffer ---------------------------------------------
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
    norm: QKNorm | None,
    rope: RopeInput,
    layer: RingLayer,
    plan: ForwardPlan,
) -> torch.Tensor:
    q, k = qk_norm_rope(q, k, norm, rope)
    # Write at the device-side offset so the same code runs inside a CUDA graph for every slot.
    idx = plan.tensors.write_start.long() + torch.arange(k.shape[1], device=k.device)
    if layer.is_fp8:
        (k, ks), (v, vs) = quantize_fp8_per_token_head_ref(k), quantize_fp8_per_token_head_ref(v)
        _write(layer.k_scale, idx, ks)
        _write(layer.v_scale, idx, vs)
    _write(layer.k, idx, k)
    _write(layer.v, idx, v)
    return q


def sdpa_attend(q: torch.Tensor, layer: RingLayer, plan: ForwardPlan) -> torch.Tensor:
    # The valid slots are a prefix of the ring, so this is a view: no gather, no copy.
    k = layer.k[:, : plan.kv_len]
    v = layer.v[:, : plan.kv_len]
    if layer.is_fp8:  # reference path: dequantize a copy (the triton kernel scales in registers)
        k = (k.float() * layer.k_scale[:, : plan.kv_len, :, None]).to(q.dtype)
        v = (v.float() * layer.v_scale[:, : plan.kv_len, :, None]).to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


register_backend(
    AttentionBackend(
        name="sdpa",
        description="ring-buffer cache; torch RMSNorm/RoPE/index write + scaled_dot_product_attention on a view",
        unavailable=_ring_anywhere,
        append=sdpa_append,
        attend=sdpa_attend,
    )
)


# -- triton: fused append + sink/window attention kernels -------------------------------------
def _triton_unavailable(device: torch.device, dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> str | None:
    from arvid.kernels import triton_interpreting, triton_unavailable_reason

    reason = triton_unavailable_reason()
    if reason:
        return reason
    if device.type == "cpu" and not triton_interpreting():
        return "the model is on the CPU; the Triton kernels run on CUDA (or under TRITON_INTERPRET=1, for tests)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels do not run on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {dtype} is not supported (float16, bfloat16, float32)"
    if kv_dtype == torch.float8_e4m3fn and device.type == "cuda" and not has_sm89(device):
        # the kernels' e4m3 conversions need sm_89 (the interpreter on the CPU has no such limit)
        cap = torch.cuda.get_device_capability(device)
        return (
            f"an FP8 KV cache needs an sm_89+ GPU (compute capability >= 8.9: Ada, Hopper, Blackwell); "
            f"{torch.cuda.get_device_name(device)} has compute capability {cap[0]}.{cap[1]}"
        )
    return _ring_kv_dtype(dtype, kv_dtype)


def triton_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm: QKNorm | None,
    rope: RopeInput,
    layer: RingLayer,
    plan: ForwardPlan,
) -> torch.Tensor:
    from arvid.kernels.qk_norm_rope_append import qk_norm_rope_append_kv_cache

    if norm is None:  # q/k normalised already (sequence parallel): the fused kernel always norms
        return sdpa_append(q, k, v, None, rope, layer, plan)
    return qk_norm_rope_append_kv_cache(
        q, k, v, norm.q_weight, norm.k_weight,
        cache=layer, rope=rope.tables, plan=plan.tensors, grid_sizes=rope.grid, eps=norm.eps,
    )  # fmt: skip


def triton_attend(q: torch.Tensor, layer: RingLayer, plan: ForwardPlan) -> torch.Tensor:
    from arvid.kernels.sink_window_attention import sink_window_attention_with_kv_cache

    return sink_window_attention_with_kv_cache(q, layer, plan.tensors.kv_len)


register_backend(
    AttentionBackend(
        name="triton",
        description="ring-buffer cache; fused q/k-norm + RoPE + cache-write kernel, one sink+window attention kernel",
        unavailable=_triton_unavailable,
        append=triton_append,
        attend=triton_attend,
        kv_len_on_device=True,
    )
)


# -- flash: flash-attn's kvcache attention over the ring buffer in place --------------------------
def _flash_module():
    """FA3's ``flash_attn_interface`` on Hopper where installed, else FA2's ``flash_attn``; None without either."""
    import importlib

    names = ["flash_attn"]
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        names.insert(0, "flash_attn_interface")
    for name in names:
        try:
            return importlib.import_module(name)
        except Exception:  # ImportError, or a build for another torch failing at import
            continue
    return None


def _flash_unavailable(device: torch.device, dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> str | None:
    if _flash_module() is None:
        return "flash-attn is not installed (pip install flash-attn; FA3's flash_attn_interface on Hopper)"
    if device.type != "cuda":
        return f"flash-attn runs on CUDA, the model is on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn takes float16 or bfloat16, not {dtype}"
    return _model_dtype_cache_only(dtype, kv_dtype)  # flash-attn reads the cache in the model's dtype


def flash_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm: QKNorm | None,
    rope: RopeInput,
    layer: RingLayer,
    plan: ForwardPlan,
) -> torch.Tensor:
    if q.is_cuda and _triton_unavailable(q.device, q.dtype) is None:
        return triton_append(q, k, v, norm, rope, layer, plan)
    return sdpa_append(q, k, v, norm, rope, layer, plan)


def flash_attend(q: torch.Tensor, layer: RingLayer, plan: ForwardPlan) -> torch.Tensor:
    # cache_seqlens bounds the keys to the valid ring prefix [0, kv_len) on the device: no copy, no
    # host sync, one captured graph for every fill state. Ring slots are not in time order, which
    # softmax attention does not care about; with k=v=None nothing is appended (the append did it).
    fa = _flash_module()
    out = fa.flash_attn_with_kvcache(
        q, layer.k, layer.v, cache_seqlens=plan.tensors.kv_len, softmax_scale=q.shape[-1] ** -0.5, causal=False
    )
    return out[0] if isinstance(out, tuple) else out  # FA3 may return (out, lse)


register_backend(
    AttentionBackend(
        name="flash",
        description="ring-buffer cache; flash-attn's flash_attn_with_kvcache on the valid prefix (cache_seqlens)",
        unavailable=_flash_unavailable,
        append=flash_append,
        attend=flash_attend,
        kv_len_on_device=True,
    )
)


def _eager_unavailable(device: torch.device, dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> str | None:
    return _model_dtype_cache_only(dtype, kv_dtype)


register_backend(
    AttentionBackend(
        name="eager",
        description="reference algorithm: temporal-order cache rolled by copying, clone + concat per call",
        unavailable=_eager_unavailable,
        cache="concat",
        capturable=False,
    )
)
