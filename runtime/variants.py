"""Variant strings -> generators: the one builder every command and benchmark uses.

A variant is ``NAME[+FLAG...]``: ``NAME`` an attention backend (``eager``, ``sdpa``, ``triton``)
or an engine (``functional``; ``ort``, ``aoti``, ... once ``arvid.export`` is imported), flags
``graphs`` / ``stepgraphs`` (CUDA-graph capture per chunk / per denoising step), ``compile``
(regional ``torch.compile``), ``fp8kv`` (an FP8 e4m3 KV cache, per-token-head scales), one
quantization of the DiT's linears (``int8``: W8A8 dynamic, ``int8wo``: INT8 weight-only, ``fp8``:
e4m3 W8A8 row-wise; the model must have been quantized so, by ``arvid.quant.quantize_``, which
``arvid bench`` does in-process), or a flag the engine declares (e.g. ``ort+int8``). The same
words are the CLI's ``--backend`` / ``--graphs`` / ``--compile`` / ``--fp8kv`` and the Python
keyword arguments below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import backend_names
from .chunk_runner import executor_names, get_executor
from .config import StreamConfig
from .generator import StreamingGenerator
from .kv_cache import recache_spans
from .model import CausalWanModel

BACKEND_FLAGS = ("graphs", "stepgraphs", "compile", "fp8kv")
# variant flag -> arvid.quant scheme name (runtime only reads the record quant leaves on the model)
QUANT_FLAGS = {"int8": "int8", "int8wo": "int8-weight-only", "fp8": "fp8"}


@dataclass(frozen=True)
class GeneratorOptions:
    """How a :class:`StreamingGenerator` runs: backend or engine, graphs, compile, KV-cache dtype."""

    backend: str | None = None  # None: the fastest attention backend that runs on the model's device
    graphs: bool = False
    stepgraphs: bool = False
    compile: bool = False
    fp8kv: bool = False
    quant: str | None = None  # a key of QUANT_FLAGS: the DiT's linears are quantized so
    engine_flags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.graphs and self.stepgraphs:
            raise ValueError("choose one of +graphs (per chunk) and +stepgraphs (per denoising step)")
        if self.quant is not None and self.quant not in QUANT_FLAGS:
            raise ValueError(f"unknown quantization {self.quant!r}; choose one of {list(QUANT_FLAGS)}")

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
        known = engine.flags if engine is not None else BACKEND_FLAGS + tuple(QUANT_FLAGS)
        unknown = sorted(set(flags) - set(known))
        if unknown:
            raise ValueError(f"variant {variant!r}: unknown option(s) {unknown}; {name} takes {list(known)}")
        if engine is not None:
            return cls(backend=name, engine_flags=frozenset(flags))
        quant = [f for f in flags if f in QUANT_FLAGS]
        if len(quant) > 1:
            raise ValueError(f"variant {variant!r}: choose one quantization of {quant}")
        return cls(backend=name, quant=quant[0] if quant else None, **{f: True for f in flags if f not in QUANT_FLAGS})

    @property
    def variant(self) -> str:
        """The variant string these options spell (inverse of :meth:`from_variant`)."""
        flags = [f for f in BACKEND_FLAGS if getattr(self, f)] + ([self.quant] if self.quant else [])
        flags += sorted(self.engine_flags)
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
        pass a copy to keep an eager model beside it.

        Raises
        ------
        ValueError : a quantized variant (``+int8`` ...) on a model not quantized with that scheme.
        """
        if self.quant is not None:
            record = getattr(model, "arvid_quant", None)  # left by arvid.quant.quantize_ / load_quantized
            want = QUANT_FLAGS[self.quant]
            got = record.config.scheme if record is not None else None
            if got != want:
                raise ValueError(
                    f"variant {self.variant!r} runs a {want}-quantized DiT, but the model is "
                    f"{'not quantized' if got is None else got}: quantize it first (arvid.quant.quantize_)"
                )
        if self.compile and not getattr(model, "regions_compiled", False):
            model.compile_regions()
        gen = StreamingGenerator(
            model, stream, latent_size=latent_size, batch_size=batch_size, backend=self.backend,
            cuda_graphs=self.graphs or self.stepgraphs, graph_granularity="step" if self.stepgraphs else "chunk",
            kv_cache_dtype=torch.float8_e4m3fn if self.fp8kv else None,
            engine_flags=self.engine_flags, engine_options=engine_options or None,
            sequence_parallel=sequence_parallel,
        )  # fmt: skip
        if self.compile:  # every forward length a stream can ask for, compiled now rather than mid-stream
            _, ph, pw = model.cfg.patch_size
            per_frame = (latent_size[0] // ph) * (latent_size[1] // pw)
            ranks = sequence_parallel.size if sequence_parallel is not None else 1
            spans = {gen.stream_cfg.chunk_frames, *recache_spans(gen.stream_cfg)}
            model.warm_compiled_regions([f * per_frame // ranks for f in sorted(spans)], batch_size)
        return gen
