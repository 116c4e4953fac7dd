"""What a benchmark ran on: device, driver, clocks, threads, load, library versions, commit and command."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none, e.g. Windows)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def git_state() -> dict:
    """The commit arvid runs from and whether its work tree has uncommitted changes (None outside git)."""
    here = Path(__file__).resolve().parent
    commit = _run(["git", "rev-parse", "HEAD"], cwd=here)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here) if commit else None
    return {"git_commit": commit, "git_dirty": None if commit is None else bool(status)}


def gpu_clocks(device: torch.device) -> dict | None:
    """SM / memory clocks (current and max, MHz), temperature and power of a CUDA device, from nvidia-smi.

    Clocks below their maximum during a run mean thermal or power throttling (or a locked clock):
    numbers from such a run are not comparable with another machine's.
    """
    if device.type != "cuda":
        return None
    fields = ["clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "temperature.gpu", "power.draw"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    out = _run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if out is None:
        return None
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(fields, values, strict=False))


def environment(device: torch.device) -> dict:
    import arvid

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": load_average(),
        "arvid": arvid.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "driver": None,
        **git_state(),
        "command": " ".join(sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if device.type == "cuda":
        info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["gpu_clocks"] = gpu_clocks(device)
    return info
