"""Validate-before-load: everything the command line can check is checked before the DiT, the text
encoder and the VAE load, so a typo costs a second, not a model load (and never a traceback after
a whole generation).

Each check raises ``ValueError`` (or ``NotADirectoryError`` / ``IsADirectoryError`` /
``PermissionError``) with the flag, the path and what is wrong; ``arvid.cli.main`` prints it as one
line and exits 2.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def check_seconds(seconds: float | None) -> None:
    """``--seconds``: finite and > 0 (``nan``, ``inf`` and 0 are not lengths)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"--seconds must be a finite number > 0, got {seconds}")


def _writable_ancestor(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` is a folder this process may create files in
    (missing folders below it are created when the output is written)."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def check_output_file(path: str | Path | None, flag: str) -> None:
    """An output file (``--out``, ``--latents``): not an existing directory, its folder writable."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a directory (give a file name)")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{flag} {path}: the existing file is not writable")
    _writable_ancestor(path, flag)


def check_output_dir(path: str | Path | None, flag: str) -> None:
    """An output folder (``--png-dir``, ``--out-dir``): not a file; writable, or creatable."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path}: is a file, not a directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{flag} {path}: cannot write in it (permission denied)")
        return
    _writable_ancestor(path, flag)


def check_codec(args) -> None:
    """``--codec``: a video encoder of this PyAV build. Resolves the default once, here, so the
    writer does not pick (and print a note) again for every video."""
    from arvid.runtime.video import pick_codec

    try:
        args.codec = pick_codec(args.codec)
    except ValueError as e:
        raise ValueError(f"--codec: {e}") from None


def report_moved_switches(given, landed) -> None:
    """Say where each switch frame took effect when LongLive's rule moved it to a chunk boundary."""
    import sys

    for s, a in zip(given, landed, strict=True):
        if s != a:
            print(f"switch frame {s} -> {a} (chunk boundary)", file=sys.stderr)
