"""The graphs every exporter traces, with their declared I/O: one definition for ONNX, AOTInductor
and TensorRT.

Each graph is the runtime's functional chunk step (``arvid.runtime.chunk_step``) at fixed shapes:

``step``     one DiT forward of a chunk (``chunk_frames`` frames): a denoising step or, at
             sigma = 0, the clean-context update;
``chunk``    the whole chunk: every denoising step, re-noising, the clean-context forward;
``recache``  one forward over a re-cache span of ``num_frames`` (3, 6, 9 or 12 frames at LongLive's
             settings; 9 is also the global-sink window re-run).

The cache is functional inside every graph: it comes in as an input, the valid keys are a mask
built from the plan scalars (one graph for every fill state), and the forward's K/V come out; the
host writes them into the ring slot (``runtime.chunk_runner.GraphRunner``). The RoPE table is
baked in with ``rope_positions`` rows; runners refuse frames past it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from arvid.runtime import FunctionalChunk, FunctionalStep, StreamConfig
from arvid.runtime.config import DIT_GRAPH_KINDS
from arvid.runtime.kv_cache import recache_spans
from arvid.runtime.model import CausalWanModel, sinusoidal_embedding
from arvid.runtime.scheduler import FlowMatchScheduler


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


@dataclass(frozen=True)
class GraphSpec:
    """Names, shapes and dtypes of a graph's inputs and outputs, in call order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    meta: dict = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "meta": self.meta,
        }


class _Geometry:
    def _setup(self, model: CausalWanModel, stream: StreamConfig, latent_size, batch_size, num_frames, rope_positions):
        cfg = model.cfg
        _, ph, pw = cfg.patch_size
        h, w = latent_size
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        if num_frames % stream.chunk_frames or not 0 < num_frames <= stream.attention_frames:
            raise ValueError(
                f"num_frames {num_frames} must be a multiple of the chunk ({stream.chunk_frames}) "
                f"within the attention span ({stream.attention_frames})"
            )
        model.rope.ensure(max(rope_positions, h // ph, w // pw))
        self.stream, self.latent_size, self.batch_size, self.num_frames = stream, (h, w), batch_size, num_frames
        self.rope_positions = model.rope.positions
        self.tokens_per_frame = (h // ph) * (w // pw)
        param = model.patch_embedding.weight
        self.device, self.dtype = param.device, param.dtype

    def _common_specs(self, model: CausalWanModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
        cfg, b, f, s = model.cfg, self.batch_size, self.num_frames, self.stream
        lat = (b, f, cfg.in_dim, *self.latent_size)
        cache = (cfg.num_layers, b, s.attention_frames * self.tokens_per_frame, cfg.num_heads, cfg.head_dim)
        text = (cfg.num_layers, b, cfg.num_heads, cfg.text_len, cfg.head_dim)
        new = (cfg.num_layers, b, f * self.tokens_per_frame, cfg.num_heads, cfg.head_dim)
        state = [
            TensorSpec("text_k", text, self.dtype),
            TensorSpec("text_v", text, self.dtype),
            TensorSpec("cache_k", cache, self.dtype),
            TensorSpec("cache_v", cache, self.dtype),
            TensorSpec("write_start", (1,), torch.int32),
            TensorSpec("kv_len", (b,), torch.int32),
            TensorSpec("frame_offset", (1,), torch.int32),
        ]
        outs = [
            TensorSpec("x0", lat, torch.float32),
            TensorSpec("new_k", new, self.dtype),
            TensorSpec("new_v", new, self.dtype),
        ]
        return state, outs

    def _meta(self, kind: str) -> dict:
        return {
            "graph": kind,
            "num_frames": self.num_frames,
            "latent_size": list(self.latent_size),
            "batch_size": self.batch_size,
            "rope_positions": self.rope_positions,
            "stream": asdict(self.stream),
        }

    def _example_state(self, model: CausalWanModel, seed: int) -> list[torch.Tensor]:
        """Random state of a partly filled ring: the write slot in the middle of the valid prefix."""
        g = torch.Generator().manual_seed(seed)
        state, _ = self._common_specs(model)
        tensors = [_randn(t.shape, g, self.device, t.dtype) for t in state[:4]]
        chunk_tokens = self.stream.chunk_frames * self.tokens_per_frame
        slots = self.stream.slot_chunks
        write_slot = 1 if self.num_frames // self.stream.chunk_frames < slots else 0
        new_slots = self.num_frames // self.stream.chunk_frames
        kv = min(slots, write_slot + new_slots + 1) * chunk_tokens
        i32 = lambda v, n=1: torch.full((n,), v, dtype=torch.int32, device=self.device)
        frame_offset = 2 * self.stream.chunk_frames
        return [*tensors, i32(write_slot * chunk_tokens), i32(kv, self.batch_size), i32(frame_offset)]

    def flops(self) -> float:
        """Multiply-adds x 2 of one call, roughly: the blocks' weights over the tokens, self-attention over
        the whole ring and cross-attention over the text, times the DiT forwards the graph runs."""
        cfg, b = self.model.cfg, self.batch_size
        tokens = b * self.num_frames * self.tokens_per_frame
        ring = self.stream.attention_frames * self.tokens_per_frame
        weights = sum(p.numel() for p in self.model.blocks.parameters())
        per_forward = 2 * weights * tokens + 4 * tokens * (ring + cfg.text_len) * cfg.dim * cfg.num_layers
        return float(per_forward * getattr(self, "forwards", 1))

    def placeholder_inputs(self) -> tuple[torch.Tensor, ...]:
        """Uninitialised tensors of the inputs' shapes and dtypes: what a trace needs (``torch.export``
        reads shapes, never values). Their pages are never touched, so they cost no resident memory:
        the 1.3B step's example KV cache is 3.45 GB in bf16, more than its weights, and was the
        export's peak (measured: 9.3 GiB while it was drawn, 6.2 GiB after)."""
        return tuple(torch.empty(t.shape, dtype=t.dtype, device=self.device) for t in self.spec().inputs)


def _randn(shape: tuple[int, ...], g: torch.Generator, device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.randn(shape)`` in ``dtype``, drawn in float32 one leading slice (one layer) at a time: a
    bf16 tensor never has a float32 twin of its full size (the 1.3B cache's would be 3.45 GB each)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    for i in range(shape[0]):
        out[i].copy_(torch.randn(shape[1:], generator=g))
    return out


class StepGraph(FunctionalStep, _Geometry):
    """:class:`~arvid.runtime.chunk_step.FunctionalStep` at fixed shapes, with its spec.

    ``kind`` is ``"step"`` (``num_frames = chunk_frames``) or ``"recache"`` (any span).
    """

    def __init__(
        self,
        model: CausalWanModel,
        *,
        stream: StreamConfig | None = None,
        latent_size: tuple[int, int],
        batch_size: int = 1,
        num_frames: int | None = None,
        rope_positions: int = 0,
        kind: str = "step",
    ) -> None:
        super().__init__(model)
        stream = stream or StreamConfig()
        self._setup(model, stream, latent_size, batch_size, num_frames or stream.chunk_frames, rope_positions)
        self.kind = kind

    def spec(self) -> GraphSpec:
        cfg, b, f = self.model.cfg, self.batch_size, self.num_frames
        state, outs = self._common_specs(self.model)
        ins = [
            TensorSpec("x", (b, f, cfg.in_dim, *self.latent_size), torch.float32),
            TensorSpec("t_freq", (b, f, cfg.freq_dim), torch.float32),
            TensorSpec("sigma", (1,), torch.float32),
            *state,
        ]
        name = f"{self.kind}{f}" if self.kind == "recache" else self.kind
        return GraphSpec(name, tuple(ins), tuple(outs), self._meta(self.kind))

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Deterministic inputs on the model's device: a denoising step at t = 937.5 on a partly filled ring."""
        cfg, b, f = self.model.cfg, self.batch_size, self.num_frames
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(b, f, cfg.in_dim, *self.latent_size, generator=g).to(self.device)
        sched = FlowMatchScheduler(self.stream)
        t = torch.full((b, f), sched.timesteps[1], device=self.device)
        sigma = torch.tensor([sched.sigmas[1]], device=self.device)
        return (x, sinusoidal_embedding(cfg.freq_dim, t), sigma, *self._example_state(self.model, seed))


class ChunkGraph(FunctionalChunk, _Geometry):
    """:class:`~arvid.runtime.chunk_step.FunctionalChunk` at fixed shapes, with its spec."""

    kind = "chunk"

    def __init__(
        self,
        model: CausalWanModel,
        *,
        stream: StreamConfig | None = None,
        latent_size: tuple[int, int],
        batch_size: int = 1,
        rope_positions: int = 0,
    ) -> None:
        stream = stream or StreamConfig()
        super().__init__(model, stream, batch_size)
        self._setup(model, stream, latent_size, batch_size, stream.chunk_frames, rope_positions)
        self.forwards = len(self.scheduler) + 1  # every denoising step and the clean-context pass

    def spec(self) -> GraphSpec:
        cfg, b, f = self.model.cfg, self.batch_size, self.num_frames
        lat = (b, f, cfg.in_dim, *self.latent_size)
        state, outs = self._common_specs(self.model)
        steps = len(self.scheduler)
        ins = [TensorSpec("x", lat, torch.float32), TensorSpec("renoise", (steps - 1, *lat), torch.float32), *state]
        return GraphSpec("chunk", tuple(ins), tuple(outs), self._meta("chunk"))

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        cfg, b, f = self.model.cfg, self.batch_size, self.num_frames
        g = torch.Generator().manual_seed(seed + 1)
        lat = (b, f, cfg.in_dim, *self.latent_size)
        x = torch.randn(lat, generator=g).to(self.device)
        renoise = torch.randn(len(self.scheduler) - 1, *lat, generator=g).to(self.device)
        return (x, renoise, *self._example_state(self.model, seed))


def graph_tensors(model: CausalWanModel) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers under the names the graphs here give them (each holds the
    model as ``.model``): the names of an exported graph's weights, e.g. ``model.head.head.weight``."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {f"model.{name}": t for name, t in named}


def graph_stream(stream: StreamConfig) -> StreamConfig:
    """The stream settings as far as a graph depends on them, for the keys of exported artifacts:
    ``global_sink`` only changes the host's re-cache plan (which span a switch re-runs), never a graph,
    so one export serves both values."""
    return stream.replace(global_sink=True)


def recache_graph_spans(stream: StreamConfig) -> list[int]:
    """The re-cache spans that need a graph of their own: all of :func:`recache_spans` but one chunk,
    which the step graph serves."""
    return [f for f in recache_spans(stream) if f != stream.chunk_frames]


def build_graph(
    kind: str,
    model: CausalWanModel,
    *,
    stream: StreamConfig | None = None,
    latent_size: tuple[int, int],
    batch_size: int = 1,
    num_frames: int | None = None,
    rope_positions: int = 0,
) -> StepGraph | ChunkGraph:
    """The graph module of ``kind`` (``step`` | ``chunk`` | ``recache``), in eval mode, no grads."""
    if kind not in DIT_GRAPH_KINDS:
        raise ValueError(f"unknown graph {kind!r}; choose one of {list(DIT_GRAPH_KINDS)}")
    geo = dict(stream=stream, latent_size=latent_size, batch_size=batch_size, rope_positions=rope_positions)
    if kind == "chunk":
        if num_frames not in (None, (stream or StreamConfig()).chunk_frames):
            raise ValueError("the chunk graph runs chunk_frames frames; num_frames is for recache graphs")
        graph = ChunkGraph(model, **geo)
    elif kind == "step":
        if num_frames not in (None, (stream or StreamConfig()).chunk_frames):
            raise ValueError("the step graph runs chunk_frames frames; use --graph recache for other spans")
        graph = StepGraph(model, **geo)
    else:
        if num_frames is None:
            raise ValueError("a recache graph needs num_frames (the span length)")
        graph = StepGraph(model, num_frames=num_frames, kind="recache", **geo)
    return graph.eval().requires_grad_(False)
