"""Variant -> executor: the registry of engines and :func:`build_executor`, the one road from a variant
string (``"triton+graphs+fp8kv"``, ``"aoti+chunk"``) to what runs a stream's chunks.

A variant is ``NAME[+FLAG...]``: ``NAME`` an attention backend (``eager``, ``sdpa``, ``triton``,
``flash``; ``attention.py``) or an engine of this registry (``functional``; ``ort``, ``trt``,
``aoti``), flags ``graphs`` / ``stepgraphs`` (CUDA-graph capture per chunk / per denoising step),
``compile`` (regional ``torch.compile``), ``fp8kv`` (an FP8 e4m3 KV cache, per-token-head scales), one
quantization of the DiT's linears (``int8``: W8A8 dynamic, ``int8wo``: INT8 weight-only, ``fp8``:
e4m3 W8A8 row-wise; the model must have been quantized so, by ``arvid.quant.quantize_``, which
``arvid bench`` does in-process), or a flag the engine declares (e.g. ``ort+int8``). The same words
are the CLI's ``--backend`` / ``--graphs`` / ``--compile`` / ``--fp8kv``.

Engines outside the runtime register by name with the ``"module:attr"`` of their factory, imported
on first use: the registry is complete without importing ``arvid.export`` (which imports the
exporters' code), and a run of an attention backend never imports it. An engine is one file and one
:func:`register_executor` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .attention import backend_names, default_backend, get_backend
from .chunk_runner import ChunkExecutor, ChunkRunner, GraphRunner
from .chunk_step import FunctionalChunk, FunctionalStep
from .config import StreamConfig
from .kv_cache import make_cache, recache_spans
from .model import CausalWanModel

if TYPE_CHECKING:
    from .parallel import SequenceParallel

BACKEND_FLAGS = ("graphs", "stepgraphs", "compile", "fp8kv")
# variant flag -> arvid.quant scheme name (runtime only reads the record quant leaves on the model)
QUANT_FLAGS = {"int8": "int8", "int8wo": "int8-weight-only", "fp8": "fp8"}


# -- the registry of engines (executors beyond the attention backends) --------------------------
@dataclass(frozen=True)
class Executor:
    """An engine: ``factory(model, stream, *, latent_size, batch_size, flags, **options) -> ChunkExecutor``,
    or the ``"module:attr"`` naming it (imported on first use, see :meth:`load`)."""

    name: str
    description: str
    factory: Callable[..., Any] | str
    flags: tuple[str, ...] = ()  # variant flags the engine understands, e.g. ("int8", "fp8")

    def load(self) -> Callable[..., Any]:
        """The factory, imported now if it was registered by name."""
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


_EXECUTORS: dict[str, Executor] = {}


def register_executor(executor: Executor) -> Executor:
    _EXECUTORS[executor.name] = executor
    return executor


def executor_names() -> list[str]:
    return list(_EXECUTORS)


def get_executor(name: str) -> Executor | None:
    return _EXECUTORS.get(name)


def _functional_executor(model, stream, *, latent_size, batch_size, flags=frozenset(), **options) -> GraphRunner:
    """The exported graphs' functional step, run eagerly by PyTorch: the reference for every engine."""
    if options:
        raise ValueError(f"executor 'functional' takes no options, got {sorted(options)}")
    param = model.patch_embedding.weight
    step = FunctionalStep(model)
    spans = dict.fromkeys(recache_spans(stream), step)
    return GraphRunner(
        model.cfg, stream, latent_size=latent_size, batch_size=batch_size, device=param.device, dtype=param.dtype,
        step=step, chunk=FunctionalChunk(model, stream, batch_size) if "chunk" in flags else None,
        recache_steps=spans, rope_positions=model.rope.positions,
    )  # fmt: skip


register_executor(
    Executor(
        "functional",
        "the export graphs' functional chunk step (cache in, new K/V out), run eagerly by PyTorch",
        _functional_executor,
        flags=("chunk",),
    )
)
register_executor(
    Executor(
        "ort",
        "the exported ONNX graphs run by ONNX Runtime (CPU provider; CUDA with onnxruntime-gpu); "
        "+int8 / +fp8: modelopt Q/DQ graphs, +chunk: the whole-chunk graph",
        "arvid.export.executors:ort_executor",
        flags=("int8", "fp8", "chunk"),
    )
)
register_executor(
    Executor(
        "trt",
        "the exported ONNX graphs built into strongly typed TensorRT 10/11 engines (CUDA only); "
        "+int8 / +fp8: engines of the modelopt Q/DQ graphs, +chunk: the whole-chunk graph",
        "arvid.export.executors:trt_executor",
        flags=("int8", "fp8", "chunk"),
    )
)
register_executor(
    Executor(
        "aoti",
        "AOTInductor packages of the exported chunk step (C++ kernels on the CPU, Triton on CUDA)",
        "arvid.export.aoti:aoti_executor",
        flags=("chunk", "graphs"),
    )
)


# -- variants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorOptions:
    """What runs a stream's chunks: backend or engine, graphs, compile, KV-cache dtype, quantization.

    :class:`~arvid.runtime.variants.GeneratorOptions` adds ``build`` (options -> generator).
    """

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
    def from_variant(cls, variant: str):
        """``"triton+graphs+fp8kv"`` -> ``cls(backend="triton", graphs=True, fp8kv=True)``."""
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

    @property
    def engine(self) -> Executor | None:
        """The registered engine these options run, None for an attention backend (or the default)."""
        return get_executor(self.backend) if self.backend else None

    def check_sequence_parallel(self, what: str = "sequence parallel") -> None:
        """Sequence parallel runs the attention backends eagerly: no engine, no CUDA graphs (yet).
        ``what`` starts the message (the CLI names its flag)."""
        if self.graphs or self.stepgraphs or self.engine is not None:
            raise ValueError(f"{what} runs the attention backends eagerly: no engines, no CUDA graphs yet")


def build_executor(
    options: ExecutorOptions | str | None,
    model: CausalWanModel,
    stream: StreamConfig | None = None,
    *,
    latent_size: tuple[int, int],
    batch_size: int = 1,
    sequence_parallel: SequenceParallel | None = None,
    **engine_options,
) -> ChunkExecutor:
    """The executor of ``options`` (a variant string, or None for the fastest backend here) for ``model``.

    ``compile`` compiles the model's regions in place (once; pass a copy to keep an eager model beside
    it) and compiles every forward length a stream can ask for now rather than mid-stream.
    ``engine_options`` go to an engine's factory (e.g. ``package_dirs`` of ``aoti``).

    Raises
    ------
    ValueError : an unknown backend, engine or flag; options the choice cannot run (CUDA graphs off
        CUDA, an FP8 cache the backend cannot read, engine options for an attention backend); a
        quantized variant (``+int8`` ...) on a model not quantized with that scheme.
    """
    opts = ExecutorOptions.from_variant(options) if isinstance(options, str) else options or ExecutorOptions()
    stream = stream or StreamConfig()
    param = model.patch_embedding.weight
    device, dtype = param.device, param.dtype
    name = opts.backend or default_backend(device, dtype)
    if sequence_parallel is not None:
        opts.check_sequence_parallel()
    engine = get_executor(name)
    if engine is not None:
        flagged = [f for f in (*BACKEND_FLAGS, "quant") if getattr(opts, f)]
        if flagged:
            raise ValueError(f"engine {name!r}: {', '.join(flagged)} are the attention backends' options, not its own")
        executor = engine.load()(
            model, stream, latent_size=tuple(latent_size), batch_size=batch_size,
            flags=frozenset(opts.engine_flags), **engine_options,
        )  # fmt: skip
        executor.name = name
        return executor
    if name not in backend_names():
        raise ValueError(
            f"unknown attention backend or engine {name!r}; choose one of {backend_names() + executor_names()}"
        )
    if opts.engine_flags or engine_options:
        raise ValueError(f"attention backend {name!r} takes no engine options")
    if opts.quant is not None:
        record = getattr(model, "arvid_quant", None)  # left by arvid.quant.quantize_ / load_quantized
        want = QUANT_FLAGS[opts.quant]
        got = record.config.scheme if record is not None else None
        if got != want:
            raise ValueError(
                f"variant {opts.variant!r} runs a {want}-quantized DiT, but the model is "
                f"{'not quantized' if got is None else got}: quantize it first (arvid.quant.quantize_)"
            )
    kv_dtype = torch.float8_e4m3fn if opts.fp8kv else None
    attn = get_backend(name, device, dtype, kv_dtype=kv_dtype)
    if opts.compile and not getattr(model, "regions_compiled", False):
        model.compile_regions()
    h, w = latent_size
    _, ph, pw = model.cfg.patch_size
    cache_args = dict(batch_size=batch_size, patch_grid=(h // ph, w // pw), device=device, dtype=dtype)
    if sequence_parallel is None:
        cache = make_cache(attn, model.cfg, stream, kv_dtype=kv_dtype, **cache_args)
    else:
        cache = sequence_parallel.make_cache(attn, model.cfg, stream, kv_dtype=kv_dtype, **cache_args)
    executor = ChunkRunner(
        model, cache, attn, stream, latent_size=tuple(latent_size), batch_size=batch_size,
        cuda_graphs=opts.graphs or opts.stepgraphs, granularity="step" if opts.stepgraphs else "chunk",
    )  # fmt: skip
    if opts.compile:  # every forward length a stream can ask for, compiled now rather than mid-stream
        per_frame = (h // ph) * (w // pw)
        ranks = sequence_parallel.size if sequence_parallel is not None else 1
        spans = {stream.chunk_frames, *recache_spans(stream)}
        model.warm_compiled_regions([f * per_frame // ranks for f in sorted(spans)], batch_size)
    return executor
