"""Attention backends: a small registry with precondition checks and an explicit choice per run.

A backend provides the two per-layer operations of the streaming self-attention:

``append(q, k, v, attn, k_cache, v_cache, plan, rope) -> q_rot``
    q/k RMSNorm, 3D RoPE, and the write of K (rotated) and V into the chunk's slots of one
    layer's ring buffer ``[B, S, H, D]``; returns the rotated queries ``[B, L, H, D]``.
``attend(q_rot, k_cache, v_cache, plan) -> out``
    attention of the queries over the valid slots ``[0, plan.kv_len)`` of that ring buffer.

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
def sdpa_append(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: Any,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: Any,
    rope: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    q, k = attn.norm_rope(q, k, *rope)
    # Write at the device-side offset so the same code runs inside a CUDA graph for every slot.
    idx = plan.device_tensors["write_start"].long() + torch.arange(k.shape[1], device=k.device)
    k_cache.index_copy_(1, idx, k.to(k_cache.dtype))
    v_cache.index_copy_(1, idx, v.to(v_cache.dtype))
    return q


def sdpa_attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: Any) -> torch.Tensor:
    # The valid slots are a prefix of the ring, so this is a view: no gather, no copy.
    k = k_cache[:, : plan.kv_len].transpose(1, 2)
    v = v_cache[:, : plan.kv_len].transpose(1, 2)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v).transpose(1, 2)


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
register_backend(
    AttentionBackend(
        name="eager",
        description="reference algorithm: temporal-order cache rolled by copying, clone + concat per call",
        ring=False,
        unavailable=_always,
    )
)
