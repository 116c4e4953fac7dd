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


def free_bytes(device: torch.device | str) -> int | None:
    """Memory a new allocation can take on ``device``: CUDA's free memory, or the machine's available
    RAM (psutil) for the CPU; None where it cannot be told."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            import psutil

            return int(psutil.virtual_memory().available)
    except (RuntimeError, OSError, ImportError):
        return None
    return None


def gib(nbytes: float) -> str:
    """``12.3 GiB`` (or MiB below one GiB): how sizes are written in messages."""
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def check_fits(nbytes: int, device: torch.device | str, what: str) -> None:
    """Refuse (``ValueError``, before allocating) ``nbytes`` for ``what`` when ``device`` has less free:
    the size that would be needed, and what there is, instead of an allocator's error from deep inside
    (or the kernel's OOM killer on a CPU, which would take the run's other outputs with it)."""
    free = free_bytes(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs {gib(nbytes)}, but only {gib(free)} is free on {torch.device(device)}")


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
