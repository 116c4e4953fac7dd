"""The common part of arvid's quantized ``nn.Linear`` replacements (storage, loading, ``weight``).

A quantized linear stores its weight as ``qweight`` (int8 or float8_e4m3fn, ``[out, in]``) plus one
float32 scale per output row (``weight_scale``, ``[out]``), so the model really shrinks; the bias
stays in the compute dtype. State-dict keys are ``<layer>.qweight``, ``<layer>.weight_scale`` and
``<layer>.bias``: that is the on-disk format of :mod:`arvid.quant.serialize` too.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class QuantizedLinear(nn.Module):
    """Base class: a linear layer whose weight is stored quantized with per-output-row scales.

    Subclasses set :attr:`scheme` and :attr:`qdtype` and implement :meth:`quantize_weight` and
    :meth:`forward`. Choose the model's dtype and device before quantizing: ``.to(device)`` moves a
    quantized model, but ``.to(dtype)`` would also cast the stored float8 weights and the float32
    scales (PyTorch treats both as floating point), so it is not supported.
    """

    scheme: ClassVar[str]
    qdtype: ClassVar[torch.dtype]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = dtype
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=self.qdtype, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``weight [out, in]`` -> (``qweight [out, in]``, float32 ``scale [out]``)."""
        raise NotImplementedError

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> QuantizedLinear:
        """Quantize an ``nn.Linear`` (its weight's dtype becomes the compute dtype)."""
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype=w.dtype, device=w.device)
        mod.qweight, mod.weight_scale = cls.quantize_weight(w)
        if linear.bias is not None:
            mod.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return mod

    def dequantized_weight(self) -> torch.Tensor:
        """``qweight * scale`` in the compute dtype, ``[out, in]``."""
        return (self.qweight.float() * self.weight_scale[:, None]).to(self.compute_dtype)

    @property
    def weight(self) -> torch.Tensor:
        # runtime/model.py no longer reads a quantized layer's weight (it takes its dtype from the
        # ``modulation`` parameter and the unquantized ``patch_embedding``); code outside that still
        # reads ``layer.weight`` gets a true tensor in the compute dtype (one pass over the weight).
        return self.dequantized_weight()

    @property
    def nbytes(self) -> int:
        """Bytes held by this layer (quantized weight, scales, bias)."""
        tensors = [self.qweight, self.weight_scale] + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"scheme={self.scheme}, weight={self.qdtype}, compute={self.compute_dtype}"
        )

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Add the bias in float32, round once to the input's dtype and restore the leading dims."""
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
