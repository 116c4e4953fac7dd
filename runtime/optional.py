"""Optional dependencies: import them where they are used, with a one-line install hint when missing.

The core install (torch, numpy, safetensors, psutil, tqdm, pyyaml) runs ``bench``, ``roofline`` and
``report``; everything else comes with an extra of ``setup.py``. :func:`require` is the one way an
arvid module imports an optional package, so a missing one always reads like
``writing .mp4 needs PyAV: pip install 'arvid[video]'`` (the ``arvid`` command prints it as
``arvid generate: error: ...``). :func:`quiet_imports` silences, during one import, the log lines
that the video / quantization libraries print and that ask nothing of the user.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

# top-level module -> (the name users know it by, the arvid extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "av": ("PyAV", "video"),
    "PIL": ("Pillow", "video"),
    "diffusers": ("diffusers", "video"),
    "transformers": ("transformers", "video"),
    "tokenizers": ("tokenizers", "video"),  # comes with transformers
    "matplotlib": ("matplotlib", "plots"),
    "huggingface_hub": ("huggingface_hub", "hub"),
    "torchao": ("torchao", "quant"),
    "modelopt": ("nvidia-modelopt", "modelopt"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnx_ir": ("onnx-ir", "export"),
    "triton": ("triton", "triton"),
    "aiortc": ("aiortc", "serve"),
    "aiohttp": ("aiohttp", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
}

# Loggers whose import-time lines say nothing actionable: torchao's "Failed to load .../_C_mxfp8..."
# (kernels built for GPUs this machine lacks), diffusers' "Unable to import `torchao` Tensor objects"
# (it probes torchao at import), torch's pytree "Enum subclass ... register_constant() is deprecated"
# (torchao registers its enums). Raised to ERROR only while one import runs, then restored.
NOISY_LOGGERS = ("torchao", "diffusers.quantizers.torchao.torchao_quantizer", "torch.utils._pytree")
# Import-time UserWarnings of the same kind: modelopt's "transformers X is not tested with current
# version of modelopt" concerns modelopt on Hugging Face models, which arvid does not quantize.
NOISY_WARNINGS = (r"transformers \S+ is not tested with current version of modelopt",)


class MissingDependencyError(ImportError, ValueError):
    """An optional package is not installed: one line naming it and the extra that installs it.

    A ``ValueError`` too, so the ``arvid`` command prints it as a one-line error (exit status 2)."""


def install_hint(module: str) -> str:
    """``pip install 'arvid[EXTRA]'`` for a top-level module name (``pip install NAME`` if arvid has no extra)."""
    name, extra = PACKAGES.get(module.split(".")[0], (module.split(".")[0], None))
    return f"pip install 'arvid[{extra}]'" if extra else f"pip install {name}"


def require(module: str, *names: str, purpose: str) -> Any:
    """Import ``module`` (and read ``names`` off it) or raise :class:`MissingDependencyError`.

    Parameters
    ----------
    module : the module to import, e.g. ``"av"`` or ``"modelopt.torch.quantization"``.
    *names : attributes to return instead of the module. transformers and diffusers import their
        classes on attribute access, so reading them here keeps that import inside
        :func:`quiet_imports` and its failures inside the one message.
    purpose : what needs it, the start of the message: ``"writing .mp4"`` gives
        ``writing .mp4 needs PyAV: pip install 'arvid[video]'``.

    Returns
    -------
    The module without ``names``; the attribute with one name; a tuple of them with several.
    """
    top = module.split(".")[0]
    try:
        with quiet_imports():
            mod = importlib.import_module(module)
            values = tuple(getattr(mod, name) for name in names)
    except ImportError as e:
        # only the package itself (or one of its parts) missing is an install problem; an ImportError
        # from inside an installed package (a broken install, a missing dependency of its own) keeps
        # its own message, which says more
        missing = e.name or ""
        if missing and missing.split(".")[0] != top:
            raise
        name = PACKAGES.get(top, (top, None))[0]
        raise MissingDependencyError(f"{purpose} needs {name}: {install_hint(top)}") from None
    if not names:
        return mod
    return values[0] if len(values) == 1 else values


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Silence :data:`NOISY_LOGGERS`, :data:`NOISY_WARNINGS` and ``DeprecationWarning`` / ``FutureWarning`` while
    the block runs (an import of diffusers, transformers or torchao); levels and filters are restored
    after it, so nothing is hidden from the user's own code."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", module=r"torchao(\.|$)")  # its import-time UserWarnings
            for message in NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
