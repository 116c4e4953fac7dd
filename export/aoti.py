"""AOTInductor packages of the exported chunk step, and the ``aoti`` executor built on them.

``torch.export.export(strict=False)`` of a graph of :mod:`arvid.export.graphs` (the one graph
definition every exporter shares), then ``torch._inductor.aoti_compile_and_package`` gives a
``.pt2`` package: C++ kernels on the CPU, Triton kernels on CUDA. The package loads in Python
(:func:`load_package`) and in libtorch C++ (``AOTIModelPackageLoader``, used by the native
streamer ``arvid-stream`` under ``native/``).

The weights are not inside the packages: every package of a directory reads its constants from
the one ``weights.safetensors`` beside it (``aot_inductor.package_constants_in_so=False``), which
the loaders hand to the runner (``load_constants``). Inside the ``.so``, inductor first copies every
constant into one buffer of the weights' size, and the packaging reads the ``.so`` back whole: at
1.3B that was the export's peak, 5.71 GiB of a 2.36 GiB model (measured). Outside, the export
holds the model once, the weights are written once for all of a directory's packages (a stream's
step and re-cache packages held four copies), and the ``aoti`` executor hands the runner the
model's own tensors, so no second copy of the weights sits in (GPU) memory either. A package
loaded by ``torch._inductor.aoti_load_package`` alone has no weights: its metadata says where they are.

One output directory holds one graph kind and its ``export.json`` manifest:

- ``step``: one DiT forward over a chunk (``step_f3.pt2``); the host runs it 5 times per chunk.
- ``chunk``: the whole chunk (4 denoising steps, re-noise, clean-context pass; ``chunk_f3.pt2``).
- ``recache``: the re-cache forwards at a prompt switch, one package per span length
  (``recache_f{n}.pt2``; by default every length the stream settings can ask for).

The manifest is written last and atomically; its ``key`` covers everything that decides the
packages (graph, frames, configs, weight hash, shapes, device, versions), so an export whose key
matches the directory's reuses it: the compile (tens of seconds per package on a CPU) runs once.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.export.graph_signature import InputKind

from arvid.runtime.config import DIT_GRAPH_KINDS, StreamConfig
from arvid.runtime.files import write_safetensors

from . import manifest as mf
from .graphs import graph_stream, graph_tensors, recache_graph_spans
from .parity import max_abs_diff, relative_l2, too_slow_for_parity
from .progress import peak_rss_bytes, stage


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


FORMAT = "aoti"
WEIGHTS_FILE = "weights.safetensors"  # every package's constants, beside the packages
# the constants stay out of the .so (module docstring); the metadata tells a bare loader where they are.
# Copied per compile: torch adds its own keys to the dict it is given (aot_inductor.package, device metadata).
INDUCTOR_CONFIGS = {
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.metadata": {"arvid_constants": WEIGHTS_FILE},
}


# -- manifest (export/manifest.py writes and reads it) ----------------------------------------
AOTI_FIELDS = ("graph", "packages", "device", "weights_sha256")


def read_manifest(out_dir: str | Path) -> dict:
    """``out_dir/export.json`` of an AOTInductor export; one-line ``ValueError`` when it is not one."""
    return mf.read_manifest(out_dir, format=FORMAT, require=AOTI_FIELDS)


# -- export ------------------------------------------------------------------------------------
def _graph_frames(graph: str, stream: StreamConfig, recache_frames: Sequence[int] | None) -> list[int]:
    if graph not in DIT_GRAPH_KINDS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(DIT_GRAPH_KINDS)}")
    if graph != "recache":
        return [stream.chunk_frames]
    frames = sorted(set(recache_frames or recache_graph_spans(stream)))
    for f in frames:
        if f <= 0 or f % stream.chunk_frames or f > stream.attention_frames:
            raise ValueError(
                f"re-cache span {f} must be a multiple of the chunk ({stream.chunk_frames}) "
                f"in [{stream.chunk_frames}, {stream.attention_frames}]"
            )
    return frames


def _name_lifted_constants(ep: torch.export.ExportedProgram) -> None:
    """Make the graph's lifted tensor constants non-persistent buffers, in place.

    Tensors the graph reads outside module attributes (the RoPE tables, which the model's
    ``RopeTables`` owns) are lifted as constants, and AOTInductor names those ``_tensor_constant<i>``
    in the order it meets them: a name nothing outside the package can map to a value. As buffers
    they keep their export name (``model.blocks.0.self_attn.lifted_tensor_0``), which keys them in
    the weights file. Both kinds are in ``ep.constants``; only the name inductor gives changes."""
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.CONSTANT_TENSOR:
            spec.kind, spec.persistent = InputKind.BUFFER, False


def _writable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` as safetensors takes them: contiguous, each alone in its storage. The model's
    weights already are, and are written from where they lie, without a copy; anything else (a view,
    an alias) is cloned."""
    out, seen = {}, set()
    for name in sorted(tensors):
        t = tensors[name].detach()
        storage = t.untyped_storage()
        alone = t.is_contiguous() and t.nbytes == storage.nbytes() and storage.data_ptr() not in seen
        seen.add(storage.data_ptr())
        out[name] = t if alone else t.clone()
    return out


def _set_constants(runner, constants: dict[str, torch.Tensor], path: Path) -> None:
    """Give ``runner`` its constants without a copy (``user_managed``). torch 2.13's runner takes a
    reference to each tensor and never drops it, even when the runner is deleted (a tensor's use count
    rises by one per load, measured): the tensors live at least as long as the runner, and the model's
    weights handed to one stay allocated for the life of the process. Callers keep their own references
    too (:attr:`AotiGraphs.constants`), for a torch that would hold raw pointers instead."""
    try:
        runner.load_constants(constants, check_full_update=True, user_managed=True)
    except RuntimeError:  # its message is a C++ call site ("API call failed at ..."); the reason went to stderr
        raise ValueError(f"package {path}: its constants do not load (see the error above); export it again") from None


def export_aoti(
    model: torch.nn.Module,
    *,
    graph: str,
    stream: StreamConfig,
    latent_size: tuple[int, int],
    out_dir: str | Path,
    batch_size: int = 1,
    rope_positions: int | None = None,
    recache_frames: Sequence[int] | None = None,
    reuse: bool = True,
    log=None,
) -> dict:
    """Export ``graph`` (``step``, ``chunk`` or ``recache``) as ``.pt2`` packages plus ``export.json``.

    Returns the manifest. With ``reuse`` a directory whose manifest has the same key is kept as is.
    Parity with the eager graph on its example inputs is measured after each compile and recorded.
    """
    from arvid.export.graphs import build_graph

    out_dir = Path(out_dir)
    frames = _graph_frames(graph, stream, recache_frames)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype

    def make(f: int):
        return build_graph(
            graph, model, stream=stream, latent_size=latent_size, batch_size=batch_size,
            num_frames=f if graph == "recache" else None, rope_positions=rope_positions or 0,
        )  # fmt: skip

    graphs = {frames[0]: make(frames[0])}  # building a graph is cheap (no trace): it settles the RoPE rows
    rope_positions = int(graphs[frames[0]].rope_positions)
    weights = mf.weight_hash(model)
    shapes = {"graph": graph, "latent_size": list(latent_size), "batch_size": batch_size, "dtype": dtype}
    key = mf.reuse_key(
        format=FORMAT, frames=frames, model_config=model.cfg, stream_config=graph_stream(stream),
        weights_sha256=weights, rope_positions=rope_positions, device=device.type, torch=torch.__version__, **shapes,
        constants=WEIGHTS_FILE,
    )  # fmt: skip
    if reuse and (old := mf.reusable(out_dir, key, format=FORMAT, require=AOTI_FIELDS)) is not None:
        if old["stream_config"] != mf._jsonable(stream):  # global_sink alone: the native streamer reads it here
            old = {**old, "stream_config": mf._jsonable(stream)}
            mf.write_manifest(out_dir, old)
        return old

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / mf.MANIFEST_NAME).unlink(missing_ok=True)  # the manifest's presence means "export finished"
    packages, parity, spec, constants = [], {}, None, {}
    for f in frames:
        g = graphs.pop(f, None) or make(f)
        name = f"{graph}_f{f}.pt2"
        # Progress on long work: a package compiles for tens of seconds on a CPU, minutes on CUDA (stderr).
        print(f"compiling {out_dir / name} (AOTInductor, {g.device}) ...", file=sys.stderr, flush=True)
        skip = too_slow_for_parity(device, dtype, g.flops())
        t0 = time.perf_counter()
        with torch.no_grad():
            args = ref = None
            if skip is None:
                with stage(_progress, f"{name}: example inputs and the eager reference"):
                    args = g.example_inputs()
                    ref = g(*args)
            with stage(_progress, f"{name}: torch.export"):
                # placeholders where no parity runs: a trace reads shapes only, and the 1.3B example cache
                # (3.45 GB in bf16) would be the largest thing in memory
                ep = torch.export.export(g, args or g.placeholder_inputs(), strict=False)
                _name_lifted_constants(ep)
                tensors = {**ep.state_dict, **ep.constants}  # the model's own tensors: no copy
            t1 = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp, warnings.catch_warnings():
                # torch 2.13 deep-copies its own pytree specs here and warns once per package
                # ("isinstance(treespec, LeafSpec) is deprecated"): nothing an arvid user can act on
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
                with stage(_progress, f"{name}: AOTInductor compile"):
                    built = torch._inductor.aoti_compile_and_package(
                        ep, package_path=str(Path(tmp) / name), inductor_configs=copy.deepcopy(INDUCTOR_CONFIGS)
                    )
                del ep
                t2 = time.perf_counter()
                runner = _load_one(Path(built), device)  # no weights in it: cheap, and it names its constants
                needed = runner.get_constant_fqns()
                missing = sorted(set(needed) - set(tensors))
                if missing:  # a constant inductor made up itself would have no value to write
                    raise RuntimeError(f"{name}: the package needs constants the graph does not name: {missing[:5]}")
                for n in needed:  # one file for the folder: a name must mean the same tensor in every package
                    if n in constants and not torch.equal(constants[n], tensors[n]):
                        raise RuntimeError(f"{name}: constant {n!r} differs from the folder's other packages")
                    constants.setdefault(n, tensors[n])
                got = None
                if skip is None:
                    with stage(_progress, f"{name}: load the package and run it"):
                        _set_constants(runner, {n: tensors[n] for n in needed}, Path(built))
                        got = runner(*args)
                del runner, tensors
                os.replace(built, out_dir / name)
        s = g.spec()
        spec = spec or mf.spec_dict(s)
        packages.append(
            {"file": name, "num_frames": f, "spec": mf.spec_dict(s), "export_s": round(t1 - t0, 3),
             "compile_s": round(t2 - t1, 3)}
        )  # fmt: skip
        if skip is None:
            names = [f"output_{i}" for i in range(len(ref))]
            diff = max(max_abs_diff(got, ref, names).values())
            rel = max(relative_l2(got, ref, names).values())
            parity[name] = {"max_abs_diff": diff, "rel_l2": rel, "vs": "eager graph on its example inputs"}
            measured = f"max |aoti - eager| {diff:.2e}, relative L2 {rel:.1e}"
        else:
            parity[name] = {"skipped": skip}
            measured = f"parity skipped: {skip}"
        del args, ref, got
        if log:
            log(f"{name}: export {t1 - t0:.1f} s, compile {t2 - t1:.1f} s, {measured}")
    with stage(_progress, f"{WEIGHTS_FILE}: {len(constants)} constants"):
        write_safetensors(out_dir / WEIGHTS_FILE, _writable(constants))
    del constants
    files = [p["file"] for p in packages] + [WEIGHTS_FILE]
    manifest = mf.build_manifest(
        artifact=[p["file"] for p in packages],
        format=FORMAT,
        spec=spec,
        key=key,
        model_config=model.cfg,
        stream_config=stream,
        weights=weights,
        device=device,
        parity=parity,
        rope_positions=rope_positions,
        extra={
            **shapes,
            "packages": packages,
            "weights_file": WEIGHTS_FILE,
            "files": mf.file_digests(out_dir, files),
            "export_s": round(time.perf_counter() - started, 2),
            "peak_rss_bytes": peak_rss_bytes(),
        },
    )
    mf.write_manifest(out_dir, manifest)
    return manifest


def export_stream_packages(
    model: torch.nn.Module,
    *,
    stream: StreamConfig,
    latent_size: tuple[int, int],
    cache_dir: str | Path,
    batch_size: int = 1,
    rope_positions: int | None = None,
    graph: str = "step",
    recache_frames: Sequence[int] | None = None,
    log=None,
) -> list[Path]:
    """The packages a whole stream needs (``step``, with ``graph="chunk"`` also ``chunk``, and
    ``recache``), each in ``cache_dir/<graph>`` and reused when its key matches; returns the
    directories. The step serves the one-chunk re-cache span too."""
    if graph not in ("step", "chunk"):
        raise ValueError(f"a stream runs the 'step' or the 'chunk' graph, not {graph!r}")
    cache_dir = Path(cache_dir)
    dirs = []
    for kind in ("step", "chunk", "recache") if graph == "chunk" else ("step", "recache"):
        d = cache_dir / kind
        export_aoti(
            model, graph=kind, stream=stream, latent_size=latent_size, out_dir=d, batch_size=batch_size,
            rope_positions=rope_positions, recache_frames=recache_frames, log=log,
        )  # fmt: skip
        dirs.append(d)
    return dirs


# -- load --------------------------------------------------------------------------------------
@dataclasses.dataclass
class AotiGraphs:
    """Loaded packages of one or more export directories: callables in the spec's input order."""

    manifests: list[dict]
    step: Any = None
    chunk: Any = None
    recache: dict[int, Any] = dataclasses.field(default_factory=dict)
    constants: list[dict[str, torch.Tensor]] = dataclasses.field(default_factory=list)  # the runners' (_set_constants)


def _load_one(path: Path, device: torch.device):
    if not path.is_file():
        raise ValueError(f"package {path} is missing")
    try:
        kwargs = {"device_index": device.index if device.index is not None else 0} if device.type == "cuda" else {}
        return torch._inductor.aoti_load_package(str(path), **kwargs)
    except Exception as e:  # a truncated zip, a foreign file, a package of another torch: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"package {path} is corrupt or not an AOTInductor package ({first[:200]})") from None


class _Constants:
    """The constants of the packages of one :func:`load_package` call, each tensor loaded once per
    device: the caller's own (``live``, the model's tensors: no copy) where name, device, shape and dtype
    agree, else read from the directory's weights file. Directories of the same weights share them."""

    def __init__(self, live: dict[str, torch.Tensor] | None) -> None:
        self.live, self.loaded = live or {}, {}

    def take(self, d: Path, manifest: dict, names: set[str], device: torch.device) -> dict[str, torch.Tensor]:
        """``names`` (every package of directory ``d``) from its weights file or ``live``, on ``device``."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import _getdtype  # the file's dtype names, as safetensors reads them

        path = d / manifest["weights_file"]
        if not path.is_file():
            raise ValueError(f"{path} is missing: the packages of {d} take their weights from it; export them again")
        want = (manifest.get("files") or {}).get(manifest["weights_file"], {}).get("bytes")
        if want is not None and path.stat().st_size != want:  # another export's file, or a cut-short copy
            raise ValueError(f"{path} holds {path.stat().st_size:,} bytes, the manifest {want:,}; export them again")
        out = {}
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                have = set(f.keys())
                for name in sorted(names):
                    if name not in have:
                        raise ValueError(f"{path} has no tensor {name!r}, which its packages need; export them again")
                    sl = f.get_slice(name)
                    # lifted constants are numbered per graph (_name_lifted_constants): shared within a folder only
                    owner = manifest["weights_sha256"] if "lifted_tensor" not in name else str(d.resolve())
                    key = (owner, name, device, tuple(sl.get_shape()), _getdtype(sl.get_dtype()))
                    if key not in self.loaded:
                        t = self.live.get(name)
                        same = t is not None and (t.device, tuple(t.shape), t.dtype) == key[2:]
                        if not (same and t.is_contiguous()):  # the package was compiled for contiguous weights
                            t = f.get_tensor(name)
                        self.loaded[key] = t
                    out[name] = self.loaded[key]
        except (SafetensorError, OSError) as e:  # a cut-short or foreign file: one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{path} is not a readable weights file ({first[:200]})") from None
        return out


def load_package(
    dirs: str | Path | Sequence[str | Path],
    *,
    device: torch.device | str | None = None,
    expect: dict[str, Any] | None = None,
    live: dict[str, torch.Tensor] | None = None,
) -> AotiGraphs:
    """Load the packages of export directories, refusing with one clear line a manifest made for
    another device, or whose fields differ from ``expect`` (e.g. ``weights_sha256``,
    ``model_config``, ``latent_size``, ``batch_size``), or a corrupt package.

    Each package gets its constants from its directory's weights file, or from ``live`` (name ->
    tensor, e.g. :func:`~arvid.export.graphs.graph_tensors` of the model in memory, whose weights
    the caller has checked against the manifest's ``weights_sha256``) where a tensor there has the
    file's shape and dtype and sits on the run's device."""
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    out = AotiGraphs(manifests=[])
    constants = _Constants(live)
    for d in map(Path, dirs):
        m = read_manifest(d)
        built = torch.device(m["device"]["device"])
        if device is not None and torch.device(device).type != built.type:
            raise ValueError(
                f"{d}: the packages were built for {built.type}, this run is on {torch.device(device).type}; "
                f"export them on a {torch.device(device).type} machine"
            )
        for field, want in (expect or {}).items():
            have = m.get(field)
            if mf._jsonable(want) != have:
                raise ValueError(f"{d}: manifest {field} is {have!r}, this run needs {mf._jsonable(want)!r}")
        run_dev = torch.device(device) if device is not None else built
        if run_dev.type == "cuda" and run_dev.index is None:
            run_dev = torch.device("cuda", 0)
        runners = [(p, _load_one(d / p["file"], run_dev)) for p in m["packages"]]
        if "weights_file" in m:  # else an export of before: the weights are inside the package
            consts = constants.take(d, m, {n for _, fn in runners for n in fn.get_constant_fqns()}, run_dev)
            for p, fn in runners:
                _set_constants(fn, {n: consts[n] for n in fn.get_constant_fqns()}, d / p["file"])
            out.constants.append(consts)
        for p, fn in runners:
            if m["graph"] == "step":
                out.step = fn
            elif m["graph"] == "chunk":
                out.chunk = fn
            else:
                out.recache[int(p["num_frames"])] = fn
        out.manifests.append(m)
    return out


# -- inputs of the native streamer ---------------------------------------------------------------
def stream_inputs(
    model: torch.nn.Module,
    prompt_embeds: Sequence[torch.Tensor],
    *,
    stream: StreamConfig,
    noise: torch.Tensor,
    renoise: torch.Tensor,
    switch_frames: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """The tensors ``arvid-stream --inputs`` reads: noise, renoise, the prompts' cross-attention
    K/V ``text_k/text_v [P, L, B, H, Lt, D]`` (computed here, so the C++ side needs no text path)
    and ``switch_frames``. Save with :func:`arvid.runtime.files.write_safetensors`."""
    from arvid.runtime import validate_schedule

    switches = validate_schedule(noise.shape[1], len(prompt_embeds), switch_frames, stream.chunk_frames)
    dev = next(model.parameters()).device
    with torch.no_grad():
        kvs = [model.text_kv(e.to(dev)) for e in prompt_embeds]
    text_k = torch.stack([torch.stack([k for k, _ in kv]) for kv in kvs]).cpu().contiguous()
    text_v = torch.stack([torch.stack([v for _, v in kv]) for kv in kvs]).cpu().contiguous()
    return {
        "noise": noise.float().cpu().contiguous(),
        "renoise": renoise.float().cpu().contiguous(),
        "text_k": text_k,
        "text_v": text_v,
        "switch_frames": torch.tensor(switches, dtype=torch.int64),
    }


# -- the `aoti` executor -------------------------------------------------------------------------
def package_dir(cache: str | Path, model, stream: StreamConfig, latent_size, batch_size: int) -> Path:
    """The cache folder of one model's packages at one geometry and stream settings: everything the
    packages' export key holds (weights, shapes, device, the stream settings) names it, so streams with
    other settings keep their packages beside these instead of compiling over them (LongLive's
    scenarios in one process compiled every package for each)."""
    weights = mf.weight_hash(model)
    device = next(model.parameters()).device
    h, w = latent_size
    settings = mf.reuse_key(stream=graph_stream(stream), model=model.cfg, dtype=next(model.parameters()).dtype)[:8]
    return Path(cache) / f"{weights[:16]}-{h}x{w}-b{batch_size}-{device}-s{settings}"


def aoti_executor(model, stream, *, latent_size, batch_size, flags=frozenset(), **options):
    """A ``GraphRunner`` over AOTInductor packages.

    Options: ``package_dirs`` (directories of ``arvid export aoti``; default: export into
    ``cache_dir``, default :func:`~arvid.export.artifacts.aoti_cache_root`, once per model, shapes, device and
    stream settings (:func:`package_dir`), then reuse).
    Flags: ``chunk`` runs the whole-chunk package instead of 5 step calls; ``graphs`` (CUDA only)
    captures each chunk's package calls, re-noising and ring writes as a CUDA graph.
    """
    from arvid.runtime.chunk_runner import GraphRunner

    unknown = set(options) - {"package_dirs", "cache_dir"}
    if unknown:
        raise ValueError(f"executor 'aoti' takes the options package_dirs, cache_dir; got {sorted(unknown)}")
    param = model.patch_embedding.weight
    device = param.device
    if "graphs" in flags and device.type != "cuda":
        raise ValueError(f"aoti+graphs captures CUDA graphs: it needs a CUDA device, the model is on {device}")
    weights = mf.weight_hash(model)
    dirs = options.get("package_dirs")
    if not dirs:
        from .artifacts import aoti_cache_root

        cache = package_dir(options.get("cache_dir") or aoti_cache_root(), model, stream, latent_size, batch_size)
        dirs = export_stream_packages(
            model, stream=stream, latent_size=latent_size, cache_dir=cache, batch_size=batch_size,
            graph="chunk" if "chunk" in flags else "step",
        )  # fmt: skip
    expect = {"weights_sha256": weights, "latent_size": list(latent_size), "batch_size": batch_size}
    # the model's own tensors as the packages' constants: no second copy of the weights on the device
    graphs = load_package(dirs, device=device, expect=expect, live=graph_tensors(model))
    if graphs.step is None:
        raise ValueError("the aoti executor needs a step package (arvid export aoti --graph step)")
    if "chunk" in flags and graphs.chunk is None:
        raise ValueError("aoti+chunk needs a chunk package (arvid export aoti --graph chunk)")
    for m in graphs.manifests:
        for field in ("chunk_frames", "sink_frames", "attention_frames"):
            if m["stream_config"][field] != getattr(stream, field):
                raise ValueError(f"the packages were exported for {field}={m['stream_config'][field]}, "
                                 f"the stream has {getattr(stream, field)}")  # fmt: skip
    cls = _CudaGraphRunner if "graphs" in flags else GraphRunner
    return cls(
        model.cfg, stream, latent_size=latent_size, batch_size=batch_size, device=device, dtype=param.dtype,
        step=graphs.step, chunk=graphs.chunk if "chunk" in flags else None, recache_steps=graphs.recache,
        rope_positions=min(m["rope_positions"] for m in graphs.manifests),
    )  # fmt: skip


def _cuda_graph_runner_class():
    from arvid.runtime.chunk_runner import GraphRunner

    class CudaGraphRunner(GraphRunner):
        """``GraphRunner`` whose chunks replay CUDA graphs of the package calls.

        Everything a captured chunk touches sits at a fixed address: the input noise and re-noise
        buffers, the text K/V (``set_prompt`` copies into them), the host ring and the plan's
        device scalars, filled before each replay (outside the graph). The ring write's slice
        start is a host value baked into the graph, so there is one graph per write slot (the
        sink slot and the window slots); the valid length is a device scalar, so fill states
        share a graph. Re-caches run without a graph (once per switch).
        """

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
            self._pool = None
            self._x_in = self._renoise = self._x0 = None
            self._in_graph = False

        def set_prompt(self, text_kv) -> None:
            k = torch.stack([k for k, _ in text_kv])
            v = torch.stack([v for _, v in text_kv])
            if self.text_k is None or self.text_k.shape != k.shape:
                self.text_k, self.text_v = k, v
                self.graphs.clear()
            else:
                self.text_k.copy_(k)
                self.text_v.copy_(v)

        def _state(self, plan):
            if not self._in_graph:  # inside a capture, fill_ of a host value would be baked in
                plan.load(self.plan_tensors)
            pt = self.plan_tensors
            return (self.text_k, self.text_v, self.k, self.v, pt.write_start, pt.kv_len, pt.frame_offset)

        def _body(self, plan) -> None:
            # The given plan, never a fresh one from the planner: the slice start of the ring write
            # is baked into the graph, so the captured body must write the slots of the plan it is
            # keyed by; the host commits after each replay.
            x0, new_k, new_v = self.chunk_outputs(plan, self._x_in, list(self._renoise))
            self._write_slots(plan, new_k, new_v)
            self._x0.copy_(x0)

        def run_chunk(self, noise, renoise, frame_start: int) -> torch.Tensor:
            import time

            t0 = time.perf_counter()
            if self._x_in is None:
                self._x_in = torch.zeros_like(noise, device=self.device, dtype=torch.float32)
                self._renoise = torch.zeros(len(renoise), *noise.shape, device=self.device)
                self._x0 = torch.zeros_like(self._x_in)
            self._x_in.copy_(noise)
            for si, r in enumerate(renoise):
                self._renoise[si].copy_(r)
            plan = self.planner.plan_chunk(frame_start)
            plan.load(self.plan_tensors)  # outside the graph, before the replay
            graph = self.graphs.get(plan.write_start)
            if graph is None:
                graph = self._capture(plan)
            graph.replay()
            self.planner.commit(plan)
            self.last_host_ms = (time.perf_counter() - t0) * 1000
            return self._x0

        def _capture(self, plan) -> torch.cuda.CUDAGraph:
            import time

            from arvid.runtime.graphs import capture_graph

            t0 = time.perf_counter()
            self._in_graph = True
            try:  # one warm-up: the package's first run, the allocator
                graph = capture_graph(lambda: self._body(plan), device=self.device, pool=self._pool, warmups=1)
            finally:
                self._in_graph = False
            self._pool = graph.pool()
            self.graphs[plan.write_start] = graph
            self.capture_seconds += time.perf_counter() - t0
            return graph

    return CudaGraphRunner


# Registered with the runtime by name ("aoti" -> "arvid.export.aoti:aoti_executor" in
# arvid/runtime/executors.py): this module is imported on the first aoti run, not on every start.
_CudaGraphRunner = _cuda_graph_runner_class()
