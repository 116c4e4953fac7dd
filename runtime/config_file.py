"""Run configuration files (``--config run.yaml`` / ``.json``): arvid's own keys and LongLive's inference YAML.

:func:`read_config_file` reads the file into a flat ``{key: value}`` of arvid keys: arvid's own keys
(the command-line flag names, dashes or underscores: ``chunk-frames``, ``sink_frames``, ``prompt``)
pass through; LongLive's inference keys (``configs/longlive_inference.yaml`` and
``longlive_interactive_inference.yaml``) are mapped by :data:`LONGLIVE_KEYS`; LongLive keys that do not
apply to arvid are listed in :data:`LONGLIVE_IGNORED` with the reason, and dropped. Which arvid keys a
command takes is the command line's business (``arvid/commands/_common.py``): this module knows no flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .files import read_text

#: LongLive inference key -> arvid key (the flag's name with underscores). ``model_kwargs.*`` and
#: ``adapter.*`` are LongLive's nested sections.
LONGLIVE_KEYS: dict[str, str] = {
    "num_frame_per_block": "chunk_frames",
    "denoising_step_list": "denoising_steps",
    "model_kwargs.local_attn_size": "attention_frames",  # sink + window, the current chunk included
    "model_kwargs.sink_size": "sink_frames",
    "model_kwargs.timestep_shift": "shift",
    "context_noise": "context_noise",
    "global_sink": "global_sink",
    "switch_frame_indices": "switch_frames",
    "data_path": "data_path",  # interactive: --prompts (JSONL); generate: --prompt-file (one prompt a line)
    "num_output_frames": "frames",
    "seed": "seed",
    "generator_ckpt": "longlive_ckpt",
    "lora_ckpt": "lora",
    "adapter.rank": "lora_rank",
    "adapter.alpha": "lora_alpha",
    "use_ema": "longlive_weights",  # false -> generator, true -> generator_ema
    "output_folder": "out_dir",
}

#: LongLive keys accepted and ignored, with why they do not apply.
LONGLIVE_IGNORED: dict[str, str] = {
    "model_name": "the DiT's sizes come from --model's config.json (or --preset)",
    "inference_iter": "arvid runs the prompts it is given",
    "num_samples": "one video per prompt schedule",
    "save_with_index": "output names are --out, or --out-dir/NNNN.mp4",
    "warp_denoising_step": "arvid always warps the step list (true is the only value accepted)",
    "adapter.type": "arvid merges peft LoRA ('lora' is the only value accepted)",
    "adapter.dropout": "no dropout at inference",
    "adapter.dtype": "the LoRA is merged into the DiT's weights, which take --dtype",
    "adapter.verbose": "logging only",
    "model_kwargs.use_infinite_attention": "the ring-buffer KV cache streams any length already",
}

_SECTIONS = ("model_kwargs", "adapter")


def read_config_file(path: str | Path) -> dict[str, tuple[Any, str]]:
    """``{arvid key: (value, the file's key)}`` of a YAML or JSON run configuration (see the module docstring).

    Values keep their YAML / JSON types (``denoising_steps`` a list, ``global_sink`` a bool); the
    caller converts them as its flags do. Raises ``FileNotFoundError`` for a missing file and a one-line
    ``ValueError`` naming the file for a bad one (unreadable, not a mapping, a key given twice, a
    LongLive value arvid does not support).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = read_text(path, "--config")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ValueError(f"--config {path}: use a .yaml, .yml or .json file")
    except (json.JSONDecodeError, ImportError) as e:
        raise ValueError(f"--config {path}: not readable ({_one_line(e)})") from None
    except Exception as e:  # yaml.YAMLError: its message spans lines; keep the error on one
        if type(e).__module__.startswith("yaml"):
            raise ValueError(f"--config {path}: not valid YAML ({_one_line(e)})") from None
        raise
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a mapping of keys to values")
    out: dict[str, tuple[Any, str]] = {}

    def put(key: str, value: Any, source: str) -> None:
        if key in out:
            raise ValueError(f"--config {path}: {out[key][1]} and {source} both set {key}")
        out[key] = (value, source)

    for key, value in data.items():
        key = str(key)
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"--config {path}: {key} must be a mapping (LongLive's {key} section)")
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for name, v in items:
            if name in LONGLIVE_IGNORED:
                _check_ignored(path, name, v)
            elif name in LONGLIVE_KEYS:
                put(LONGLIVE_KEYS[name], _longlive_value(name, v), name)
            elif "." in name:
                raise ValueError(f"--config {path}: unknown key {name} in LongLive's {name.split('.')[0]} section")
            else:
                put(key.replace("-", "_"), v, key)
    return out


def _longlive_value(name: str, value: Any) -> Any:
    if name == "use_ema" and isinstance(value, bool):
        return "generator_ema" if value else "generator"
    return value


def _check_ignored(path: Path, name: str, value: Any) -> None:
    """Ignored keys whose other values would change the result: refuse those rather than ignore them."""
    if name == "warp_denoising_step" and value is not True:
        raise ValueError(f"--config {path}: warp_denoising_step {value!r}: arvid always warps the denoising steps")
    if name == "adapter.type" and str(value).lower() != "lora":
        raise ValueError(f"--config {path}: adapter type {value!r}: arvid merges peft LoRA only")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
