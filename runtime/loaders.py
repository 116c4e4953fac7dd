"""Where the weights come from (:class:`WeightSource`, resolved once) and the loaders of the DiT, the
text encoder and the VAE: Wan2.1's original layout, the diffusers layout, LongLive's
``longlive_base.pt`` on top, a peft LoRA merged in.

Layouts recognised (``find_model_files``):

- original Wan2.1 (``Wan-AI/Wan2.1-T2V-1.3B``): ``config.json``, ``diffusion_pytorch_model.safetensors``
  (or shards with ``diffusion_pytorch_model.safetensors.index.json``), ``Wan2.1_VAE.pth``,
  ``models_t5_umt5-xxl-enc-bf16.pth``, tokenizer in ``google/umt5-xxl/``;
- diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

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
from .config import ModelConfig, Preset, get_preset
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


@dataclass(frozen=True)
class WeightSource:
    """Where the DiT's weights come from: one object, its model directory resolved once (:attr:`files`).

    The weights are those of the last of ``model_dir`` < ``checkpoint`` (Wan- or diffusers-named file)
    < ``longlive_ckpt`` (``longlive_base.pt``, entry ``longlive_weights``, or a flat state dict) that
    is given; with none, random weights drawn with ``seed``. ``lora`` (rank ``lora_rank`` checked
    where given, ``lora_alpha`` else the file's) is merged in afterwards. The text encoder and the
    VAE come from ``model_dir`` (the tiny preset's random ones without it).
    """

    model_dir: str | os.PathLike | None = None
    checkpoint: str | os.PathLike | None = None
    longlive_ckpt: str | os.PathLike | None = None
    longlive_weights: str = "auto"
    lora: str | os.PathLike | None = None
    lora_alpha: float | None = None
    lora_rank: int | None = None
    seed: int = 0

    @cached_property
    def files(self) -> ModelFiles | None:
        """The model directory's files (None without ``model_dir``); found once, then kept."""
        return find_model_files(self.model_dir) if self.model_dir is not None else None

    @property
    def label(self) -> str:
        """Where the weights came from, for reports and metadata: the last of ``model_dir``,
        ``checkpoint``, ``longlive_ckpt`` given (each replaces the one before), else random weights."""
        model_dir = Path(self.model_dir) if self.model_dir is not None else None  # as the directory is found
        sources = [model_dir, self.checkpoint, self.longlive_ckpt]
        label = next((str(x) for x in reversed(sources) if x), f"random weights, seed {self.seed}")
        return label + (f" + LoRA {self.lora}" if self.lora else "")

    def preset(self, name: str | None = None) -> Preset:
        """The preset ``name`` (default: ``wan2.1-t2v-1.3b`` with a model directory, else ``tiny``) with,
        under a model directory, that directory's DiT config."""
        preset = get_preset(name or ("wan2.1-t2v-1.3b" if self.files is not None else "tiny"))
        if self.files is not None:
            preset = dataclasses.replace(preset, model=model_config_from_json(self.files.dit_config))
        return preset

    def load_dit(
        self,
        config: ModelConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CausalWanModel:
        """The DiT (:func:`load_dit` with this source)."""
        return load_dit(source=self, config=config, device=device, dtype=dtype)


def weights_label(
    *,
    model_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    longlive_ckpt: str | Path | None = None,
    lora: str | Path | None = None,
    seed: int = 0,
) -> str:
    """:attr:`WeightSource.label` of these sources (kept for callers of the keyword form)."""
    source = WeightSource(model_dir=model_dir, checkpoint=checkpoint, longlive_ckpt=longlive_ckpt, lora=lora, seed=seed)
    return source.label


def load_dit(
    *,
    source: WeightSource | None = None,
    model_dir: str | Path | None = None,
    config: ModelConfig | None = None,
    checkpoint: str | Path | None = None,
    longlive_ckpt: str | Path | None = None,
    longlive_weights: str | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    lora_rank: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> CausalWanModel:
    """Build the DiT from ``source`` (or the same sources as keywords), strictly (missing / unexpected /
    mis-shaped keys are errors).

    The config comes from the model directory's config.json, else ``config``. The weights come from
    the last of ``model_dir`` < ``checkpoint`` (Wan- or diffusers-named file) < ``longlive_ckpt``
    (``longlive_base.pt``, or a flat state dict) that is given; with none, random weights
    (``seed``). Wrapper prefixes (LongLive's ``model.``, FSDP's ``_fsdp_wrapped_module.``) are
    stripped from ``checkpoint`` and ``longlive_ckpt`` keys; every weight must be floating point.
    ``lora`` is merged into the weights afterwards: ``W += (alpha / rank) * B @ A``.
    ``longlive_weights`` defaults to ``"auto"`` and ``seed`` to 0 (unset here: part of ``source``).
    """
    keywords = (model_dir, checkpoint, longlive_ckpt, longlive_weights, lora, lora_alpha, lora_rank, seed)
    if source is None:
        source = WeightSource(
            model_dir=model_dir, checkpoint=checkpoint, longlive_ckpt=longlive_ckpt,
            longlive_weights=longlive_weights or "auto", lora=lora, lora_alpha=lora_alpha, lora_rank=lora_rank,
            seed=seed or 0,
        )  # fmt: skip
    elif any(x is not None for x in keywords):
        raise ValueError("load_dit takes a WeightSource or the sources as keywords, not both")
    files = source.files
    checkpoint, longlive_ckpt, lora = source.checkpoint, source.longlive_ckpt, source.lora
    if files is not None:
        config = model_config_from_json(files.dit_config)
    if config is None:
        raise ValueError("load_dit needs a model directory or a ModelConfig")
    origin, sd = None, None
    if longlive_ckpt is not None:
        origin, sd = longlive_ckpt, load_longlive_state_dict(longlive_ckpt, source.longlive_weights)
    elif checkpoint is not None:
        # LongLive's `model.` / FSDP's `_fsdp_wrapped_module.` wrappers are stripped; the load stays strict.
        origin, sd = checkpoint, to_wan_names(strip_prefixes(load_state_dict(checkpoint), checkpoint))
    elif files is not None:
        origin, sd = files.dit_weights, read_dit_state_dict(files)
    if sd is not None:
        check_float_weights(sd, origin)  # before build_model's cast would hide an int weight
    factors = load_lora(lora) if lora is not None else None  # read (and check) before the big build
    try:
        model = build_model(config, device=device, dtype=dtype, state_dict=sd, seed=source.seed)
    except ValueError as e:
        if origin is not None:
            raise ValueError(f"{origin}: {e}") from None
        raise
    if factors is not None:
        merge_lora_(model, factors, alpha=source.lora_alpha, rank=source.lora_rank)
    return model


def check_sources(files: ModelFiles | None, preset: Preset, *, need_vae: bool, need_text: bool) -> None:
    """The model directory holds the text encoder / tokenizer / VAE a run needs (before loading gigabytes)."""
    if files is None:
        if need_vae and preset.name != "tiny":
            raise ValueError("video output needs VAE weights: pass a model directory (--model DIR), or use tiny")
        return
    if need_text and files.text_encoder is None:
        raise ValueError(f"{files.root}: no text encoder found (models_t5_umt5-xxl-enc-bf16.pth or text_encoder/)")
    if need_text and files.tokenizer is None:
        want = "google/umt5-xxl/" if files.layout == "wan" else "tokenizer/"
        raise ValueError(f"{files.root}: no tokenizer directory ({want})")
    if need_vae and files.vae is None:
        raise ValueError(f"{files.root}: no VAE found (Wan2.1_VAE.pth or vae/)")


def load_text_encoder_for(files: ModelFiles | None, preset: Preset, device, dtype, placement: str, seed: int) -> Any:
    """The umT5 text encoder of a model directory's files (the tiny random one for the tiny preset
    without files; ``None``, with a note, for another preset without files)."""
    from .text_encoder import TextEncoder  # transformers: imported where a text encoder loads

    kw = dict(text_len=preset.model.text_len, device=device, dtype=dtype, placement=placement)
    if files is None:
        if preset.name != "tiny":
            print("no model directory: prompts get deterministic stand-in embeddings", file=sys.stderr)
            return None
        enc = TextEncoder.tiny_random(preset.model.text_dim, seed=seed, **kw)
    elif files.layout == "diffusers":
        enc = TextEncoder.from_pretrained(files.text_encoder, files.tokenizer, **kw)
    else:
        enc = TextEncoder.from_wan_checkpoint(files.text_encoder, files.tokenizer, **kw)
    if enc.dim != preset.model.text_dim:
        raise ValueError(f"the text encoder gives {enc.dim}-dim embeddings, the DiT takes {preset.model.text_dim}")
    return enc


def load_vae_for(files: ModelFiles | None, preset: Preset, device, dtype):
    """The VAE of a model directory's files (``None``: the tiny random VAE of the tiny preset)."""
    from .vae import load_vae, tiny_vae  # diffusers: imported where a VAE loads

    if files is None:
        return tiny_vae(device=device, dtype=dtype)
    return load_vae(files.vae, device=device, dtype=dtype)
