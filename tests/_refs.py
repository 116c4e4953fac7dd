"""Eager baselines that several test modules compare against, each computed once per session.

The eager backend (concat cache, no ring) is the reference every other engine must reproduce; on the
tiny preset one 30-frame stream costs several seconds of CPU, and the same stream (same model seed,
noise, prompts and scheduler generator) was computed again in every module and parametrization that
needed it. :func:`eager_stream` computes each distinct one once and hands out a clone, so a test that
writes into its result cannot change what the next test compares against.

:class:`PlanLog` records the ring plans a run made, so a test can show which hard cases (evictions,
wrap-around, a rebuilt or a kept sink) its stream really went through.
"""

from __future__ import annotations

import dataclasses

import torch

from arvid.runtime import StreamConfig, StreamingGenerator, build_model, get_preset
from arvid.runtime.kv_cache import RingPlanner

TINY = get_preset("tiny")
HW = (TINY.latent_height, TINY.latent_width)

_memo: dict[tuple, torch.Tensor] = {}


def stream_inputs(frames: int, prompts: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The noise and prompt embeddings of the shared streams (generator seeded 0: noise first, then prompts)."""
    g = torch.Generator().manual_seed(0)
    cfg = TINY.model
    noise = torch.randn(1, frames, cfg.in_dim, *HW, generator=g)
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g) for _ in range(prompts)]
    return noise, embeds


def run_stream(gen: StreamingGenerator, frames: int, switches: tuple[int, ...]) -> torch.Tensor:
    """``gen.generate`` on :func:`stream_inputs` (scheduler generator seeded 1)."""
    noise, embeds = stream_inputs(frames, len(switches) + 1)
    return gen.generate(noise, embeds, switches, generator=torch.Generator().manual_seed(1))


def eager_stream(frames: int, switches: tuple[int, ...], stream: StreamConfig) -> torch.Tensor:
    """The eager baseline's latents for the tiny model built with seed 0 (``build_model``'s default), as a clone."""
    key = (frames, tuple(switches), dataclasses.astuple(stream))
    if key not in _memo:
        model = build_model(TINY.model, seed=0)
        _memo[key] = run_stream(StreamingGenerator(model, stream, latent_size=HW, backend="eager"), frames, switches)
    return _memo[key].clone()


class PlanLog:
    """The ring plans a run made, in order: ``(kind, plan, chunk slots filled before it)``, kind
    ``"chunk"`` or ``"recache"`` (one plan per chunk: its denoising steps share it)."""

    def __init__(self, monkeypatch, stream: StreamConfig) -> None:
        self.stream = stream
        self.plans: list[tuple[str, object, int]] = []
        chunk, recache = RingPlanner.plan_chunk, RingPlanner.plan_recache

        def plan_chunk(planner, frame_start):
            self.plans.append(("chunk", plan := chunk(planner, frame_start), planner.filled))
            self.chunk_tokens = planner.chunk_tokens
            return plan

        def plan_recache(planner, switch_frame):
            self.plans.append(("recache", plan := recache(planner, switch_frame), planner.filled))
            self.chunk_tokens = planner.chunk_tokens
            return plan

        monkeypatch.setattr(RingPlanner, "plan_chunk", plan_chunk)
        monkeypatch.setattr(RingPlanner, "plan_recache", plan_recache)

    def recaches(self) -> list:
        return [plan for kind, plan, _ in self.plans if kind == "recache"]

    def stretches(self) -> list[list[tuple[int, int]]]:
        """The chunk plans before the first re-cache, then after each: ``(write slot, slots filled before)``."""
        out: list[list[tuple[int, int]]] = [[]]
        for kind, plan, filled in self.plans:
            if kind == "recache":
                out.append([])
            else:
                out[-1].append((plan.write_start // self.chunk_tokens, filled))
        return out
