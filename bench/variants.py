"""The variants one ``arvid bench`` run times: ``BACKEND[+FLAG...]`` or ``BACKEND@DIR`` parsed, checked
before any model loads, and the model each one runs (the float model, a copy quantized here per
scheme, or a model saved by ``arvid quantize``).

The variant grammar itself (``BACKEND[+FLAG...]``) is :mod:`arvid.runtime.variants`'; what is added
here is the bench's ``@DIR`` and the rule that a CUDA timing of a quantized variant must run real
low-precision kernels.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from arvid.runtime import GeneratorOptions
from arvid.runtime.model import CausalWanModel
from arvid.runtime.variants import QUANT_FLAGS


def split_variant(spec: str) -> tuple[str, str | None]:
    """``"sdpa@out/int8"`` -> ``("sdpa", "out/int8")``: the generator variant and a saved quantized model."""
    variant, sep, directory = spec.partition("@")
    if sep and not directory:
        raise ValueError(f"variant {spec!r}: no directory after '@' (BACKEND@DIR, a model written by arvid quantize)")
    return variant, directory or None


def torchao_missing() -> str | None:
    """Why torchao's kernels cannot be used here (its import error), or None."""
    try:
        import torchao  # noqa: F401
    except Exception as e:  # an ImportError, or a torchao built for another torch failing at import
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def check_variants(backends: list[str], device: torch.device | None = None) -> None:
    """Each variant string parses and is named once (a repeat would merge two runs into one record);
    a ``@DIR`` names a directory written by ``arvid quantize``.

    On CUDA a quantized variant must run real low-precision kernels: arvid's emulation multiplies in
    float32 (``quant/fp8.py`` even rebuilds a float32 weight per call), so timing it would pass an
    fp32 GEMM off as ``+int8`` / ``+fp8``. Without torchao, and for saved (emulated) models, refused.
    """
    from arvid.quant.serialize import read_quant_config

    for spec in backends:
        variant, directory = split_variant(spec)
        opts = GeneratorOptions.from_variant(variant)
        if directory is not None:
            if opts.quant is not None:
                raise ValueError(f"variant {spec!r}: a saved model is already quantized; drop +{opts.quant}")
            if not Path(directory).is_dir():
                raise FileNotFoundError(f"variant {spec!r}: {directory} is not a directory")
            read_quant_config(directory)
            if device is not None and device.type == "cuda":
                raise ValueError(
                    f"variant {spec!r}: a saved model runs arvid's float32 emulation, not a quantized kernel, so "
                    f"its CUDA timing would not be the variant's; time {variant}+<int8|int8wo|fp8> (torchao) instead"
                )
        elif opts.quant is not None and device is not None and device.type == "cuda":
            missing = torchao_missing()
            if missing:
                raise ValueError(
                    f"variant {spec!r} on CUDA needs torchao's kernels (arvid's emulation would time a float32 "
                    f"GEMM as +{opts.quant}); torchao does not import ({missing}): pip install 'arvid[quant]'"
                )
    twice = sorted({b for b in backends if backends.count(b) > 1})
    if twice:
        raise ValueError(f"variant(s) {', '.join(twice)} named more than once: each variant runs once per round")


def quantized_copy(model: CausalWanModel, scheme: str, device: torch.device) -> tuple[CausalWanModel, dict]:
    """A quantized copy of ``model``: torchao's kernels on CUDA, arvid's emulation on the CPU."""
    from arvid.quant import config_for_scheme, quantize_

    backend = "torchao" if device.type == "cuda" else "emulate"  # check_variants refused CUDA without torchao
    quantized = quantize_(copy.deepcopy(model), config_for_scheme(scheme, backend=backend))
    return quantized, {"scheme": scheme, "backend": backend, "source": "quantized in-process"}


def variant_models(
    backends: list[str], model: CausalWanModel, device: torch.device
) -> tuple[dict[str, CausalWanModel], dict[str, dict | None]]:
    """The model each variant runs, and how it was quantized (None for the float model).

    Parameters
    ----------
    backends : variant strings, already passed by :func:`check_variants`.
    model : the float model every variant without ``+<quant>`` or ``@DIR`` runs as it is.
    device : where the quantized copies and the saved models go.

    Returns
    -------
    ``(models, quant)``, both keyed by variant string. One quantized copy is made per scheme and shared
    by the variants that name it (``sdpa+int8`` and ``triton+int8`` time the same weights); ``quant``
    records ``scheme``, ``backend`` (``torchao`` / ``emulate``) and ``source`` (a directory, or
    ``"quantized in-process"``).
    """
    from arvid.quant.serialize import load_quantized

    models: dict[str, CausalWanModel] = {}
    quant_info: dict[str, dict | None] = {}
    by_scheme: dict[str, tuple[CausalWanModel, dict]] = {}
    for spec in backends:
        variant, directory = split_variant(spec)
        opts = GeneratorOptions.from_variant(variant)
        if directory is not None:
            saved = load_quantized(directory, device=device)
            if saved.cfg != model.cfg:
                raise ValueError(f"variant {spec!r}: {directory} was quantized from another model config")
            models[spec] = saved
            quant_info[spec] = {"scheme": saved.arvid_quant.config.scheme, "backend": "emulate", "source": directory}
        elif opts.quant is not None:
            scheme = QUANT_FLAGS[opts.quant]
            if scheme not in by_scheme:
                by_scheme[scheme] = quantized_copy(model, scheme, device)
            models[spec], quant_info[spec] = by_scheme[scheme]
        else:
            models[spec], quant_info[spec] = model, None
    return models, quant_info
