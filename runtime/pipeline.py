"""Transitional: the two names ``bench/stream_bench.py`` still imports from here (nothing else does).

Delete this file once ``bench/stream_bench.py`` imports ``load_dit`` from ``runtime.loaders`` and
``placeholder_prompt_embeds`` from ``runtime.prompts``. ``load_model`` is not a second loader: it is
:func:`~arvid.runtime.loaders.load_dit` on a preset's config.
"""

from __future__ import annotations

import torch

from .config import Preset, get_preset
from .loaders import load_dit
from .model import CausalWanModel
from .prompts import placeholder_prompt_embeds

__all__ = ["load_model", "placeholder_prompt_embeds"]


def load_model(
    preset: str | Preset, *, device: torch.device, dtype: torch.dtype, checkpoint: str | None = None, seed: int = 0
) -> CausalWanModel:
    """``load_dit(config=preset.model, checkpoint=checkpoint, ...)``."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return load_dit(config=preset.model, checkpoint=checkpoint, device=device, dtype=dtype, seed=seed)
