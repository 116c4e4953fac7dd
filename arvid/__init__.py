"""arvid: inference toolkit for streaming, autoregressive video diffusion models.

The layers install as subpackages and import only downwards:
``arvid.kernels`` <- ``arvid.runtime`` <- ``arvid.quant``, ``arvid.export`` <- ``arvid.bench``
<- ``arvid.cli`` (the ``arvid`` command).

``import arvid`` imports no torch: ``arvid --help`` and ``arvid --version`` load this package, and
``arvid.Pipeline`` is imported on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"Pipeline": "arvid.pipeline"}  # name -> module that defines it; imported on first access

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arvid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
