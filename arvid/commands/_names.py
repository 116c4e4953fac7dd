"""Names the parser offers (GPUs, precisions, Q/DQ schemes), kept here without importing torch.

``arvid --help`` and ``arvid --version`` must not import torch (seconds of start-up), so the parser
cannot read these off the modules that own them (``arvid.bench.roofline.GPUS`` / ``PRECISIONS``,
``arvid.quant.calibrate.MODELOPT_SCHEMES``): those import torch. They are copies, and
``tests/test_cli_startup.py`` checks each against its owner, so a GPU added there fails the test until
it is named here too. Presets, stream defaults and graph kinds are read off their torch-free owner,
``arvid.runtime.config``.
"""

from __future__ import annotations

GPU_NAMES = ("h100", "h100-pcie", "h200", "a100", "l40s")
PRECISION_NAMES = ("bf16", "fp8", "int8")
QDQ_SCHEMES = ("int8-smoothquant", "fp8")
