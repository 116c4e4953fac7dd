"""Variant strings -> generators: the one builder every command and benchmark uses.

A variant is ``NAME[+FLAG...]``: ``NAME`` an attention backend (``eager``, ``sdpa``, ``triton``)
or an engine (``functional``; ``ort``, ``aoti``, ... once ``arvid.export`` is imported), flags
``graphs`` / ``stepgraphs`` (CUDA-graph capture per chunk / per denoising step), ``compile``
(regional ``torch.compile``), ``fp8kv`` (an FP8 e4m3 KV cache, per-token-head scales), or a flag
the engine declares (e.g. ``ort+int8``). The same words are the CLI's ``--backend`` /
``--graphs`` / ``--compile`` / ``--fp8kv`` and the Python keyword arguments below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import backend_names
from .chunk_runner import executor_names, get_executor
from .config import StreamConfig
from .generator import StreamingGenerator
from .model import CausalWanModel

BACKEND_FLAGS = ("graphs", "stepgraphs", "compile", "fp8kv")


@dataclass(frozen=True)
class GeneratorOptions:
    """How a :class:`StreamingGenerator` runs: backend or engine, graphs, compile, KV-cache dtype."""

    backend: str | None = None  # None: the fastest attention backend that runs on the model's device
    graphs: bool = False
    stepgraphs: bool = False
    compile: bool = False
    fp8kv: bool = False
    engine_flags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.graphs and self.stepgraphs:
            raise ValueError("choose one of +graphs (per chunk) and +stepgraphs (per denoising step)")

    @classmethod
    def from_variant(cls, variant: str) -> GeneratorOptions:
        """``"triton+graphs+fp8kv"`` -> ``GeneratorOptions(backend="triton", graphs=True, fp8kv=True)``."""
        name, *flags = variant.strip().split("+")
        if not name:
            raise ValueError(f"variant {variant!r} names no backend")
        engine = get_executor(name)
        if engine is None and name not in backend_names():
            choices = backend_names() + executor_names()
            raise ValueError(f"unknown attention backend or engine {name!r} in {variant!r}; choose one of {choices}")
        known = engine.flags if engine is not None else BACKEND_FLAGS
        unknown = sorted(set(flags) - set(known))
        if unknown:
            raise ValueError(f"variant {variant!r}: unknown option(s) {unknown}; {name} takes {list(known)}")
        if engine is not None:
            return cls(backend=name, engine_flags=frozenset(flags))
        return cls(backend=name, **{f: True for f in flags})

    @property
    def variant(self) -> str:
        """The variant string these options spell (inverse of :meth:`from_variant`)."""
        flags = [f for f in BACKEND_FLAGS if getattr(self, f)] + sorted(self.engine_flags)
        return "+".join([self.backend or "auto", *flags])

    def build(
        self,
        model: CausalWanModel,
        stream: StreamConfig | None = None,
        *,
        latent_size: tuple[int, int],
        batch_size: int = 1,
        sequence_parallel=None,
        **engine_options,
    ) -> StreamingGenerator:
        """The generator for ``model``. ``compile`` compiles the model's regions in place (once):
        pass a copy to keep an eager model beside it."""
        if self.compile and not getattr(model, "regions_compiled", False):
            model.compile_regions()
        return StreamingGenerator(
            model, stream, latent_size=latent_size, batch_size=batch_size, backend=self.backend,
            cuda_graphs=self.graphs or self.stepgraphs, graph_granularity="step" if self.stepgraphs else "chunk",
            kv_cache_dtype=torch.float8_e4m3fn if self.fp8kv else None,
            engine_flags=self.engine_flags, engine_options=engine_options or None,
            sequence_parallel=sequence_parallel,
        )  # fmt: skip
