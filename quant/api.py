"""``quantize_(model, config)`` in torchao's style, with dataclass configs.

Two backends:

* ``"emulate"`` (default, any device): arvid's own modules replace ``nn.Linear``
  (:class:`~arvid.quant.int8.Int8DynamicLinear`, :class:`~arvid.quant.int8.Int8WeightOnlyLinear`,
  :class:`~arvid.quant.fp8.Fp8EmulatedLinear`). They store int8 / e4m3 weights and float32 row
  scales (the model really shrinks, and :mod:`arvid.quant.serialize` saves it) and compute the
  same numbers as torchao's kernels, so quality can be validated without a GPU.
* ``"torchao"`` (CUDA only): torchao's own configs, whose kernels are the fast path on a GPU.
  torchao's quantized linears are only fast when compiled (published Flux figures on an H100,
  cited in issue 6 and not measured here: INT8 dynamic 3.4 s compiled vs 130 s eager, against
  6.6 s BF16 eager), hence ``compile=True``;
  the speed of either setting on this model is still to be measured.

Small, sensitive layers stay in high precision by default (:data:`DEFAULT_SKIP`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

import torch
from torch import nn

from arvid.runtime.devices import require_sm89
from arvid.runtime.optional import MissingDependencyError, require

from ._linear import QuantizedLinear
from .fp8 import Fp8EmulatedLinear
from .int8 import Int8DynamicLinear, Int8WeightOnlyLinear

# The text and time embeddings, the time projection (it makes the adaLN modulation of every
# block) and the output head: 25.7 M of Wan2.1-1.3B's 1417.6 M linear weights (1.8 %, counted on
# the model's layers), so keeping them in BF16 costs little memory, but their errors reach every
# token of every block (text K/V, modulation) or the output directly (head). modelopt's default
# configs likewise leave the final projection (diffusers' ``proj_out``) and ``lm_head`` unquantized.
DEFAULT_SKIP: tuple[str, ...] = ("text_embedding.*", "time_embedding.*", "time_projection.*", "head.head")

BACKENDS = ("emulate", "torchao")
SCHEMES = ("int8", "int8-weight-only", "fp8")
EMULATED_MODULES: dict[str, type[QuantizedLinear]] = {
    "int8": Int8DynamicLinear,
    "int8-weight-only": Int8WeightOnlyLinear,
    "fp8": Fp8EmulatedLinear,
}


def _check_common(cfg) -> None:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if isinstance(cfg.skip, str):
        raise ValueError(f"skip must be a tuple of fnmatch patterns, got the string {cfg.skip!r}")
    object.__setattr__(cfg, "skip", tuple(cfg.skip))


@dataclass(frozen=True)
class Int8Config:
    """INT8 quantization of the model's ``nn.Linear`` layers.

    Parameters
    ----------
    weight_only : False: W8A8 dynamic (torchao ``Int8DynamicActivationInt8WeightConfig()``: per-row
        weights, per-token activations). True: weight-only (torchao ``Int8WeightOnlyConfig()``).
    skip : fnmatch patterns of module names kept in high precision.
    backend : ``"emulate"`` (arvid's modules, any device) or ``"torchao"`` (CUDA only).
    compile : ``torch.compile`` each quantized linear in place (``nn.Module.compile``), so that
        quantize / matmul / rescale run as fused kernels.
    """

    weight_only: bool = False
    skip: tuple[str, ...] = DEFAULT_SKIP
    backend: Literal["emulate", "torchao"] = "emulate"
    compile: bool = False

    def __post_init__(self) -> None:
        _check_common(self)

    @property
    def scheme(self) -> str:
        return "int8-weight-only" if self.weight_only else "int8"


@dataclass(frozen=True)
class Fp8Config:
    """FP8 (e4m3) W8A8 row-wise: per-row weight scales, dynamic per-token activation scales.

    Parameters
    ----------
    skip : fnmatch patterns of module names kept in high precision.
    backend : ``"emulate"`` (the same numerics on any device, see :mod:`arvid.quant.fp8`) or
        ``"torchao"`` (``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``: CUDA
        with compute capability 8.9 or newer, i.e. Ada / Hopper / Blackwell).
    compile : as in :class:`Int8Config`.
    """

    skip: tuple[str, ...] = DEFAULT_SKIP
    backend: Literal["emulate", "torchao"] = "emulate"
    compile: bool = False

    def __post_init__(self) -> None:
        _check_common(self)

    @property
    def scheme(self) -> str:
        return "fp8"


QuantConfig = Int8Config | Fp8Config


def config_for_scheme(scheme: str, **kwargs) -> QuantConfig:
    """``"int8"``, ``"int8-weight-only"`` or ``"fp8"`` -> its config (kwargs: skip, backend, compile)."""
    if scheme == "int8":
        return Int8Config(**kwargs)
    if scheme == "int8-weight-only":
        return Int8Config(weight_only=True, **kwargs)
    if scheme == "fp8":
        return Fp8Config(**kwargs)
    raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {SCHEMES}")


@dataclass(frozen=True)
class QuantRecord:
    """What :func:`quantize_` did to a model (kept on it as ``model.arvid_quant``)."""

    config: QuantConfig
    layers: tuple[str, ...]  # quantized linear layers
    skipped: tuple[str, ...]  # linear layers kept in high precision
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "scheme": self.config.scheme,
            "config": dataclasses.asdict(self.config),
            "layers": list(self.layers),
            "skipped": list(self.skipped),
            **self.extra,
        }


def quant_record(model: nn.Module) -> QuantRecord | None:
    """The :class:`QuantRecord` of a model quantized by :func:`quantize_` (or loaded quantized), else None."""
    return getattr(model, "arvid_quant", None)


def check_no_unmerged_lora(model: nn.Module) -> None:
    """Raise if a module looks like an unmerged peft LoRA layer (it has ``lora_A`` / ``lora_B``).

    Quantizing the base weight of such a layer would leave the LoRA branch in high precision and,
    once merged later, undo the quantization: LoRA is merged into the weights first.
    """
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "lora_B"):
            raise ValueError(
                f"module {name!r} ({type(mod).__name__}) looks like an unmerged peft LoRA layer (it has "
                "lora_A / lora_B): merge the LoRA into the weights before quantizing (peft: "
                "model.merge_and_unload(); LongLive's lora.pt: merge it at checkpoint load)"
            )


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _torchao_config(config: QuantConfig):
    try:
        fp8_config, int8_config, int8wo_config, per_row = require(
            "torchao.quantization",
            "Float8DynamicActivationFloat8WeightConfig",
            "Int8DynamicActivationInt8WeightConfig",
            "Int8WeightOnlyConfig",
            "PerRow",
            purpose="backend='torchao'",
        )
    except MissingDependencyError as e:
        raise MissingDependencyError(f"{e}; backend='emulate' computes the same numerics without it") from None
    if isinstance(config, Fp8Config):
        return fp8_config(granularity=per_row())
    return int8wo_config() if config.weight_only else int8_config()


def _check_torchao_device(config: QuantConfig, device: torch.device) -> None:
    name = type(config).__name__
    if device.type != "cuda":
        raise ValueError(
            f"{name}(backend='torchao') runs torchao's CUDA kernels, but the model is on {device}; "
            f"use backend='emulate' to get the same numerics on the CPU"
        )
    if isinstance(config, Fp8Config):
        require_sm89(
            device, "Fp8Config(backend='torchao') (FP8 tensor cores)",
            hint="; use backend='emulate' to validate FP8 numerics on this device",
        )  # fmt: skip


def quantize_(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Quantize ``model``'s ``nn.Linear`` layers in place (except those matching ``config.skip``).

    Parameters
    ----------
    model : typically a :class:`~arvid.runtime.model.CausalWanModel` with merged LoRA, already
        in its final device and dtype.
    config : :class:`Int8Config` or :class:`Fp8Config`.

    Returns
    -------
    The same model (quantized in place), with a :class:`QuantRecord` as ``model.arvid_quant``.

    Raises
    ------
    ValueError : an unmerged LoRA layer, an already quantized model, nothing left to quantize, or
        a torchao config on a device that cannot run it (CPU; FP8 below compute capability 8.9).
    """
    if not isinstance(config, Int8Config | Fp8Config):
        raise ValueError(f"config must be an Int8Config or Fp8Config, got {type(config).__name__}")
    check_no_unmerged_lora(model)
    if quant_record(model) is not None or any(
        isinstance(m, QuantizedLinear) or hasattr(m, "weight_quantizer") for m in model.modules()
    ):
        raise ValueError("model is already quantized (arvid or modelopt); quantize a fresh copy of the float model")
    linears = _linear_layers(model)
    targets = [(n, m) for n, m in linears if not _skipped(n, config.skip)]
    skipped = tuple(n for n, m in linears if _skipped(n, config.skip))
    for p in config.skip:
        if not any(fnmatchcase(n, p) for n, _ in linears):
            warnings.warn(f"skip pattern {p!r} matches no nn.Linear in the model", stacklevel=2)
    if not targets:
        raise ValueError(f"no nn.Linear left to quantize (skip patterns: {config.skip})")

    if config.backend == "emulate":
        cls = EMULATED_MODULES[config.scheme]
        for name, lin in targets:
            _set_module(model, name, cls.from_linear(lin))
    else:
        _check_torchao_device(config, targets[0][1].weight.device)
        ao_config = _torchao_config(config)
        ao_quantize_ = require("torchao.quantization", "quantize_", purpose="backend='torchao'")

        names = {n for n, _ in targets}
        ao_quantize_(model, ao_config, filter_fn=lambda mod, fqn: fqn in names)
    if config.compile:
        for name, _ in targets:
            model.get_submodule(name).compile()
    model.arvid_quant = QuantRecord(config, tuple(n for n, _ in targets), skipped)
    return model
