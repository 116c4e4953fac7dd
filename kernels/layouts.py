"""What the kernels take besides the activations: one layer's cache, the plan's device scalars, RoPE tables.

FlashInfer splits an attention call into a host-side *plan* (which slots, how many valid keys)
and a *run* over fixed device buffers. Here the run's inputs are three small frozen bundles, so
every call site names what it passes:

* :class:`RingLayer`: one layer's ring-buffer KV cache (and the FP8 scales beside it);
* :class:`PlanTensors`: the plan's numbers as int32 device scalars at fixed addresses (refilled
  in place with :meth:`PlanTensors.fill`, so a captured CUDA graph reads the new plan);
* :class:`RopeCosSin`: the 3D RoPE tables of :func:`arvid.kernels.rope_3d.rope_3d_tables`.

The bundles only hold references: they never copy, allocate (except :meth:`PlanTensors.zeros`)
or validate. Each op checks the tensors it reads, with the messages of its own checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PlanTensors", "RingLayer", "RopeCosSin"]


@dataclass(frozen=True)
class RingLayer:
    """One layer's ring-buffer KV cache.

    Attributes
    ----------
    k, v : Tensor ``[B, S, H, D]``
        Keys (stored after RoPE) and values of ``S`` token slots; any strides with a contiguous
        last dim. float16 / bfloat16 / float32, or float8_e4m3fn with scales.
    k_scale, v_scale : float32 Tensor ``[B, S, H]``, optional
        For a float8_e4m3fn cache only: one scale per token and head, ``x ~= x8.float() * scale``.
    """

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    @property
    def is_fp8(self) -> bool:
        """True when the cache carries scales (a float8_e4m3fn cache)."""
        return self.k_scale is not None


@dataclass(frozen=True)
class PlanTensors:
    """A forward's plan as int32 device scalars: read by the kernels on the device, never on the host.

    Attributes
    ----------
    write_start : int32 Tensor ``[1]``
        First cache slot the forward's own K/V are written to.
    kv_len : int32 Tensor ``[B]``
        Valid cache slots (a prefix ``[0, kv_len[b])``) the queries attend to, own K/V included.
    frame_offset : int32 Tensor ``[1]``
        Absolute latent-frame index of the forward's first frame (its RoPE frame position).
    """

    write_start: torch.Tensor
    kv_len: torch.Tensor
    frame_offset: torch.Tensor

    @classmethod
    def zeros(cls, batch_size: int, device: torch.device | str) -> PlanTensors:
        """A zeroed set for ``batch_size`` batch elements on ``device``."""
        z = lambda n: torch.zeros(n, dtype=torch.int32, device=device)
        return cls(z(1), z(batch_size), z(1))

    def fill(self, write_start: int, kv_len: int, frame_offset: int) -> None:
        """Load a host-side plan in place (the addresses stay: captured graphs read the new values)."""
        self.write_start.fill_(write_start)
        self.kv_len.fill_(kv_len)
        self.frame_offset.fill_(frame_offset)


@dataclass(frozen=True)
class RopeCosSin:
    """3D RoPE tables: ``cos`` and ``sin`` float32 ``[P, D/2]`` (row = position, from ``rope_3d_tables``)."""

    cos: torch.Tensor
    sin: torch.Tensor
