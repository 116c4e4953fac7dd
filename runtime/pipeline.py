"""Small helpers shared by the command line and the benchmarks: device, dtype, model, prompts."""

from __future__ import annotations

import hashlib

import torch

from .checkpoint import load_state_dict
from .config import Preset, get_preset
from .model import CausalWanModel, build_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA where present; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested, but CUDA is not available here "
            f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'})"
        )
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """Default: bf16 on CUDA, fp32 on the CPU."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_model(
    preset: str | Preset,
    *,
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: str | None = None,
    seed: int = 0,
) -> CausalWanModel:
    """The preset's DiT: from a Wan-named checkpoint, or random weights (speed does not depend on them)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    sd = load_state_dict(checkpoint) if checkpoint else None
    try:
        return build_model(preset.model, device=device, dtype=dtype, state_dict=sd, seed=seed)
    except ValueError as e:
        if checkpoint:
            raise ValueError(f"{checkpoint}: {e}") from None
        raise


def placeholder_prompt_embeds(text: str, preset: Preset, batch_size: int = 1) -> torch.Tensor:
    """Deterministic stand-in embeddings ``[B, text_len, text_dim]`` for a prompt when no text encoder
    is loaded: seeded from the text, zero past a pseudo prompt length, as umT5 padding is."""
    cfg = preset.model
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch_size, cfg.text_len, cfg.text_dim, generator=g)
    emb[:, min(cfg.text_len, max(1, len(text.split()) + 1)) :] = 0
    return emb
