"""The streaming runtime: causal Wan DiT, KV caches, the chunk step, executors and the generator.

Top-down: ``generator`` (the chunk loop, prompt switches) -> ``chunk_runner`` (executors: static
buffers and CUDA graphs over a backend's cache, or functional graphs over a host ring) ->
``chunk_step`` (one DiT forward over explicit state) -> ``model`` -> ``attention`` (backends) and
``kv_cache`` / ``concat_cache`` (ring, functional, and the eager baseline's caches) -> ``arvid.kernels``.
"""

if __name__ != "arvid.runtime":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)
else:
    from .attention import AttentionBackend, QKNorm, backend_names, default_backend, get_backend, register_backend
    from .chunk_runner import ChunkExecutor, ChunkRunner, Executor, GraphRunner, executor_names, register_executor
    from .chunk_step import FunctionalChunk, FunctionalStep, denoise_step
    from .config import PRESETS, ModelConfig, Preset, StreamConfig, get_preset
    from .generator import ChunkOutput, StreamingGenerator, validate_schedule
    from .kv_cache import ForwardPlan, FunctionalKVCache, KVCache, PlanTensors, RingKVCache, RingPlanner
    from .model import CausalWanModel, build_model
    from .rope import RopeInput, RopeTables
    from .scheduler import FlowMatchScheduler
    from .variants import GeneratorOptions

    __all__ = [
        "PRESETS",
        "AttentionBackend",
        "CausalWanModel",
        "ChunkExecutor",
        "ChunkOutput",
        "ChunkRunner",
        "Executor",
        "FlowMatchScheduler",
        "ForwardPlan",
        "FunctionalChunk",
        "FunctionalKVCache",
        "FunctionalStep",
        "GeneratorOptions",
        "GraphRunner",
        "KVCache",
        "ModelConfig",
        "PlanTensors",
        "Preset",
        "QKNorm",
        "RingKVCache",
        "RingPlanner",
        "RopeInput",
        "RopeTables",
        "StreamConfig",
        "StreamingGenerator",
        "backend_names",
        "build_model",
        "default_backend",
        "denoise_step",
        "executor_names",
        "get_backend",
        "get_preset",
        "register_backend",
        "register_executor",
        "validate_schedule",
    ]
