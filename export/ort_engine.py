"""ONNX Runtime as an engine: one ``InferenceSession`` per exported graph, called with torch tensors.

The CPU provider everywhere; the CUDA provider where ``onnxruntime-gpu`` is installed and the
tensors are on a GPU (then inputs and outputs are bound by address through I/O binding, so no
host copies). Inputs are given and outputs returned in the graph's declared order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from arvid.runtime.optional import require


def _ort():
    """onnxruntime, or the one-line install hint (this module is its one importer: ``onnx_export`` runs
    its parity through :class:`OrtGraph`, and nothing here imports ``onnx_export`` back)."""
    return require("onnxruntime", purpose="the ONNX Runtime engine")


_NP = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.bool: np.bool_,
    torch.uint8: np.uint8,
    torch.int8: np.int8,
}
_ORT_TO_TORCH = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(bfloat16)": torch.bfloat16,
    "tensor(int32)": torch.int32,
    "tensor(int64)": torch.int64,
    "tensor(bool)": torch.bool,
}


def default_providers(device: torch.device | str = "cpu") -> list[str]:
    """``CUDAExecutionProvider`` first when the device is a GPU and ORT has it; always the CPU one."""
    ort = _ort()
    device = torch.device(device)
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                "the ort engine on CUDA needs onnxruntime-gpu (pip install onnxruntime-gpu); "
                f"this onnxruntime has {available}"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtGraph:
    """``OrtGraph(path)(*tensors) -> tuple of tensors`` over one ONNX graph.

    Parameters
    ----------
    threads : intra-op threads (``None``: ORT's default; benchmarks pass torch's thread count).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: list[str] | None = None,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> None:
        ort = _ort()
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no ONNX graph at {path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.device = torch.device(device)
        self.providers = providers or default_providers(self.device)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._out_types = [_ORT_TO_TORCH.get(o.type) for o in self.session.get_outputs()]
        self._cuda = self.providers[0] == "CUDAExecutionProvider"
        self.path = path

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.path.name}: takes {len(self.input_names)} inputs, got {len(inputs)}")
        if self._cuda:
            return self._run_bound(inputs)
        feed = {}
        for name, x in zip(self.input_names, inputs, strict=True):
            x = x.detach()
            if x.dtype not in _NP:
                raise ValueError(
                    f"{self.path.name}: input {name!r} has dtype {x.dtype}, which the CPU engine cannot feed"
                )
            feed[name] = x.cpu().contiguous().numpy()
        outs = self.session.run(self.output_names, feed)
        return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(self.device) for o in outs)

    def _run_bound(self, inputs) -> tuple[torch.Tensor, ...]:
        """CUDA provider: inputs bound in place by address, outputs allocated by ORT on the GPU."""
        binding = self.session.io_binding()
        keep = []
        for name, x in zip(self.input_names, inputs, strict=True):
            x = x.detach().contiguous()
            keep.append(x)
            if x.dtype not in _NP:
                raise ValueError(f"{self.path.name}: input {name!r} has dtype {x.dtype}, which numpy cannot describe")
            binding.bind_input(name, "cuda", x.device.index or 0, _NP[x.dtype], list(x.shape), x.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device.index or 0)
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return tuple(
            torch.from_dlpack(o.to_dlpack()) if hasattr(o, "to_dlpack") else torch.tensor(o.numpy()) for o in outs
        )
