"""Optional dependencies imported quietly: torchao prints warnings at import that a user cannot act on.

torchao (0.18) logs "Failed to load .../_C_mxfp8...so" and "..._C_cutlass_90a.abi3.so" for the
CUDA extensions a CPU or non-Hopper install cannot load, and registering its enums makes torch
log "<enum 'KernelPreference'> is an Enum subclass ... register_constant() ... deprecated". They
appear on every import, even where nothing is quantized (transformers imports torchao whenever it
is installed, so loading the text encoder triggers them too). :func:`quiet_torchao_import` wraps
such imports; torchao's later warnings (while quantizing) are not touched.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Loggers whose import-time messages about torchao are not actionable.
_IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree")


@contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Run an import that may import torchao (torchao itself, or transformers) without its import noise.

    While the block runs, the loggers above only pass errors and warnings raised from torchao's
    modules are ignored; both are restored afterwards. Once torchao is imported this does nothing
    (its import-time messages are behind it), so later, actionable warnings still show.
    """
    if "torchao" in sys.modules:
        yield
        return
    loggers = [logging.getLogger(name) for name in _IMPORT_NOISE_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torchao(\.|$)")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
