"""Shared helpers for the Triton kernels: availability checks, interpreter detection, device limits.

Every kernel module imports Triton lazily through :func:`import_triton`, so that
``import arvid.kernels.<op>`` works on a machine without Triton (the PyTorch references
still run; the Triton entry points raise a clear ``RuntimeError``).
"""

from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Dtypes the kernels take: 16/32-bit activations; an e4m3 cache where this torch has the type.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn",) if hasattr(torch, n))
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)  # head dims the kernels are built and tested for


def check_cache_dtypes(
    name: str,
    act_dtype: torch.dtype,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> bool:
    """The one cache-dtype rule of every kernel that reads or writes a ring-buffer cache.

    A float cache has the activations' dtype (no silent cast on write, none on read); a
    float8_e4m3fn cache takes any of :data:`FLOAT_DTYPES` as activations and needs float32
    ``k_scale`` / ``v_scale`` ``[B, S, H]`` (``B, S, H`` of the cache), which only it may have.
    Errors start with ``name`` (the public function). Returns True for an FP8 cache.
    """
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"{name}: k_cache ({k_cache.dtype}) and v_cache ({v_cache.dtype}) dtypes differ")
    is_fp8 = k_cache.dtype in FP8_DTYPES
    if (k_scale is None) != (v_scale is None):
        raise ValueError(f"{name}: give both k_scale and v_scale, or neither")
    if not is_fp8:
        if k_scale is not None:
            raise ValueError(
                f"{name}: k_scale/v_scale are only for a float8_e4m3fn cache, the cache is {k_cache.dtype}"
            )
        if k_cache.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}: unsupported cache dtype {k_cache.dtype}")
        if k_cache.dtype != act_dtype:
            raise ValueError(
                f"{name}: the activations ({act_dtype}) and the cache ({k_cache.dtype}) must share a dtype "
                "(or the cache be float8_e4m3fn with scales)"
            )
        return False
    if k_scale is None:
        raise ValueError(f"{name}: a {k_cache.dtype} cache needs k_scale and v_scale [B, S, H] float32")
    b, s, h, _ = k_cache.shape
    for t, n in ((k_scale, "k_scale"), (v_scale, "v_scale")):
        if tuple(t.shape) != (b, s, h) or t.dtype != torch.float32:
            raise ValueError(f"{name}: {n} must be float32 [B={b}, S={s}, H={h}], got {t.dtype} {tuple(t.shape)}")
    return True


def import_triton():
    """``(triton, triton.language)``, or ``(None, None)`` where Triton does not import."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # ImportError, or a broken install raising something else
        return None, None
    return triton, tl


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        if isinstance(exc, ModuleNotFoundError) and exc.name == "triton":
            return "triton is not installed (pip install 'arvid[triton]', Linux)"
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return None


def triton_unavailable_reason() -> str | None:
    """Why the Triton kernels cannot run here, or ``None`` when they can."""
    err = _triton_import_error()
    if err is not None:
        return f"{err}; install triton (pip install 'arvid[triton]') or use the *_ref PyTorch reference"
    if not torch.cuda.is_available() and not interpreting():
        return (
            "no CUDA device is available and TRITON_INTERPRET=1 is not set; the Triton kernels need a GPU "
            "(or the CPU interpreter, for tests); use the *_ref PyTorch reference instead"
        )
    return None


def triton_available() -> bool:
    """True when Triton imports and a CUDA device (or the interpreter) can run its kernels."""
    return triton_unavailable_reason() is None


def require_triton(op_name: str) -> None:
    """Raise ``RuntimeError`` naming ``op_name`` and the reason when the Triton path cannot run."""
    reason = triton_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"{op_name}: the Triton kernel cannot run: {reason}")


def check_kernel_device(op_name: str, *tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless all tensors sit on one device the kernel can run on.

    Under the interpreter the tensors must be on the CPU; otherwise they must be CUDA tensors.
    """
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op_name}: all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    (device,) = devices
    if interpreting():
        if device.type != "cpu":
            raise ValueError(f"{op_name}: under TRITON_INTERPRET=1 tensors must be on the CPU, got {device}")
    elif device.type != "cuda":
        raise ValueError(f"{op_name}: the Triton kernel needs CUDA tensors, got {device} (use the *_ref reference)")


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@functools.cache
def max_shared_memory(device_index: int) -> int:
    """Largest opt-in shared memory per block in bytes on CUDA device ``device_index``.

    Falls back to 99 KiB (sm_89 / sm_120 class) when the runtime does not report it.
    """
    try:
        from triton.runtime import driver

        return int(driver.active.utils.get_device_properties(device_index)["max_shared_mem"])
    except Exception:
        pass
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 99 * 1024))


def has_sm89(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA GPU of compute capability >= 8.9 (FP8 tensor cores: Ada, Hopper, Blackwell).

    The one capability test of every FP8 path; ``arvid.runtime.devices.require_sm89`` builds its error on it.
    """
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
