"""Writing output files: the one atomic write every layer above uses (never a partly written output)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix (for writers that pick the format from it). If
    ``write`` fails, nothing is left behind and an existing ``path`` is untouched. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
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
