"""``export.json``: the manifest every exported artifact carries (ONNX, Q/DQ ONNX, TensorRT, AOTInductor).

One generic record per output directory: the graph's I/O spec, the stream and model configs, a
hash of the weights, the software versions, device, opset, the parity measured against eager at
export time, the RoPE table size baked into the graph, free-form notes, and a *reuse key*: an
export whose key equals the one on disk reuses the artifact instead of rebuilding it.

Written atomically (temporary file + rename), so a directory never holds a half-written manifest.
The manifest is written *last*, after the artifact: its presence means the export finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from arvid.runtime.files import atomic_write, read_text

MANIFEST_NAME = "export.json"
MANIFEST_VERSION = 1


def _jsonable(obj: Any) -> Any:
    """Configs, dtypes, tuples and tensors as plain JSON values (deterministic)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, torch.Size):
        return list(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def spec_dict(spec: Any) -> dict:
    """A graph spec (``GraphSpec`` of export.graphs, or any object / dict with ``name``, ``inputs``,
    ``outputs`` of ``(name, shape, dtype)`` records and optional ``meta``) as JSON."""
    if isinstance(spec, Mapping):
        get = spec.get
    else:

        def get(key, default=None):
            return getattr(spec, key, default)

    def tensors(items) -> list[dict]:
        out = []
        for t in items or ():
            if isinstance(t, Mapping):
                name, shape, dtype = t["name"], t["shape"], t["dtype"]
            else:
                name, shape, dtype = t.name, t.shape, t.dtype
            out.append({"name": name, "shape": [int(s) for s in shape], "dtype": _jsonable(dtype)})
        return out

    return {
        "name": get("name"),
        "inputs": tensors(get("inputs")),
        "outputs": tensors(get("outputs")),
        "meta": _jsonable(get("meta") or {}),
    }


def weight_hash(module_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over the state-dict tensors in name order: each name, dtype, shape and raw bytes.

    A module's hash is computed once and kept on it (``_arvid_weight_hash``) with the identity of every
    tensor it covered: its storage address, shape, dtype and version counter, which every in-place
    write bumps (``copy_``, ``load_state_dict``, an optimizer step). Hashing the 1.3B model reads 2.8 GB,
    and an engine asks per graph kind per round: a ``bench --backend eager,ort`` of 3 rounds hashed 12
    times. A changed weight (or one assigned anew) changes the identity and is hashed again; a write
    through ``.data``, which bypasses the version counter, is not seen."""
    if isinstance(module_or_state, torch.nn.Module):
        sd = module_or_state.state_dict(keep_vars=True)
        try:
            ident = tuple(
                (n, t.data_ptr(), tuple(t.shape), t.dtype, t._version) if isinstance(t, torch.Tensor) else (n, repr(t))
                for n, t in sorted(sd.items())
            )
        except RuntimeError:  # inference tensors keep no version counter: hash every time
            return _hash_state(sd)
        memo = getattr(module_or_state, "_arvid_weight_hash", None)
        if memo is not None and memo[0] == ident:
            return memo[1]
        digest = _hash_state(sd)
        object.__setattr__(module_or_state, "_arvid_weight_hash", (ident, digest))
        return digest
    return _hash_state(module_or_state)


def _hash_state(sd: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r}".encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}".encode())
        if t.numel():  # the tensor's own bytes (a view, no copy)
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def file_digests(folder: str | Path, names: list[str]) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` of files in ``folder`` (an artifact and its external data), read in
    blocks: a 2.8 GB weights file costs its read, not its size in memory."""
    out = {}
    for name in names:
        path = Path(folder) / name
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
        out[name] = {"bytes": path.stat().st_size, "sha256": h.hexdigest()}
    return out


def versions() -> dict[str, str | None]:
    """Versions of what made the artifact (``None`` where a package is not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("arvid", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "nvidia-modelopt", "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["cuda"] = torch.version.cuda
    return out


def device_info(device: torch.device | str) -> dict[str, str]:
    device = torch.device(device)
    info = {"device": str(device)}
    if device.type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = "{}.{}".format(*torch.cuda.get_device_capability(device))
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def reuse_key(**parts: Any) -> str:
    """A stable key over everything that decides the artifact's contents (graph kind, configs,
    weight hash, quantization, opset, exporter, versions...): same key -> reuse the artifact."""
    blob = json.dumps(_jsonable(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def build_manifest(
    *,
    artifact: str | list[str],
    format: str,
    spec: Any,
    key: str,
    model_config: Any = None,
    stream_config: Any = None,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    opset: int | None = None,
    parity: Mapping[str, Any] | None = None,
    rope_positions: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The manifest record. ``format`` names the artifact type (``onnx``, ``onnx-qdq``, ``trt``,
    ``aoti``; the native streamer checks ``format == "aoti"``);
    ``parity`` is what was measured at export (e.g. ``{"max_abs_diff": ..., "vs": "eager"}``);
    ``extra`` holds anything artifact-specific (exporter, quantization, notes)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": format,
        "artifact": artifact,
        "key": key,
        "spec": spec_dict(spec),
        "model_config": _jsonable(model_config),
        "stream_config": _jsonable(stream_config),
        "weights_sha256": weights,
        "versions": versions(),
        "device": device_info(device),
        "opset": opset,
        "parity": _jsonable(dict(parity or {})),
        "rope_positions": rope_positions,
        **_jsonable(dict(extra or {})),
    }


def write_manifest(out_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``out_dir/export.json`` atomically; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST_NAME
    text = json.dumps(_jsonable(dict(manifest)), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


FORMAT_NAMES = {"aoti": "an AOTInductor export", "onnx": "an ONNX export", "onnx-qdq": "a Q/DQ ONNX export"}


def read_manifest(out_dir_or_file: str | Path, *, format: str | None = None, require: tuple[str, ...] = ()) -> dict:
    """Read a manifest (a directory holding ``export.json``, or the file itself); one-line
    ``ValueError`` when it is missing, unreadable, of another ``format`` or lacks a field of ``require``."""
    path = Path(out_dir_or_file)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"no export manifest at {path}")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid export manifest ({e})") from None
    if not isinstance(data, dict) or "key" not in data or "spec" not in data:
        raise ValueError(f"{path}: not an arvid export manifest (no key/spec)")
    if format is not None and data.get("format") != format:
        what = FORMAT_NAMES.get(format, f"a {format} export")
        raise ValueError(f"{path}: not {what} (format is {data.get('format')!r}, want {format!r})")
    for field in require:
        if field not in data:
            raise ValueError(f"{path}: manifest has no {field!r}")
    return data


def reusable(out_dir: str | Path, key: str, **read) -> dict | None:
    """The manifest in ``out_dir`` if it has ``key`` and every artifact it names exists, else ``None``
    (``read``: ``format`` / ``require`` of :func:`read_manifest`)."""
    try:
        data = read_manifest(out_dir, **read)
    except ValueError:
        return None
    if data.get("key") != key:
        return None
    artifacts = data.get("artifact")
    names = artifacts if isinstance(artifacts, list) else [artifacts]
    if not all(n and (Path(out_dir) / n).exists() for n in names):
        return None
    for name, rec in (data.get("files") or {}).items():  # external data too; a cut-short file is no reuse
        path = Path(out_dir) / name
        if not path.is_file() or path.stat().st_size != rec.get("bytes"):
            return None
    return data


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename."""
    atomic_replace(path, lambda tmp: tmp.write_bytes(data))


def atomic_replace(path: str | Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary onto ``path``; on failure nothing is left
    (``arvid.runtime.files.atomic_write``, the one atomic write)."""
    atomic_write(path, write)
