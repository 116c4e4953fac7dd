"""Checkpoint formats: state dicts from safetensors (single / sharded) and pickles, model configs
from ``config.json``, diffusers -> Wan key names, LongLive's ``longlive_base.pt`` and peft ``lora.pt``."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .files import read_text

# diffusers' WanTransformer3DModel -> original Wan names. Note the swapped norms: diffusers'
# affine `norm2` is Wan's cross-attention `norm3` (Wan's `norm2`/`norm3` of the FFN carry no weights).
_DIFFUSERS_TO_WAN: list[tuple[str, str]] = [
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^blocks\.(\d+)\.attn1\.to_q\.", r"blocks.\1.self_attn.q."),
    (r"^blocks\.(\d+)\.attn1\.to_k\.", r"blocks.\1.self_attn.k."),
    (r"^blocks\.(\d+)\.attn1\.to_v\.", r"blocks.\1.self_attn.v."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.norm_(q|k)\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.to_q\.", r"blocks.\1.cross_attn.q."),
    (r"^blocks\.(\d+)\.attn2\.to_k\.", r"blocks.\1.cross_attn.k."),
    (r"^blocks\.(\d+)\.attn2\.to_v\.", r"blocks.\1.cross_attn.v."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.norm_(q|k)\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
]


def state_dict_mismatch(
    expected: dict[str, torch.Tensor],
    got: dict[str, torch.Tensor],
    *,
    unexpected: bool = True,
    dtype_suffixes: tuple[str, ...] = (),
) -> list[str]:
    """How ``got`` differs from the ``expected`` state dict, one line per kind (empty: it matches).

    Lists missing keys, unexpected keys (unless ``unexpected=False``) and shape mismatches (and
    dtype mismatches for keys ending in ``dtype_suffixes``), the first eight of each.
    """
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected)) if unexpected else []
    wrong = [
        f"{k}: {tuple(got[k].shape)} {got[k].dtype} != {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in got and (got[k].shape != v.shape or (k.endswith(dtype_suffixes) and got[k].dtype != v.dtype))
    ] if dtype_suffixes else [
        f"{k}: {tuple(got[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]  # fmt: skip
    kind = "shape / dtype" if dtype_suffixes else "shape"
    return [
        f"{what} ({len(keys)}): {keys[:8]}"
        for what, keys in (("missing keys", missing), ("unexpected keys", extra), (f"{kind} mismatches", wrong))
        if keys
    ]


def diffusers_to_wan_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``WanTransformer3DModel`` state dict to original Wan names."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _DIFFUSERS_TO_WAN:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    return out


def is_diffusers_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` uses diffusers' ``WanTransformer3DModel`` names (the one place that decides)."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in state_dict)


def to_wan_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` in original Wan names: diffusers names converted, Wan names returned as they are."""
    return diffusers_to_wan_state_dict(state_dict) if is_diffusers_state_dict(state_dict) else state_dict


# -- reading files -------------------------------------------------------------------------------
def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict: ``.safetensors`` (memory-mapped), a sharded ``*.safetensors.index.json``,
    or a ``.pt`` / ``.pth`` / ``.bin`` pickle (memory-mapped where torch can, tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.name.endswith(".index.json"):
        return load_sharded_safetensors(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    sd = torch_load(path)
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    return sd


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))  # memory-mapped: tensors are read when touched
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def torch_load(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only``), memory-mapped
    where the file allows it (legacy non-zip pickles do not)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = refused_global(str(e))
        if refused is not None:  # a pickled callable or class: refused, never executed
            raise ValueError(f"{path}: refused: the file needs the global {refused}; only tensors are loaded") from None
        m = re.search(r"WeightsUnpickler error: \s*([^\n]+)", str(e))
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({m.group(1) if m else 'unpickling failed'})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from None


# torch's weights_only unpickler names the global it refused in one of two wordings: torch >= 2.6
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked." (a blocked module),
# and "Unsupported global: GLOBAL __main__.Foo was not an allowed global by default." (older torch,
# and still for globals outside the blocked modules).
_REFUSED_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def refused_global(message: str) -> str | None:
    """The global (``module.name``) that torch's ``weights_only`` unpickler refused, from its
    ``UnpicklingError`` message, in either wording; ``None`` if the message names none."""
    m = _REFUSED_GLOBAL.search(message)
    return m.group(1).rstrip(".") if m else None


def check_float_weights(state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise unless every tensor of ``state_dict`` is floating point.

    The DiT's weights are float; an integer or bool tensor would be cast silently (an int8 weight
    without its scale is a wrong model, not a lossy one), so it is refused, naming the key.
    """
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            hint = " (a LongLive file of 'generator' / 'generator_ema' / 'model' entries is a longlive_ckpt)"
            raise ValueError(
                f"{source}: {key!r} is a {type(value).__name__}, not a tensor"
                + (hint if isinstance(value, dict) else "")
            )
        if not value.is_floating_point():
            raise ValueError(
                f"{source}: weight {key!r} has dtype {str(value.dtype).removeprefix('torch.')}; "
                "expected floating point (a quantized variant loads with arvid.quant.load_quantized)"
            )


def load_sharded_safetensors(index_path: str | Path) -> dict[str, torch.Tensor]:
    """Read the shards listed in a ``*.safetensors.index.json`` (``weight_map``: key -> shard file)."""
    index_path = Path(index_path)
    try:
        weight_map = json.loads(read_text(index_path))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: not a safetensors index (needs a 'weight_map'): {e}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index_path}: 'weight_map' must map each key to a shard file name")
    folder = Path(os.path.normpath(index_path.parent.absolute()))
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        # A shard is named inside the model folder: an absolute name or a "../x" would read files
        # the index has no business with. Checked on the names, not on resolved links: a Hugging
        # Face cache snapshot links every shard to ../../blobs/, and those links are the folder's own.
        lexical = Path(os.path.normpath(folder / shard))
        if Path(shard).is_absolute() or lexical == folder or not lexical.is_relative_to(folder):
            raise ValueError(f"{index_path}: shard {shard!r} is outside the model folder {index_path.parent}")
        if not shard_path.is_file():
            raise ValueError(f"{index_path}: shard {shard} does not exist")
        part = _read_safetensors(shard_path)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(part) != listed:
            extra, absent = sorted(set(part) - listed), sorted(listed - set(part))
            raise ValueError(
                f"{shard_path}: keys disagree with {index_path.name}"
                + (f"; not in the index: {extra[:8]}" if extra else "")
                + (f"; missing from the shard: {absent[:8]}" if absent else "")
            )
        sd.update(part)
    return sd


# -- configs -------------------------------------------------------------------------------------
# Wan's WanModel defaults for what its config.json may leave out (wan/modules/model.py); they equal
# the ModelConfig defaults. dim / ffn_dim / num_heads / num_layers have no safe default: required.
_WAN_OPTIONAL = {"freq_dim": 256, "text_dim": 4096, "text_len": 512, "in_dim": 16, "out_dim": 16}


def model_config_from_json(path: str | Path) -> ModelConfig:
    """The DiT sizes from a Wan ``config.json`` (``dim``, ``num_heads``, ...) or a diffusers
    ``transformer/config.json`` (``num_attention_heads``, ``attention_head_dim``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model config {path} does not exist")
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")

    def need(key: str) -> Any:
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r}")
        return raw[key]

    def integer(key: str, default: int | None = None) -> int:
        # JSON integers only: int("big") would be a traceback without the file, int(1.5) a silent 1.
        value = need(key) if default is None else raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: {key!r} is {value!r}; expected an integer")
        return value

    if raw.get("model_type", "t2v") != "t2v":
        raise ValueError(f"{path}: model_type {raw['model_type']!r} is not supported (text-to-video 't2v' only)")
    diffusers = "num_attention_heads" in raw or raw.get("_class_name") == "WanTransformer3DModel"
    if diffusers:
        for key in ("image_dim", "added_kv_proj_dim"):
            if raw.get(key) is not None:
                raise ValueError(f"{path}: {key} = {raw[key]} marks an image-to-video model (text-to-video only)")
        if raw.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
            raise ValueError(f"{path}: qk_norm {raw['qk_norm']!r} is not supported (rms_norm_across_heads)")
        if raw.get("cross_attn_norm", True) is not True:
            raise ValueError(f"{path}: cross_attn_norm must be true")
        heads, head_dim = integer("num_attention_heads"), integer("attention_head_dim")
        kw = dict(
            dim=heads * head_dim,
            ffn_dim=integer("ffn_dim"),
            num_heads=heads,
            num_layers=integer("num_layers"),
            freq_dim=integer("freq_dim", _WAN_OPTIONAL["freq_dim"]),
            text_dim=integer("text_dim", _WAN_OPTIONAL["text_dim"]),
            in_dim=integer("in_channels", _WAN_OPTIONAL["in_dim"]),
            out_dim=integer("out_channels", _WAN_OPTIONAL["out_dim"]),
        )
    else:
        for key, want in (("qk_norm", True), ("cross_attn_norm", True)):
            if raw.get(key, want) is not want:
                raise ValueError(f"{path}: {key} must be {str(want).lower()}")
        kw = {k: integer(k) for k in ("dim", "ffn_dim", "num_heads", "num_layers")}
        kw.update({k: integer(k, v) for k, v in _WAN_OPTIONAL.items()})
    if "patch_size" in raw:
        patch = raw["patch_size"]
        if not (isinstance(patch, list) and all(isinstance(q, int) and not isinstance(q, bool) for q in patch)):
            raise ValueError(f"{path}: 'patch_size' is {patch!r}; expected a list of integers")
        kw["patch_size"] = tuple(patch)
    if "eps" in raw:
        if isinstance(raw["eps"], bool) or not isinstance(raw["eps"], int | float):
            raise ValueError(f"{path}: 'eps' is {raw['eps']!r}; expected a number")
        kw["eps"] = float(raw["eps"])
    try:
        return ModelConfig(**kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


# -- LongLive checkpoints ------------------------------------------------------------------------
LONGLIVE_WEIGHTS = ("auto", "generator", "generator_ema", "model")
_PREFIXES = ("_fsdp_wrapped_module.", "_orig_mod.", "module.", "model.")


def strip_prefixes(state_dict: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes: FSDP's ``_fsdp_wrapped_module.`` anywhere in a key, and a leading
    ``model.`` (LongLive's ``WanDiffusionWrapper.model``), ``module.`` (DDP) or ``_orig_mod.`` (compile).

    Two keys that become one (``model.x`` beside ``x``) are an error naming ``source``: the loader
    stays strict after stripping, and which of the two was meant is not ours to guess.
    """
    out: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    for key0, value in state_dict.items():
        key = key0
        key = key.replace("_fsdp_wrapped_module.", "")
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES[1:]:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        if key in out:
            raise ValueError(
                f"{source}: keys {original[key]!r} and {key0!r} both name {key!r} once prefixes are stripped"
            )
        out[key], original[key] = value, key0
    return out


def is_flat_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a state dict itself (a non-empty dict of tensors), not a dict of entries."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_longlive_state_dict(path: str | Path, weights: str = "auto") -> dict[str, torch.Tensor]:
    """The DiT weights in LongLive's ``longlive_base.pt``, prefixes stripped.

    Parameters
    ----------
    weights : which entry to take. ``"auto"`` (default) takes ``generator`` when present -- what
        LongLive's shipped inference configs load (``use_ema: false``) -- else ``generator_ema``,
        else ``model``. ``"generator_ema"`` is LongLive's ``use_ema: true``. With ``"auto"``, a file
        that is a flat state dict itself (keys such as ``model.blocks.0...``, as saved from one
        entry) is taken whole.
    """
    if weights not in LONGLIVE_WEIGHTS:
        raise ValueError(f"unknown LongLive weights {weights!r}; choose one of {list(LONGLIVE_WEIGHTS)}")
    path = Path(path)
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict with 'generator' / 'generator_ema' / 'model'")
    entries = [k for k in LONGLIVE_WEIGHTS[1:] if isinstance(ckpt.get(k), dict)]
    if weights == "auto" and not entries and is_flat_state_dict(ckpt):
        return strip_prefixes(ckpt, path)
    if weights == "auto":
        if not entries:
            raise ValueError(
                f"{path}: no 'generator', 'generator_ema' or 'model' entry (top-level keys: {sorted(ckpt)[:8]})"
            )
        weights = entries[0]
    elif weights not in entries:
        raise ValueError(f"{path}: no {weights!r} entry (it has: {entries or sorted(ckpt)[:8]})")
    return strip_prefixes(ckpt[weights], path)


# -- LoRA ----------------------------------------------------------------------------------------
@dataclass
class LoRA:
    """LoRA factors per base Linear: ``name -> (A [r, in], B [out, r])``, and alpha if the file had it."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float | None
    path: Path


def _lora_alpha(value: Any, where: str) -> float:
    """A LoRA alpha as a finite positive float; a string, bool or tensor of several values is an error
    (``"256"`` read as "no alpha" would silently change the merge scale)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} is {value!r} ({type(value).__name__}); expected a number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where} is {value!r}; expected a finite number > 0")
    return float(value)


_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def load_lora(path: str | Path) -> LoRA:
    """Read a peft LoRA state dict: LongLive's ``lora.pt`` (``{"generator_lora": ..., "critic_lora": ...}``)
    or a bare ``get_peft_model_state_dict`` output (``.pt`` or ``.safetensors``), keys such as
    ``base_model.model.blocks.0.self_attn.q.lora_A.weight`` (an adapter name before ``.weight`` is allowed).
    Alpha is taken from a ``lora_alpha`` / ``alpha`` entry of the file or an ``adapter_config.json``
    beside it, where present."""
    path = Path(path)
    raw = load_state_dict(path)
    alpha = None
    for key in ("lora_alpha", "alpha"):
        if key in raw:
            alpha = _lora_alpha(raw[key], f"{path}: {key!r}")
    if isinstance(raw.get("generator_lora"), dict):
        raw = raw["generator_lora"]
    cfg_file = path.with_name("adapter_config.json")
    if alpha is None and cfg_file.is_file():
        try:
            value = json.loads(read_text(cfg_file))["lora_alpha"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg_file}: cannot read 'lora_alpha' ({e})") from None
        alpha = _lora_alpha(value, f"{cfg_file}: 'lora_alpha'")

    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        if key in ("lora_alpha", "alpha") or not isinstance(value, torch.Tensor):
            continue
        name = key.replace("_fsdp_wrapped_module.", "")
        for prefix in ("base_model.model.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        m = _LORA_KEY.match(name)
        if m is None:
            raise ValueError(
                f"{path}: key {key!r} is not a LoRA factor (expected '<module>.lora_A.weight' / 'lora_B.weight'; "
                "DoRA, LoRA biases and embedding adapters are not supported)"
            )
        halves.setdefault(m["module"], {})[m["ab"]] = value
    if not halves:
        raise ValueError(f"{path}: no LoRA factors found")
    factors, ranks = {}, set()
    for module, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise ValueError(f"{path}: {module}.{missing}.weight is missing")
        a, b = ab["A"], ab["B"]
        if not (a.is_floating_point() and b.is_floating_point()):
            raise ValueError(
                f"{path}: {module}: LoRA factors have dtype {a.dtype} / {b.dtype}; expected floating point"
            )
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{path}: {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not [r, in] and [out, r]"
            )
        ranks.add(a.shape[0])
        factors[module] = (a, b)
    if len(ranks) != 1:
        raise ValueError(f"{path}: LoRA factors have different ranks {sorted(ranks)}; expected one rank")
    return LoRA(factors, ranks.pop(), alpha, path)


@torch.no_grad()
def merge_lora_(model: nn.Module, lora: LoRA, *, alpha: float | None = None, rank: int | None = None) -> float:
    """Merge ``W += (alpha / rank) * B @ A`` into the model's Linear weights, in place (float32 sums,
    rounded once to the weight's dtype). Returns the scale used.

    Parameters
    ----------
    alpha : overrides the file's alpha; with neither, alpha = rank (scale 1, LongLive's 256 / 256).
    rank : the expected rank; a file of another rank is an error.
    """
    if rank is not None and rank != lora.rank:
        raise ValueError(f"{lora.path}: LoRA rank mismatch: the file has rank {lora.rank}, expected {rank}")
    alpha = alpha if alpha is not None else lora.alpha if lora.alpha is not None else float(lora.rank)
    scale = alpha / lora.rank
    modules = dict(model.named_modules())
    problems = []
    for name, (a, b) in lora.factors.items():
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            problems.append(f"{name}: no such Linear layer in the model")
        elif tuple(layer.weight.shape) != (b.shape[0], a.shape[1]):
            problems.append(f"{name}: B @ A is {(b.shape[0], a.shape[1])}, the weight is {tuple(layer.weight.shape)}")
    if problems:
        raise ValueError(f"{lora.path}: LoRA does not fit the model ({len(problems)}): {problems[:8]}")
    for name, (a, b) in lora.factors.items():
        w = modules[name].weight
        delta = b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)
        w.copy_((w.float() + scale * delta).to(w.dtype))
    return scale
