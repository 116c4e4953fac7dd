"""Writing output files: the one atomic write every layer above uses (never a partly written output),
and the partial-output promise on SIGTERM.

The promise: an output is complete, or a playable prefix that says so, or absent; never a stray
temporary file. Ctrl-C (``KeyboardInterrupt``) and SIGTERM (what ``timeout``, ``docker stop``, Slurm
and Kubernetes send) are handled the same way: :func:`sigterm_as_interrupt` turns SIGTERM into
:class:`Terminated`, a ``KeyboardInterrupt``, so every writer that keeps a prefix on Ctrl-C keeps it
on SIGTERM too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread (a ``KeyboardInterrupt``, so it unwinds like Ctrl-C)."""

    exit_code = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous handler
    comes back afterwards. Outside the main thread (where Python cannot install handlers) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers in place
    before: for finalising an output, so a second Ctrl-C or a SIGTERM cannot cut a rename or a
    container close in half. Python-level handlers, not ``pthread_sigmask``: a process-directed
    signal may land on any thread (torch's, tqdm's), and CPython runs the handler in the main
    thread regardless. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    # A handler installed from C (getsignal() is None) could not be put back: leave that signal alone.
    held = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not None]
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):  # each held signal once, in arrival order
            signal.raise_signal(sig)


def current_umask() -> int:
    """The process umask (read from /proc where it can be, since ``os.umask`` can only be read by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix (for writers that pick the format from it). If
    ``write`` fails, nothing is left behind and an existing ``path`` is untouched. The file gets the
    permissions of a plain ``open`` (0666 less the umask: 0644 under umask 022), whatever the writer
    used (safetensors creates 0600 files). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def run_metadata(**settings: object) -> dict[str, str]:
    """Metadata of an output file: the caller's run settings plus the arvid version, as strings.

    Pass what decided the numbers in the file (``backend``, ``dtype``, ``fp8_kv``, ``compile``,
    ``checkpoint``, ...); ``None`` values are left out, everything else is ``str()``-ed (a
    ``torch.dtype`` as ``bfloat16``), so two runs with the same settings write the same metadata.
    """
    from arvid import __version__  # the package's one version string (arvid/__init__.py)

    out = {"arvid_version": __version__}
    for key, value in settings.items():
        if value is not None:
            out[key] = str(value).removeprefix("torch.")
    return dict(sorted(out.items()))


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (name -> contiguous tensor) to a ``.safetensors`` file atomically, byte-reproducibly.

    The one safetensors writer of every layer. ``safetensors`` serializes the metadata from a Rust
    hash map, so its key order (and the file's bytes) change from one process to the next; the
    header is rewritten here with every key sorted (same length: only the order changes), so the
    same tensors and metadata give the same bytes. Metadata values must be strings.
    """
    import json

    from safetensors.torch import save_file

    meta = dict(metadata or {})
    bad = {k: type(v).__name__ for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"{path}: safetensors metadata must map strings to strings, got {bad}")

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta or None)
        with open(tmp, "r+b") as f:
            n = int.from_bytes(f.read(8), "little")
            raw = f.read(n)
            header = json.loads(raw)
            ordered = {k: header[k] for k in sorted(header)}  # "__metadata__" sorts first
            if "__metadata__" in ordered:
                ordered["__metadata__"] = dict(sorted(ordered["__metadata__"].items()))
            # serde_json's compact form: no spaces, non-ASCII as is; padded with spaces like the original.
            new = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
            if len(new) > n:  # never expected (same keys, same values); refuse rather than corrupt
                raise ValueError(f"{path}: re-serialized safetensors header is longer than the original")
            f.seek(8)
            f.write(new + b" " * (n - len(new)))

    return atomic_write(path, write)
