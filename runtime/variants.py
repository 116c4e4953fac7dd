"""Variant strings -> generators: :class:`GeneratorOptions`, the parsed variant that builds a generator.

The variant grammar, the engine registry and the one builder of executors live in ``executors.py``
(:class:`~arvid.runtime.executors.ExecutorOptions`, :func:`~arvid.runtime.executors.build_executor`);
this module adds :meth:`GeneratorOptions.build`, options -> :class:`StreamingGenerator`, for the
callers that want the whole generator (``arvid bench``, calibration, the quality report).
"""

from __future__ import annotations

from .config import StreamConfig
from .executors import BACKEND_FLAGS, QUANT_FLAGS, ExecutorOptions
from .generator import StreamingGenerator
from .model import CausalWanModel

__all__ = ["BACKEND_FLAGS", "QUANT_FLAGS", "GeneratorOptions"]


class GeneratorOptions(ExecutorOptions):
    """How a :class:`StreamingGenerator` runs: backend or engine, graphs, compile, KV-cache dtype."""

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
        """The generator for ``model`` (:func:`~arvid.runtime.executors.build_executor` builds what it runs).
        ``compile`` compiles the model's regions in place (once): pass a copy to keep an eager model beside it.

        Raises
        ------
        ValueError : a quantized variant (``+int8`` ...) on a model not quantized with that scheme.
        """
        return StreamingGenerator(
            model, stream, latent_size=latent_size, batch_size=batch_size, backend=self,
            engine_options=engine_options or None, sequence_parallel=sequence_parallel,
        )  # fmt: skip
