"""Names the parser offers (presets, GPUs, precisions, graphs), kept here without importing torch.

``arvid --help`` and ``arvid --version`` must not import torch (seconds of start-up), so the parser
cannot read these off the modules that own them (``arvid.runtime.PRESETS``,
``arvid.bench.roofline.GPUS`` / ``PRECISIONS``, ``arvid.export.pipeline.GRAPH_KINDS`` /
``QUANT_SCHEMES``): those import torch. They are copies, and ``tests/test_cli_startup.py`` checks
each against its owner, so a preset or GPU added there fails the test until it is named here too
(``STREAM_DEFAULTS`` against ``StreamConfig()``: the stream flags' help shows them).
"""

from __future__ import annotations

PRESET_NAMES = ("wan2.1-t2v-1.3b", "tiny")
GPU_NAMES = ("h100", "h100-pcie", "h200", "a100", "l40s")
PRECISION_NAMES = ("bf16", "fp8", "int8")
GRAPH_KINDS = ("step", "chunk", "recache", "vae-step")
QDQ_SCHEMES = ("int8-smoothquant", "fp8")
# StreamConfig() (LongLive's shipped settings), for the stream flags' help texts
STREAM_DEFAULTS = {
    "chunk_frames": 3,
    "sink_frames": 3,
    "attention_frames": 12,
    "denoising_steps": (1000, 750, 500, 250),
    "num_train_timesteps": 1000,
    "shift": 5.0,
    "context_noise": 0.0,
    "global_sink": True,
}
