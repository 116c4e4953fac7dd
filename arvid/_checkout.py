"""Bare imports of the layer folders from a checkout: ``import kernels`` is never arvid's.

arvid's layers are top-level folders of the repository (``kernels/``, ``runtime/``, ...) installed as
``arvid.kernels``, ``arvid.runtime``, ... through ``package_dir``. Whenever the checkout root is on
``sys.path`` (``python -m arvid`` / ``python -c`` / ``torchrun -m arvid`` / a notebook started there),
those folders are also importable under their bare names and shadow installed packages of the same
name: transformers >= 5.25 does ``from kernels import ...`` for Hugging Face's ``kernels`` package, and
found arvid's ``kernels/`` instead.

Each layer's ``__init__`` therefore checks its own ``__name__``: imported bare, it hands the name to
:func:`import_installed`, which loads the installed package of that name in its place (the import
system returns whatever ``sys.modules[name]`` holds once the module body ends) or raises
``ModuleNotFoundError`` as if the folder were not there; the layer's own body runs only as
``arvid.<layer>``. This module imports nothing beyond the standard library: it runs inside another
package's import.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def _is_checkout_root(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() == CHECKOUT_ROOT  # '' on sys.path is the working directory
    except OSError:  # an entry that cannot be resolved (a deleted working directory) is not the root
        return False


def import_installed(name: str) -> None:
    """Put the installed package ``name`` into ``sys.modules`` in place of the checkout's folder.

    Called from a layer's ``__init__`` when it runs under its bare name. Searches ``sys.path`` without
    the checkout root; raises ``ModuleNotFoundError`` (what a plain ``import`` of a missing package
    raises, so availability probes such as ``try: import kernels`` behave) when nothing else of that
    name is installed.
    """
    path = [entry for entry in sys.path if not _is_checkout_root(entry)]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {name!r} (the checkout's {name}/ folder is arvid's layer: import arvid.{name})",
            name=name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
