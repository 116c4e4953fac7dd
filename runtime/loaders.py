"""Model directories and the DiT loader: Wan2.1's original layout, the diffusers layout, LongLive's
``longlive_base.pt`` on top, a peft LoRA merged in.

Layouts recognised (``find_model_files``):

- original Wan2.1 (``Wan-AI/Wan2.1-T2V-1.3B``): ``config.json``, ``diffusion_pytorch_model.safetensors``
  (or shards with ``diffusion_pytorch_model.safetensors.index.json``), ``Wan2.1_VAE.pth``,
  ``models_t5_umt5-xxl-enc-bf16.pth``, tokenizer in ``google/umt5-xxl/``;
- diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    check_float_weights,
    load_longlive_state_dict,
    load_lora,
    load_state_dict,
    merge_lora_,
    model_config_from_json,
    strip_prefixes,
    to_wan_names,
)
from .config import ModelConfig
from .model import CausalWanModel, build_model

WAN_DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
WAN_VAE_FILE = "Wan2.1_VAE.pth"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"


@dataclass(frozen=True)
class ModelFiles:
    """Where the pieces of a model directory are (``None``: not in this directory)."""

    root: Path
    layout: str  # "wan" or "diffusers"
    dit_config: Path
    dit_weights: Path  # a .safetensors file or a .safetensors.index.json
    vae: Path | None  # Wan2.1_VAE.pth, or a diffusers vae/ directory
    text_encoder: Path | None  # models_t5_umt5-xxl-enc-bf16.pth, or a diffusers text_encoder/ directory
    tokenizer: Path | None  # a tokenizer directory


def _dit_weights(folder: Path) -> Path | None:
    for name in (WAN_DIT_WEIGHTS, WAN_DIT_WEIGHTS + ".index.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_model_files(root: str | Path) -> ModelFiles:
    """Recognise a Wan2.1 model directory (original or diffusers layout); a clear error otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"model directory {root} does not exist")
    tr = root / "transformer"
    if tr.is_dir():
        weights = _dit_weights(tr)
        if not (tr / "config.json").is_file() or weights is None:
            raise ValueError(
                f"{tr}: a diffusers transformer folder needs config.json and {WAN_DIT_WEIGHTS} "
                f"(or {WAN_DIT_WEIGHTS}.index.json with its shards)"
            )

        def sub(name: str) -> Path | None:  # a diffusers component folder, if present
            return root / name if (root / name / "config.json").is_file() else None

        tok = root / "tokenizer"
        return ModelFiles(
            root, "diffusers", tr / "config.json", weights, sub("vae"), sub("text_encoder"),
            tok if tok.is_dir() else None,
        )  # fmt: skip
    weights = _dit_weights(root)
    if (root / "config.json").is_file() and weights is not None:

        def opt(p: Path) -> Path | None:
            return p if p.exists() else None

        return ModelFiles(
            root, "wan", root / "config.json", weights, opt(root / WAN_VAE_FILE), opt(root / WAN_T5_FILE),
            opt(root / WAN_TOKENIZER_DIR),
        )  # fmt: skip
    raise ValueError(
        f"{root} is not a Wan2.1 model directory: expected config.json + {WAN_DIT_WEIGHTS} (original layout) "
        "or transformer/ (diffusers layout)"
    )


def read_dit_state_dict(files: ModelFiles) -> dict[str, torch.Tensor]:
    """The DiT weights of a model directory in Wan's names (diffusers names converted)."""
    return to_wan_names(load_state_dict(files.dit_weights))


def weights_label(
    *,
    model_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    longlive_ckpt: str | Path | None = None,
    lora: str | Path | None = None,
    seed: int = 0,
) -> str:
    """Where :func:`load_dit`'s weights came from, for reports and metadata: the last of ``model_dir``,
    ``checkpoint``, ``longlive_ckpt`` given (each replaces the one before), else random weights."""
    sources = [model_dir, checkpoint, longlive_ckpt]
    label = next((str(x) for x in reversed(sources) if x), f"random weights, seed {seed}")
    return label + (f" + LoRA {lora}" if lora else "")


def load_dit(
    *,
    model_dir: str | Path | None = None,
    config: ModelConfig | None = None,
    checkpoint: str | Path | None = None,
    longlive_ckpt: str | Path | None = None,
    longlive_weights: str = "auto",
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    lora_rank: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> CausalWanModel:
    """Build the DiT from the given sources, strictly (missing / unexpected / mis-shaped keys are errors).

    The config comes from ``model_dir``'s config.json, else ``config``. The weights come from the
    last of ``model_dir`` < ``checkpoint`` (Wan- or diffusers-named file) < ``longlive_ckpt``
    (``longlive_base.pt``, or a flat state dict) that is given; with none, random weights
    (``seed``). Wrapper prefixes (LongLive's ``model.``, FSDP's ``_fsdp_wrapped_module.``) are
    stripped from ``checkpoint`` and ``longlive_ckpt`` keys; every weight must be floating point.
    ``lora`` is merged into the weights afterwards: ``W += (alpha / rank) * B @ A``.
    """
    files = find_model_files(model_dir) if model_dir is not None else None
    if files is not None:
        config = model_config_from_json(files.dit_config)
    if config is None:
        raise ValueError("load_dit needs a model directory or a ModelConfig")
    source, sd = None, None
    if longlive_ckpt is not None:
        source, sd = longlive_ckpt, load_longlive_state_dict(longlive_ckpt, longlive_weights)
    elif checkpoint is not None:
        # LongLive's `model.` / FSDP's `_fsdp_wrapped_module.` wrappers are stripped; the load stays strict.
        source, sd = checkpoint, to_wan_names(strip_prefixes(load_state_dict(checkpoint), checkpoint))
    elif files is not None:
        source, sd = files.dit_weights, read_dit_state_dict(files)
    if sd is not None:
        check_float_weights(sd, source)  # before build_model's cast would hide an int weight
    factors = load_lora(lora) if lora is not None else None  # read (and check) before the big build
    try:
        model = build_model(config, device=device, dtype=dtype, state_dict=sd, seed=seed)
    except ValueError as e:
        if source is not None:
            raise ValueError(f"{source}: {e}") from None
        raise
    if factors is not None:
        merge_lora_(model, factors, alpha=lora_alpha, rank=lora_rank)
    return model
