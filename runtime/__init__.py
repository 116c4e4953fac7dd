"""The streaming runtime: causal Wan DiT, ring-buffer KV cache, scheduler and generator."""

from .attention import AttentionBackend, backend_names, default_backend, get_backend, register_backend
from .config import PRESETS, ModelConfig, Preset, StreamConfig, get_preset
from .generator import ChunkOutput, StreamingGenerator, validate_schedule
from .kv_cache import ForwardPlan, RingKVCache
from .model import CausalWanModel, build_model
from .scheduler import FlowMatchScheduler

__all__ = [
    "PRESETS",
    "AttentionBackend",
    "CausalWanModel",
    "ChunkOutput",
    "FlowMatchScheduler",
    "ForwardPlan",
    "ModelConfig",
    "Preset",
    "RingKVCache",
    "StreamConfig",
    "StreamingGenerator",
    "backend_names",
    "build_model",
    "default_backend",
    "get_backend",
    "get_preset",
    "register_backend",
    "validate_schedule",
]
