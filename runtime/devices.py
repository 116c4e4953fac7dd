"""Device and dtype helpers shared by the command line and the benchmarks, and the one capability check."""

from __future__ import annotations

import torch

from arvid.kernels import has_sm89

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA where present; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested, but CUDA is not available here "
            f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'})"
        )
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """Default: bf16 on CUDA, fp32 on the CPU."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def require_sm89(device: torch.device | str, what: str, *, hint: str = "", exc: type[Exception] = ValueError) -> None:
    """Raise ``exc`` naming ``what`` (and ``hint``, what to do instead) unless ``device`` is an sm_89+ GPU:
    the capability check of every FP8 e4m3 path."""
    device = torch.device(device)
    if has_sm89(device):
        return
    if device.type != "cuda":
        have = f"the model is on {device}"
    else:
        cap = torch.cuda.get_device_capability(device)
        have = f"{torch.cuda.get_device_name(device)} has compute capability {cap[0]}.{cap[1]}"
    raise exc(f"{what} needs an sm_89+ GPU (compute capability >= 8.9: Ada, Hopper, Blackwell); {have}" + hint)
