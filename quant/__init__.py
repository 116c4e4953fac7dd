"""INT8 / FP8 variants of the DiT and the validation of their quality loss against the reference.

``quantize_(model, Int8Config(...))`` / ``quantize_(model, Fp8Config(...))`` in torchao's style;
:mod:`.serialize` saves and loads variants; :mod:`.calibrate` is the nvidia-modelopt path
(SmoothQuant INT8, calibrated FP8); :mod:`.quality` and :mod:`.metrics` measure the loss.
"""

if __name__ != "arvid.quant":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)
else:
    from .api import (
        DEFAULT_SKIP,
        Fp8Config,
        Int8Config,
        MissingDependencyError,
        QuantRecord,
        check_no_unmerged_lora,
        config_for_scheme,
        quant_record,
        quantize_,
    )
    from .fp8 import Fp8EmulatedLinear
    from .int8 import Int8DynamicLinear, Int8WeightOnlyLinear
    from .serialize import load_quantized, model_size_report, save_quantized

    __all__ = [
        "DEFAULT_SKIP",
        "Fp8Config",
        "Fp8EmulatedLinear",
        "Int8Config",
        "Int8DynamicLinear",
        "Int8WeightOnlyLinear",
        "MissingDependencyError",
        "QuantRecord",
        "check_no_unmerged_lora",
        "config_for_scheme",
        "load_quantized",
        "model_size_report",
        "quant_record",
        "quantize_",
        "save_quantized",
    ]
