"""TensorRT engines from arvid's ONNX graphs (TensorRT 10 and 11, documented Python API only).

TensorRT is not installable on this project's machines, so this module is written to the
TensorRT Python API documentation and its tests skip without it (a fake ``tensorrt`` module
checks which calls are made for each version). Precision is never chosen by builder flags:

* TensorRT 10: the network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, so
  every tensor keeps the type the ONNX gives it (bf16 graphs stay bf16; Q/DQ graphs carry their
  own INT8 / FP8 scales).
* TensorRT 11: strong typing is always on; ``BuilderFlag.FP16/BF16/INT8/FP8`` and the INT8
  calibrators no longer exist, and nothing here uses them.

:class:`TrtEngine` runs a plan with torch tensors bound by name (``set_tensor_address``) and
``execute_async_v3`` on torch's current CUDA stream. Its outputs are preallocated once, so with
inputs at fixed addresses (the plan's device scalars, the ring buffer, a static latent buffer)
the enqueue can be captured in a CUDA graph (:meth:`TrtEngine.capture`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .manifest import atomic_write_bytes
from .onnx_check import MissingDependencyError

SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = "TensorRT is not installed (pip install tensorrt; needs an NVIDIA GPU and driver)"


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependencyError(f"{INSTALL_HINT}; {e}") from None
    return trt


def trt_major(trt=None) -> int:
    """TensorRT's major version; a ``ValueError`` for versions this module was not written for."""
    trt = trt or _trt()
    try:
        major = int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise ValueError(f"cannot read TensorRT's version from {trt.__version__!r}") from None
    if major not in SUPPORTED_MAJORS:
        raise ValueError(f"TensorRT {trt.__version__} is not supported; arvid builds engines with TensorRT 10 or 11")
    return major


def _torch_dtype(trt, dt):
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    for name, td in (("BF16", torch.bfloat16), ("INT64", torch.int64), ("UINT8", torch.uint8)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = td
    if hasattr(trt.DataType, "FP8"):
        table[trt.DataType.FP8] = torch.float8_e4m3fn
    if dt not in table:
        raise ValueError(f"TensorRT tensor type {dt} has no torch dtype here")
    return table[dt]


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    timing_cache: str | Path | None = None,
    refit: bool = False,
    workspace: int = 4 << 30,
    verbose: bool = False,
) -> dict:
    """Parse ``onnx_path`` and build a strongly typed engine into ``plan_path`` (atomically).

    Parameters
    ----------
    timing_cache : a file to read the builder's timing cache from (if it exists) and to write the
        updated cache back to: later builds of the same layers on the same GPU skip the tactic timing.
    refit : build a refittable engine (``BuilderFlag.REFIT``): weights can be swapped later
        (e.g. a new LoRA merge) without a rebuild.
    workspace : the builder's workspace memory pool limit in bytes.

    Returns
    -------
    ``{"plan", "tensorrt", "strongly_typed", "refit", "workspace", "timing_cache", "plan_bytes"}``.
    """
    trt = _trt()
    major = trt_major(trt)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise ValueError(f"no ONNX graph at {onnx_path}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if major == 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
    else:  # 11: strong typing is the only mode
        network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path.name}: TensorRT's ONNX parser failed: {errors or 'no error reported'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError(f"{onnx_path.name}: TensorRT could not build an engine (see the log above)")
    data = bytes(memoryview(plan))
    atomic_write_bytes(plan_path, data)
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "plan": str(plan_path),
        "tensorrt": str(trt.__version__),
        "strongly_typed": True,
        "refit": refit,
        "workspace": int(workspace),
        "timing_cache": str(cache_path) if cache_path else None,
        "plan_bytes": len(data),
    }


class TrtEngine:
    """A deserialized plan, called with torch CUDA tensors in the graph's input order.

    ``engine(*inputs) -> tuple(outputs)``: inputs are bound by name, outputs are buffers allocated
    once at construction (fixed addresses; the tuple returned is those buffers, overwritten by the
    next call: clone what must be kept).
    """

    def __init__(self, plan_path: str | Path, *, device: torch.device | str = "cuda") -> None:
        trt = _trt()
        trt_major(trt)
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError("TensorRT engines run on CUDA: no CUDA device here")
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise ValueError(f"no TensorRT plan at {plan_path}")
        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{plan_path.name}: TensorRT could not deserialize the plan (other version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.outputs = []
        for n in self.output_names:
            shape = tuple(self.engine.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise ValueError(f"output {n!r} has a dynamic shape {shape}: arvid's graphs are static")
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(n))
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(n, buf.data_ptr())
            self.outputs.append(buf)
        self._bound: list[torch.Tensor] = []
        self._graph: torch.cuda.CUDAGraph | None = None

    def bind(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the engine takes {len(self.input_names)} inputs, got {len(inputs)}")
        bound = []
        for name, x in zip(self.input_names, inputs, strict=True):
            if x.device != self.device or not x.is_contiguous():
                raise ValueError(f"input {name!r} must be a contiguous tensor on {self.device}")
            self.context.set_tensor_address(name, x.data_ptr())
            bound.append(x)
        self._bound = bound  # keeps the tensors alive while the engine may read them

    def enqueue(self) -> None:
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the log)")

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._graph is not None:
            raise ValueError("this engine is captured: fill its bound inputs and call replay()")
        self.bind(inputs)
        self.enqueue()
        return tuple(self.outputs)

    def capture(self, inputs: Sequence[torch.Tensor]) -> None:
        """Bind fixed-address ``inputs`` and capture the enqueue in a CUDA graph (after one warm-up
        enqueue, which lets TensorRT finish its lazy allocations outside the capture)."""
        self.bind(inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.enqueue()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.enqueue()
        self._graph = graph

    def replay(self) -> tuple[torch.Tensor, ...]:
        if self._graph is None:
            raise ValueError("capture() the engine first")
        self._graph.replay()
        return tuple(self.outputs)
