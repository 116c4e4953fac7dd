"""INT8 linear layers with the numerics of torchao's INT8 configs, runnable on the CPU.

* :class:`Int8DynamicLinear` - W8A8 dynamic, as torchao's ``Int8DynamicActivationInt8WeightConfig()``
  (version 2, ``PerRow`` for both operands, symmetric): int8 weight with one scale per output row,
  activations quantized per token at run time, an integer matmul, then both scales.
* :class:`Int8WeightOnlyLinear` - as torchao's ``Int8WeightOnlyConfig()``: int8 weight with per-row
  scales, activations untouched; the matmul runs in the activation dtype.

Scales follow torchao's ``choose_qparams_affine`` (torchao 0.18, MappingType.SYMMETRIC): ``amax / 127.5``
computed in the tensor's own dtype, clamped to float32 eps, then float32; values are
``round(x * (1 / scale))`` (half to even) clamped to [-128, 127].
"""

from __future__ import annotations

import torch

from ._linear import QuantizedLinear

# (quant_max - quant_min) / 2 for int8: torchao's symmetric scale divides amax by 127.5, not 127.
INT8_HALF_RANGE = 127.5
_F32_EPS = torch.finfo(torch.float32).eps  # torchao's minimum scale for int8, whatever the dtype


def quantize_int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of a 2-D tensor ``[R, K]``.

    Returns
    -------
    ``(q, scale)``: int8 ``[R, K]`` and float32 ``[R]`` with ``t ~= q * scale[:, None]``.
    """
    amax = t.abs().amax(dim=-1, keepdim=True)
    scale = torch.clamp(amax / INT8_HALF_RANGE, min=_F32_EPS).to(torch.float32)
    q = torch.clamp(torch.round(t * (1.0 / scale)), -128, 127).to(torch.int8)
    return q, scale.squeeze(-1)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] @ b [K, N]`` of int8 matrices, returned as float32 ``[M, N]``.

    On the CPU ``torch._int_mm`` accumulates exactly in int32 (any shape). On CUDA it takes
    M > 16 and K, N multiples of 8; other shapes fall back to a float32 matmul of the integer
    values, which is exact while every partial sum stays below 2**24, i.e. for K <= 1024
    (|a * b| <= 128 * 128 = 2**14); beyond that the float32 accumulator rounds at 2**-24 relative,
    five orders of magnitude below the int8 rounding error itself. The final int32 -> float32
    conversion rounds at the same 2**-24 level (as torchao's ``int_scaled_matmul`` does).
    """
    m, k = a.shape
    n = b.shape[1]
    if a.device.type == "cpu" or (a.device.type == "cuda" and m > 16 and k % 8 == 0 and n % 8 == 0):
        return torch._int_mm(a.contiguous(), b).to(torch.float32)
    return a.to(torch.float32) @ b.to(torch.float32)


class Int8DynamicLinear(QuantizedLinear):
    """INT8 W8A8 with dynamic per-token activation scales (torchao ``Int8DynamicActivationInt8WeightConfig``).

    ``y = (q_x @ q_w^T) * s_x[:, None] * s_w[None, :] + bias``: integer products accumulated exactly
    (see :func:`int8_matmul`), the scales and bias applied in float32, one rounding to the input
    dtype at the end. torchao rounds to the output dtype after the activation scale and again after
    the weight scale; with a bf16 model the two differ at the bf16 rounding level (2**-9 relative).
    """

    scheme = "int8"
    qdtype = torch.int8

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_int8_rows(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        qx, sx = quantize_int8_rows(x2)
        acc = int8_matmul(qx, self.qweight.t())
        return self._finish(acc * sx[:, None] * self.weight_scale[None, :], x)


class Int8WeightOnlyLinear(QuantizedLinear):
    """INT8 weight-only (torchao ``Int8WeightOnlyConfig``): ``(x @ q_w^T) * s_w + bias`` in x's dtype,
    in torchao's order of operations (int8 weight cast to x's dtype, matmul, then the row scales)."""

    scheme = "int8-weight-only"
    qdtype = torch.int8

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_int8_rows(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = (x2 @ self.qweight.t().to(x.dtype)) * self.weight_scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)
