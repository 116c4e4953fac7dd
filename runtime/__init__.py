"""The streaming runtime: causal Wan DiT, KV caches, the chunk step, executors and the generator.

Top-down: ``generator`` (the chunk loop, prompt switches) -> ``executors`` (a variant string -> what
runs: the engine registry and :func:`~arvid.runtime.executors.build_executor`) -> ``chunk_runner``
(static buffers and CUDA graphs over a backend's cache, or functional graphs over a host ring) ->
``chunk_step`` (one DiT forward over explicit state) -> ``model`` -> ``attention`` (backends) and
``kv_cache`` / ``concat_cache`` (ring, functional, and the eager baseline's caches) -> ``rope``
(tables, q/k norm + RoPE) -> ``arvid.kernels``.
Beside them: ``loaders`` (:class:`~arvid.runtime.loaders.WeightSource`, the DiT / text encoder / VAE loaders).

``import arvid.runtime`` imports no torch: every name below is imported from its module on first
access (PEP 562 ``__getattr__``, as ``arvid/__init__.py`` does), so the command line's parser reads
the presets and the stream defaults off :mod:`arvid.runtime.config` itself, without paying for torch.
"""

from __future__ import annotations

from typing import Any

if __name__ != "arvid.runtime":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)

# name -> the module (under arvid.runtime) that defines it; imported on first access
_LAZY = {
    "AttentionBackend": "attention",
    "QKNorm": "attention",
    "backend_names": "attention",
    "default_backend": "attention",
    "get_backend": "attention",
    "register_backend": "attention",
    "ChunkExecutor": "chunk_runner",
    "ChunkRunner": "chunk_runner",
    "GraphRunner": "chunk_runner",
    "Executor": "executors",
    "ExecutorOptions": "executors",
    "build_executor": "executors",
    "executor_names": "executors",
    "get_executor": "executors",
    "register_executor": "executors",
    "FunctionalChunk": "chunk_step",
    "FunctionalStep": "chunk_step",
    "denoise_step": "chunk_step",
    "PRESETS": "config",
    "ModelConfig": "config",
    "Preset": "config",
    "StreamConfig": "config",
    "get_preset": "config",
    "ChunkOutput": "generator",
    "StreamingGenerator": "generator",
    "validate_schedule": "generator",
    "ForwardPlan": "kv_cache",
    "FunctionalKVCache": "kv_cache",
    "KVCache": "kv_cache",
    "PlanTensors": "kv_cache",
    "RingKVCache": "kv_cache",
    "RingPlanner": "kv_cache",
    "CausalWanModel": "model",
    "build_model": "model",
    "RopeInput": "rope",
    "RopeTables": "rope",
    "FlowMatchScheduler": "scheduler",
    "GeneratorOptions": "variants",
    "WeightSource": "loaders",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
