"""FP8 (e4m3) W8A8 row-wise, emulated: the numerics of torchao's
``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` on any device, the CPU included.

Weights: one scale per output row, ``amax / 448`` (448 = the largest float8_e4m3fn value), values
``clamp(w / scale, -448, 448)`` cast to float8_e4m3fn (round to nearest even). Activations: the same
per token, at run time. The matmul multiplies the e4m3 values in float32 (each product of two
4-significant-bit numbers is exact in float32), accumulates in float32 and applies both scales to
the accumulator, as ``torch._scaled_mm`` does; one rounding to the input dtype at the end.

Known differences from torchao on a GPU, all far below the e4m3 rounding itself (~2**-5 relative):
torchao's default ``use_fast_accum=True`` lets the FP8 tensor cores accumulate in reduced precision;
where ``mslk`` is installed on sm_90 torchao quantizes with its own Triton kernel; and torchao
divides by a zero scale for an all-zero row (NaN) where the emulation clamps the scale to the
smallest normal float32 (the row stays zero).
"""

from __future__ import annotations

import torch

from arvid.kernels.fp8 import FP8_E4M3_MAX

from ._linear import QuantizedLinear

E4M3 = torch.float8_e4m3fn
E4M3_MAX = FP8_E4M3_MAX  # 448.0, the one constant (arvid.kernels.fp8)
_F32_TINY = torch.finfo(torch.float32).tiny

# Two e4m3 quantizers exist on purpose, with the same amax / 448 rule but different contracts:
# quantize_e4m3_rows (here) reproduces torchao's W8A8 linear recipe bit for bit (scale computed in
# the input dtype, floored at float32's smallest normal, values clamped to +-448), so the emulation
# can be checked against torchao; arvid.kernels.fp8.quantize_fp8_per_token_head_ref is the KV
# cache's recipe, which the Triton append kernel reproduces (scale in float32, floored at 1e-12).


def quantize_e4m3_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row float8_e4m3fn quantization of a 2-D tensor ``[R, K]``.

    The scale is computed in ``t``'s dtype and then converted to float32, as torchao's
    ``_choose_scale_float8`` does, so a bf16 model gets bit-identical scales.

    Returns
    -------
    ``(q, scale)``: float8_e4m3fn ``[R, K]`` and float32 ``[R]`` with ``t ~= q * scale[:, None]``.
    """
    amax = t.abs().amax(dim=-1, keepdim=True)
    scale = (amax / E4M3_MAX).to(torch.float32).clamp(min=_F32_TINY)
    q = (t.to(torch.float32) / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale.squeeze(-1)


class Fp8EmulatedLinear(QuantizedLinear):
    """FP8 e4m3 W8A8 with per-row weight scales and dynamic per-token activation scales, emulated.

    ``y = (q_x @ q_w^T) * s_x[:, None] * s_w[None, :] + bias`` with ``q_x``, ``q_w`` float8_e4m3fn
    values multiplied and summed in float32 (see the module docstring for the exact recipe).
    """

    scheme = "fp8"
    qdtype = E4M3

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_e4m3_rows(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        qx, sx = quantize_e4m3_rows(x2)
        acc = qx.to(torch.float32) @ self.qweight.to(torch.float32).t()
        return self._finish(acc * sx[:, None] * self.weight_scale[None, :], x)
