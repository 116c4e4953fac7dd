"""Names the parser offers (GPUs, precisions, graphs), kept here without importing torch.

``arvid --help`` and ``arvid --version`` must not import torch (seconds of start-up), so the parser
cannot read these off the modules that own them (``arvid.bench.roofline.GPUS`` / ``PRECISIONS``,
``arvid.export.pipeline.GRAPH_KINDS`` / ``QUANT_SCHEMES``): those import torch. They are copies, and
``tests/test_cli_startup.py`` checks each against its owner, so a GPU added there fails the test until
it is named here too. Presets and the stream defaults are read off ``arvid.runtime.config`` itself
(torch-free, and ``arvid.runtime`` imports its modules lazily).
"""

from __future__ import annotations

GPU_NAMES = ("h100", "h100-pcie", "h200", "a100", "l40s")
PRECISION_NAMES = ("bf16", "fp8", "int8")
GRAPH_KINDS = ("step", "chunk", "recache", "vae-step")
QDQ_SCHEMES = ("int8-smoothquant", "fp8")
