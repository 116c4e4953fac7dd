"""The nvidia-modelopt path: INT8 SmoothQuant and calibrated FP8, fake-quantized for ONNX Q/DQ export.

``calibrate_modelopt(model, "int8-smoothquant" | "fp8", forward_loop)`` runs
``mtq.quantize(model, mtq.INT8_SMOOTHQUANT_CFG / mtq.FP8_DEFAULT_CFG, forward_loop)``: modelopt
swaps the model's ``nn.Linear`` layers for its ``QuantLinear`` (weights keep their names and
dtype), runs ``forward_loop`` to collect activation ranges, and leaves fake quantizers (Q/DQ)
that the export work turns into a Q/DQ ONNX graph. These are *static* (calibrated) schemes:
SmoothQuant migrates activation outliers into the weights with per-channel factors, then INT8
per-channel weights and per-tensor activations; modelopt's FP8 default is per-tensor e4m3 for
weights and activations with amax calibration. They differ from the dynamic schemes of
:func:`arvid.quant.quantize_`.

Only linear layers are quantized here, minus the ``skip`` patterns (same default as quantize_):
modelopt's default configs would also put input quantizers on LayerNorm and Conv3d modules.
nvidia-modelopt is imported lazily; where it is missing the call says so.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from arvid.runtime.config import StreamConfig
from arvid.runtime.optional import require
from arvid.runtime.variants import GeneratorOptions

from .api import DEFAULT_SKIP

_log = logging.getLogger(__name__)

MODELOPT_SCHEMES = ("int8-smoothquant", "fp8")


def _mtq():
    return require("modelopt.torch.quantization", purpose="the modelopt path")


def modelopt_config(scheme: str, skip: Sequence[str] = DEFAULT_SKIP) -> dict:
    """modelopt's config for ``scheme`` with the skip patterns and non-linear modules disabled."""
    mtq = _mtq()
    if scheme not in MODELOPT_SCHEMES:
        raise ValueError(f"unknown modelopt scheme {scheme!r}; choose one of {MODELOPT_SCHEMES}")
    base = mtq.INT8_SMOOTHQUANT_CFG if scheme == "int8-smoothquant" else mtq.FP8_DEFAULT_CFG
    cfg = copy.deepcopy(base)
    # Later entries override earlier ones (modelopt's set_quantizer_by_cfg): these come last.
    cfg["quant_cfg"] = [
        *cfg["quant_cfg"],
        *({"quantizer_name": f"{p}.*", "enable": False} for p in skip),
        {"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False},
        {"quantizer_name": "*", "parent_class": "nn.Conv3d", "enable": False},
    ]
    return cfg


def streaming_forward_loop(
    prompts: Sequence[torch.Tensor],
    *,
    latent_size: tuple[int, int],
    frames: int = 6,
    stream: StreamConfig | None = None,
    seed: int = 0,
    backend: str | None = None,  # a variant string (e.g. "sdpa", "triton+graphs"); None: the default
) -> Callable[[nn.Module], None]:
    """A calibration ``forward_loop``: per prompt, ``frames`` latent frames of streaming generation
    (every denoising step, the clean-context update and the cache, as at inference), each prompt
    with its own seeded noise.

    Parameters
    ----------
    prompts : embeddings ``[1, text_len, text_dim]``, one per calibration prompt.
    """

    def loop(model: nn.Module) -> None:
        opts = GeneratorOptions.from_variant(backend) if backend else GeneratorOptions()
        gen = opts.build(model, stream, latent_size=latent_size)
        for i, p in enumerate(prompts):
            g = torch.Generator().manual_seed(seed + i)
            noise = torch.randn(1, frames, model.cfg.in_dim, *latent_size, generator=g)
            renoise = torch.Generator(device=gen.device).manual_seed(seed + 1000 + i)
            gen.generate(noise, [p], generator=renoise)

    return loop


def calibrate_modelopt(
    model: nn.Module,
    scheme: str,
    forward_loop: Callable[[nn.Module], None],
    *,
    skip: Sequence[str] = DEFAULT_SKIP,
) -> nn.Module:
    """Fake-quantize ``model`` in place with modelopt, calibrating on ``forward_loop``.

    Returns
    -------
    The model modelopt returns (the same object, its linears now ``QuantLinear``), with
    ``arvid_modelopt = {"scheme", "skip", "quantized_layers"}`` set on it.
    """
    mtq = _mtq()
    cfg = modelopt_config(scheme, skip)
    chatter = io.StringIO()
    # modelopt prints its progress ("Inserted 95 quantizers", "Smoothed 20 modules") on stdout, where a
    # command's results go, --quiet or not: it goes to the log instead (logger arvid.quant.calibrate).
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        # SmoothQuant warns for every disabled (skipped) layer that it was not calibrated.
        warnings.filterwarnings("ignore", message=".*is not calibrated, skip smoothing")
        model = mtq.quantize(model, cfg, forward_loop)
    for line in chatter.getvalue().splitlines():
        if line.strip():
            _log.info("modelopt: %s", line.strip())
    layers = tuple(
        name
        for name, mod in model.named_modules()
        if getattr(getattr(mod, "weight_quantizer", None), "is_enabled", False)
    )
    model.arvid_modelopt = {"scheme": scheme, "skip": list(skip), "quantized_layers": list(layers)}
    return model
