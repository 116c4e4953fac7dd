"""Quantized variants on disk, and their size against BF16.

A variant is a directory holding

* ``model.safetensors``: the state dict as stored in memory. A quantized layer ``L`` contributes
  ``L.qweight`` (int8 or float8_e4m3fn ``[out, in]``), ``L.weight_scale`` (float32 ``[out]``, one
  scale per output row) and ``L.bias``; every other tensor keeps its name and dtype.
* ``quant_config.json``: the format version, the scheme and its config, the model config, the
  compute dtype, and per quantized layer its scheme, module class, shape and the names of its
  weight and scale tensors; the layers kept in high precision; the sizes.

The JSON is written last, so a directory without it is incomplete and refused by :func:`load_quantized`.
Only the ``emulate`` backend's modules are saved (torchao's tensor subclasses have their own format).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from arvid.runtime.checkpoint import state_dict_mismatch
from arvid.runtime.config import ModelConfig
from arvid.runtime.files import atomic_write, read_text, removed_on_failure, run_metadata, write_safetensors
from arvid.runtime.model import CausalWanModel

from ._linear import QuantizedLinear
from .api import EMULATED_MODULES, QuantRecord, config_for_scheme, quant_record

FORMAT = "arvid-quant"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quant_config.json"

# What load_quantized reads from quant_config.json, and the JSON type each must have.
_REQUIRED_KEYS = {
    "model_config": dict,
    "compute_dtype": str,
    "quantized_layers": dict,
    "scheme": str,
    "config": dict,
    "layers": list,
    "skipped": list,
}

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def model_size_report(model: nn.Module, *, float_dtype: torch.dtype | None = None) -> dict:
    """Bytes the model holds, against the same parameters all in BF16.

    ``float_dtype``: count the float tensors of the model (the layers left unquantized, biases) as
    stored in that dtype rather than as they are held; quantized weights and their scales (always
    float32) count as they are. ``arvid quality`` runs its reference in float32 on a CPU but reports the size
    of the variant ``arvid quantize`` stores (BF16), so both commands give one number for one model.

    Returns
    -------
    dict with ``stored_bytes`` (every tensor of the state dict as stored), ``bf16_bytes``
    (2 bytes per parameter: the float model in BF16), ``ratio`` (stored / bf16), and the same two
    numbers restricted to the quantized layers (``quantized_layers_bytes``, ``quantized_layers_bf16_bytes``).
    """
    rec = quant_record(model)
    if rec is not None and rec.config.backend != "emulate":
        raise ValueError("sizes are reported for backend='emulate' models (torchao stores tensor subclasses)")
    stored = bf16 = q_stored = q_bf16 = 0
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    for key, t in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        size = t.element_size()
        # fp8 weights (1 byte) and the scales (float32 in any model) are stored as they are
        if float_dtype is not None and t.is_floating_point() and size > 1 and leaf != "weight_scale":
            size = float_dtype.itemsize
        nbytes = t.numel() * size
        stored += nbytes
        if layer in quantized:
            q_stored += nbytes
            if leaf == "weight_scale":  # not a parameter of the float model
                continue
            q_bf16 += 2 * t.numel()
        bf16 += 2 * t.numel()
    return {
        "stored_bytes": stored,
        "bf16_bytes": bf16,
        "ratio": stored / bf16 if bf16 else float("nan"),
        "quantized_layers_bytes": q_stored,
        "quantized_layers_bf16_bytes": q_bf16,
    }


def _compute_dtype(model: nn.Module) -> torch.dtype:
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            return m.compute_dtype
    return next(model.parameters()).dtype


def save_quantized(model: CausalWanModel, directory: str | Path, *, metadata: dict | None = None) -> dict:
    """Write a quantized :class:`CausalWanModel` (``emulate`` backend) to ``directory``.

    Returns
    -------
    The JSON config written (with ``sizes`` including ``file_bytes``, the size of model.safetensors).
    """
    rec = quant_record(model)
    if rec is None:
        raise ValueError("model is not quantized (run arvid.quant.quantize_ first)")
    if rec.config.backend != "emulate":
        raise ValueError(
            "only backend='emulate' models can be saved: quantize with backend='emulate', save, and "
            "quantize again with torchao after loading the float model where the torchao kernels are wanted"
        )
    if not isinstance(getattr(model, "cfg", None), ModelConfig):
        raise ValueError("save_quantized saves a CausalWanModel (it needs model.cfg to rebuild the model)")
    directory = Path(directory)
    layers = {}
    for name in rec.layers:
        mod = model.get_submodule(name)
        layers[name] = {
            "scheme": mod.scheme,
            "module": type(mod).__name__,
            "in_features": mod.in_features,
            "out_features": mod.out_features,
            "bias": mod.bias is not None,
            "weight": f"{name}.qweight",
            "weight_dtype": str(mod.qdtype).removeprefix("torch."),
            "scale": f"{name}.weight_scale",
            "scale_granularity": "per output row",
        }
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    meta = run_metadata(**{"format": FORMAT, "scheme": rec.config.scheme, **(metadata or {})})
    cfg = dataclasses.asdict(model.cfg)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **rec.to_json(),
        "model_config": cfg,
        "compute_dtype": str(_compute_dtype(model)).removeprefix("torch."),
        "quantized_layers": layers,
        "sizes": model_size_report(model),
        "metadata": metadata or {},
    }

    def write_config(tmp_weights: Path) -> None:
        # Inside the weights' write: the config names the weights' size, and when either file cannot
        # be written (full disk) neither is replaced, so a variant there before is kept whole.
        doc["sizes"]["file_bytes"] = tmp_weights.stat().st_size
        atomic_write(directory / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(doc, indent=2)))

    with removed_on_failure(directory):  # a folder made for this variant is not left behind half-filled
        write_safetensors(weights, sd, meta, before_rename=write_config)
    return doc


def read_quant_config(directory: str | Path) -> dict:
    """The ``quant_config.json`` of a saved variant, checked for format and version."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {CONFIG_FILE} (not a saved quantized variant, or an incomplete one)")
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {doc.get('format')!r} version {doc.get('format_version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    for key, kind in _REQUIRED_KEYS.items():
        if not isinstance(doc[key], kind):
            raise ValueError(f"{path}: {key!r} is a {type(doc[key]).__name__}, expected a {kind.__name__}")
    return doc


def _model_config(doc: dict, path: Path) -> ModelConfig:
    """The ``model_config`` entry as a :class:`ModelConfig`, each field checked (names the file and key)."""
    mc = dict(doc["model_config"])
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(mc) - fields)
    if unknown:
        raise ValueError(f"{path}: model_config has unknown key(s) {unknown}")
    for key, value in mc.items():
        if key == "patch_size":
            ok, want = isinstance(value, list) and all(type(v) is int for v in value), "a list of integers"
        elif key == "eps":
            ok, want = type(value) in (int, float), "a number"
        else:
            ok, want = type(value) is int, "an integer"  # type(): a bool is not a size
        if not ok:
            raise ValueError(f"{path}: model_config {key!r} is {value!r}; expected {want}")
    if "patch_size" in mc:
        mc["patch_size"] = tuple(mc["patch_size"])
    try:
        return ModelConfig(**mc)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: model_config: {e}") from None


def load_quantized(directory: str | Path, *, device: torch.device | str = "cpu") -> CausalWanModel:
    """Rebuild a variant written by :func:`save_quantized` (emulate modules, weights as stored)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    doc = read_quant_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{directory}: {WEIGHTS_FILE} is missing")
    cfg = _model_config(doc, directory / CONFIG_FILE)
    if doc["compute_dtype"] not in _DTYPES:
        raise ValueError(f"{directory}: unknown compute dtype {doc['compute_dtype']!r}")
    dtype = _DTYPES[doc["compute_dtype"]]
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    for name, spec in doc["quantized_layers"].items():
        if not isinstance(spec, dict) or not {"scheme", "in_features", "out_features", "bias"} <= set(spec):
            raise ValueError(
                f"{directory / CONFIG_FILE}: quantized layer {name!r} needs scheme, in_features, out_features, bias"
            )
        if spec["scheme"] not in EMULATED_MODULES:
            raise ValueError(f"{directory}: layer {name} has unknown scheme {spec['scheme']!r}")
        cls = EMULATED_MODULES[spec["scheme"]]
        mod = cls(spec["in_features"], spec["out_features"], spec["bias"], dtype=dtype, device="meta")
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{directory}: quantized layer {name!r} is not in the model") from None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, mod)
    try:
        sd = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:  # truncated or not safetensors at all
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
    # Shapes everywhere; dtypes of the quantized tensors (the rest load in the dtype they were saved in).
    problems = state_dict_mismatch(model.state_dict(), sd, dtype_suffixes=(".qweight", ".weight_scale"))
    if problems:
        raise ValueError(f"{weights} does not match {CONFIG_FILE}" + "".join(f"\n  {p}" for p in problems))
    model.load_state_dict(sd, assign=True)
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.compute_dtype = dtype
    skip = doc["config"].get("skip")
    if not isinstance(skip, list) or not all(isinstance(x, str) for x in skip):
        raise ValueError(f"{directory / CONFIG_FILE}: config 'skip' must be a list of patterns, got {skip!r}")
    config = config_for_scheme(doc["scheme"], skip=tuple(skip), backend="emulate")
    model.arvid_quant = QuantRecord(config, tuple(doc["layers"]), tuple(doc["skipped"]))
    return model.eval().requires_grad_(False)
