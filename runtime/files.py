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
import errno
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


# -- file errors: one line naming the path and the reason ---------------------------------------
# What a user can act on, worded for them; for any other errno its strerror, lower-cased.
_REASONS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.ENOTDIR: "not a directory (a file stands where a folder is needed)",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error",
    errno.EMFILE: "too many open files",
    errno.ENXIO: "no such device",
    errno.ETXTBSY: "file busy",
}


def os_error_reason(e: OSError) -> str:
    """The reason of an ``OSError`` in words (``read-only file system``, ``no space left on device``)."""
    if e.errno in _REASONS:
        return _REASONS[e.errno]
    return (e.strerror or str(e) or type(e).__name__).lower()


def path_error(e: OSError, path: str | Path, action: str | None = None) -> OSError:
    """``e`` as an ``OSError`` of the same errno (so the same subclass: ``FileNotFoundError``,
    ``PermissionError``, ...) whose ``filename`` is ``path`` and whose ``strerror`` is the reason in
    words, after ``action`` (``cannot write (read-only file system)``). ``arvid.cli.main`` prints it as
    ``PATH: REASON``."""
    reason = os_error_reason(e)
    if action:
        reason = f"{action} ({reason})"
    if e.errno is None:
        return type(e)(f"{path}: {reason}")
    out = OSError(e.errno, reason, str(path))
    out.worded = True  # strerror is already the line's reason: describe_os_error keeps it
    return out


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: ``PATH: REASON`` where it names a path, else its message or reason."""
    if e.errno is None:  # raised with a message of its own (``FileNotFoundError("--config x: no such file")``)
        return str(e)
    reason = e.strerror if getattr(e, "worded", False) else os_error_reason(e)
    if e.filename is None:
        return reason
    target = f" -> {e.filename2}" if e.filename2 is not None else ""
    return f"{e.filename}{target}: {reason}"


# Errnos that are the machine's or the user's file system, never arvid's bug: one line even where the
# error names no path (a write() on a full disk does not).
FILE_SYSTEM_ERRNOS = frozenset(_REASONS) - {errno.EMFILE}


def read_text(path: str | Path, what: str = "") -> str:
    """The UTF-8 text of ``path``; a file that is not text is a ``ValueError`` naming the file, the
    line and the byte, and an unreadable one the ``OSError`` of :func:`path_error`. ``what`` (a flag,
    ``--config``) goes before the path."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise path_error(e, label, "cannot read") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad = f"byte 0x{data[e.start]:02x} at offset {e.start}"
        raise ValueError(f"{label}:{line}: not UTF-8 text ({bad}); save the file as UTF-8") from None


def check_free_space(path: str | Path, label: str | None = None) -> None:
    """Refuse up front when the file system holding ``path`` (its nearest existing folder) has no
    space left: a run that would only fail when it writes its result is not started."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows) or not stat-able: the write will say
        return
    if st.f_bavail * st.f_frsize == 0:
        raise OSError(errno.ENOSPC, _REASONS[errno.ENOSPC], label or str(path))


def probe_writable(folder: str | Path, label: str) -> None:
    """Create and remove one empty file in ``folder`` (an existing directory): what ``os.access``
    cannot tell (a read-only mount looks writable to root; permissions say nothing of ACLs or
    quotas). Raises the :func:`path_error` of ``label``, the output the check is for."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".arvid-probe-", dir=folder)
    except OSError as e:
        raise path_error(e, label, f"cannot write in {folder}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    check_free_space(folder, label)


def check_writable_dir(folder: str | Path, label: str) -> None:
    """Files can be created in ``folder``, or in the nearest existing folder above it (the missing
    ones are created when written), on a file system with space left; checked before the work that
    writes there, so the work is not lost at its end. Errors name ``label`` (the output, its flag)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{label}: {existing} is not a directory")
    probe_writable(existing, label)


@contextlib.contextmanager
def removed_on_failure(folder: str | Path) -> Iterator[Path]:
    """Within the block, ``folder`` is removed again (with what was written into it) if the block
    fails and the folder did not exist before it: no half-filled output folder is left behind, and
    a folder that was there is never touched."""
    import shutil

    folder = Path(folder)
    created = not folder.exists()
    try:
        yield folder
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix (for writers that pick the format from it). If
    ``write`` fails, nothing is left behind and an existing ``path`` is untouched. The file gets the
    permissions of a plain ``open`` (0666 less the umask: 0644 under umask 022), whatever the writer
    used (safetensors creates 0600 files). Returns ``path``. An ``OSError`` (read-only file system,
    full disk, a file where a folder should be) comes out as :func:`path_error` of ``path``, never of
    the temporary name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:
        if getattr(e, "worded", False):  # already one line naming its path (a nested write's)
            raise
        ours = e.filename is None or str(e.filename) in (str(tmp), str(path))
        raise path_error(e, path if ours else e.filename, "cannot write") from e
    finally:
        # On a read-only file system unlinking even a missing file fails (EROFS): nothing to remove then.
        with contextlib.suppress(OSError):
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


def write_safetensors(
    path: str | Path,
    tensors: dict,
    metadata: dict[str, str] | None = None,
    before_rename: Callable[[Path], object] | None = None,
) -> Path:
    """Write ``tensors`` (name -> contiguous tensor) to a ``.safetensors`` file atomically, byte-reproducibly.

    The one safetensors writer of every layer. ``safetensors`` serializes the metadata from a Rust
    hash map, so its key order (and the file's bytes) change from one process to the next; the
    header is rewritten here with every key sorted (same length: only the order changes), so the
    same tensors and metadata give the same bytes. Metadata values must be strings.
    ``before_rename(tmp)``, when given, runs on the complete temporary file before it is moved into
    place (to write a companion file first: if that fails, ``path`` is left as it was).
    """
    import json
    import re

    from safetensors.torch import save_file

    meta = dict(metadata or {})
    bad = {k: type(v).__name__ for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"{path}: safetensors metadata must map strings to strings, got {bad}")

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=meta or None)
        except Exception as e:
            # safetensors' Rust writer raises SafetensorError("... (os error 28)"), not an OSError:
            # made one here, so a full disk is the one-line error of every other write.
            m = re.search(r"\(os error (\d+)\)", str(e))
            if m is None:
                raise
            code = int(m.group(1))
            raise OSError(code, os.strerror(code), str(tmp)) from e
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
        if before_rename is not None:
            before_rename(tmp)

    return atomic_write(path, write)
