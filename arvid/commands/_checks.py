"""Validate-before-load: everything the command line can check is checked before the DiT, the text
encoder and the VAE load, so a typo costs a second, not a model load (and never a traceback after
a whole generation).

Each check raises ``ValueError`` (or an ``OSError``: ``NotADirectoryError``, ``IsADirectoryError``,
``PermissionError``, a read-only file system, no space left) with the flag, the path and what is
wrong; ``arvid.cli.main`` prints it as one line and exits 2. Output checks try what the write will
do (create a file in the folder), since ``os.access`` says yes to root on a read-only mount.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def check_seconds(seconds: float | None) -> None:
    """``--seconds``: finite and > 0 (``nan``, ``inf`` and 0 are not lengths)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"--seconds must be a finite number > 0, got {seconds}")


def check_output_file(path: str | Path | None, flag: str) -> None:
    """An output file (``--out``, ``--latents``, ``--json``): not an existing directory, its folder
    writable (or creatable) on a file system with space left."""
    from arvid.runtime.files import check_writable_dir

    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a directory (give a file name)")
    check_writable_dir(path.parent, f"{flag} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{flag} {path}: the existing file is not writable")


def check_output_dir(path: str | Path | None, flag: str) -> None:
    """An output folder (``--png-dir``, ``--out-dir``, ``--plots``): not a file; writable, or creatable."""
    from arvid.runtime.files import check_writable_dir

    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path}: is a file, not a directory")
    check_writable_dir(path, f"{flag} {path}")


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
