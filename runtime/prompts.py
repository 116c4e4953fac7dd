"""Prompts: LongLive's interactive JSONL, its switch-frame semantics, and stand-in prompt embeddings.

A JSONL file holds one video per line: ``{"prompts": ["first", "second", ...]}``; prompt i+1 takes
over at switch frame i. LongLive switches at the first chunk that starts at or after the given
latent frame (``current_start_frame >= next_switch_pos`` in its interactive pipeline), so
``--switch-frames 40`` with 3-frame chunks switches at frame 42: :func:`align_switch_frames`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import Preset
from .files import read_text


def read_prompt_jsonl(path: str | Path, num_switches: int | None = None) -> list[list[str]]:
    """The prompt lists of a LongLive interactive JSONL file, one per non-empty line.

    Parameters
    ----------
    num_switches : when given, every line must hold ``num_switches + 1`` prompts.

    Errors name the file and the line: text that is not UTF-8, malformed JSON, a line that is not an object with a
    ``"prompts"`` list of non-empty strings, or a prompt count that does not match the switches.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    text = read_text(path)
    videos = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict) or "prompts" not in obj:
            raise ValueError(f"{where}: missing key 'prompts' (expected {{\"prompts\": [...]}})")
        prompts = obj["prompts"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{where}: 'prompts' must be a non-empty list of non-empty strings")
        if num_switches is not None and len(prompts) != num_switches + 1:
            raise ValueError(
                f"{where}: {len(prompts)} prompts, but {num_switches} switch frames need {num_switches + 1}"
            )
        videos.append(prompts)
    if not videos:
        raise ValueError(f'{path}: no prompts (expected one {{"prompts": [...]}} per line)')
    return videos


def align_switch_frames(switch_frames: Sequence[int], chunk: int, num_frames: int | None) -> list[int]:
    """LongLive's switch rule, the one rule of arvid: each switch takes effect at the first chunk that
    starts at or after its frame (``current_start_frame >= next_switch_pos`` in LongLive's pipeline).

    Parameters
    ----------
    switch_frames : latent frames, strictly increasing, each in ``(0, num_frames)``.
    chunk : latent frames per chunk.
    num_frames : latent frames in the video; None for an endless stream (no upper bound).

    Returns
    -------
    The chunk-aligned switch frames (``13 -> 15`` with 3-frame chunks). Errors say what is wrong:
    a frame out of range, switch frames not sorted, a duplicate, two switches that land on the same
    chunk, or one that lands at or past the end of the video (that prompt would never be shown).
    """
    aligned: list[int] = []
    prev: int | None = None
    for s in (int(x) for x in switch_frames):
        if not 0 < s < (num_frames if num_frames is not None else s + 1):
            if num_frames is None:
                raise ValueError(f"switch frame {s} out of range: switch frames must be > 0")
            raise ValueError(
                f"switch frame {s} out of range: switch frames must lie inside (0, {num_frames}) "
                f"for {num_frames} latent frames"
            )
        if prev is not None and s == prev:
            raise ValueError(f"duplicate switch frame {s}")
        if prev is not None and s < prev:
            raise ValueError(f"switch frames not sorted: {s} after {prev}")
        a = -(-s // chunk) * chunk
        if aligned and a == aligned[-1]:
            raise ValueError(
                f"switch frames {prev} and {s} land on the same chunk boundary ({a}; chunk = {chunk} latent frames)"
            )
        if num_frames is not None and a >= num_frames:
            raise ValueError(
                f"switch frame {s} out of range: it takes effect at chunk boundary {a}, "
                f"which is not before the end of the video ({num_frames} latent frames)"
            )
        aligned.append(a)
        prev = s
    return aligned


def placeholder_prompt_embeds(text: str, preset: Preset, batch_size: int = 1) -> torch.Tensor:
    """Deterministic stand-in embeddings ``[B, text_len, text_dim]`` for a prompt when no text encoder
    is loaded: seeded from the text, zero past a pseudo prompt length, as umT5 padding is."""
    cfg = preset.model
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch_size, cfg.text_len, cfg.text_dim, generator=g)
    emb[:, min(cfg.text_len, max(1, len(text.split()) + 1)) :] = 0
    return emb
