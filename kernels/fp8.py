"""FP8 (float8_e4m3fn) constants and the per token-head quantizer of the KV cache: the one home of both.

The e4m3 KV cache stores ``x / scale`` with one float32 scale per token and head (a row of ``D``
values): ``scale = max(amax|x| / FP8_E4M3_MAX, FP8_SCALE_MIN)``. ``kernels/qk_norm_rope_append``
quantizes this way on write (its Triton kernel gets the two constants as ``tl.constexpr``), the
sdpa backend's FP8 cache through :func:`quantize_fp8_per_token_head_ref`, and
``kernels/sink_window_attention`` dequantizes with the same scales.
"""

from __future__ import annotations

import torch

__all__ = ["FP8_E4M3_MAX", "FP8_SCALE_MIN", "quantize_fp8_per_token_head_ref"]

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn (torch.finfo(torch.float8_e4m3fn).max)
FP8_SCALE_MIN = 1e-12  # floor of the per token-head scale, so an all-zero head does not divide by 0


def quantize_fp8_per_token_head_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` ``[..., D]`` to float8_e4m3fn with one scale per row: ``scale = amax|x| / 448``.

    Returns ``(x_fp8, scale)`` with ``x ~= x_fp8.float() * scale[..., None]``; scale is float32 ``[...]``.
    """
    xf = x.float()
    scale = (xf.abs().amax(-1) / FP8_E4M3_MAX).clamp_min(FP8_SCALE_MIN)
    return (xf / scale[..., None]).to(torch.float8_e4m3fn), scale
