"""Shared memory, registers and spills of every Triton kernel config, compiled for named GPUs without one.

``python -m arvid.bench.kernel_resources --arch sm_90,sm_120 [--json F]``

Triton compiles a kernel for any ``GPUTarget`` on a CPU machine (ptxas ships inside the triton
wheel), so what a config costs on a Hopper or a Blackwell card is known before any GPU run:
``metadata.shared`` is the shared memory the launch asks for, and ``ptxas -v`` on the PTX gives
registers per thread and spill bytes. For each target, query dtype and cache kind (the model's
dtype or FP8 e4m3) this compiles every config of the sink + window attention kernel, and the
fused q/k-norm + RoPE + append kernel at the launch it gets for the Wan2.1-1.3B shapes, then says
which attention configs :func:`~arvid.kernels.sink_window_attention._prune_configs`' model keeps
for the target's shared memory. Compiles land in Triton's cache: a second run takes seconds.

Run it with the Triton of the machine it is for (GPU.md: ``pip install --target`` an older one
and put it first on ``PYTHONPATH``): each Triton release allocates differently.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HEAD_DIM = 128  # Wan2.1: 12 heads of 128
NUM_HEADS = 12
DTYPES = ("fp16", "bf16")
# Shared memory per block (opt-in maximum) of the targets this tool knows, from NVIDIA's CUDA C
# Programming Guide tables (compute capability -> "maximum amount of shared memory per thread block").
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}


def parse_arch(arch: str) -> int:
    """``"sm_90"`` / ``"sm_120"`` / ``"90"`` -> 90 / 120; one-line error for anything else."""
    m = re.fullmatch(r"(?:sm_)?(\d+)a?", arch.strip())
    if not m or int(m.group(1)) not in SMEM_LIMIT:
        raise ValueError(f"unknown target {arch!r}; choose from {', '.join(f'sm_{c}' for c in SMEM_LIMIT)}")
    return int(m.group(1))


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia import compiler as nv

    try:
        tool = nv.get_ptxas(arch)  # triton >= 3.7 picks the ptxas by arch
    except TypeError:
        tool = nv.get_ptxas()  # triton 3.6
    return tool.path


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers per thread and spill bytes that ptxas reports for ``ptx`` on ``sm_<arch>``."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        run = subprocess.run(
            [_ptxas(arch), "-v", f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(src) + ".o"],
            capture_output=True,
            text=True,
        )
    if run.returncode:
        raise RuntimeError(f"ptxas failed for sm_{arch}: {run.stderr.strip()[:300]}")
    log = run.stderr + run.stdout
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_store_bytes": int(stores.group(1)) if stores else 0,
        "spill_load_bytes": int(loads.group(1)) if loads else 0,
    }


def _divisible(fn, signature: dict[str, str], names: Sequence[str]) -> dict:
    """The divisibility-by-16 specialisation Triton gives aligned pointers and strides at launch."""
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names if signature[n] != "constexpr"}


def _jit_function(kernel):
    """The ``JITFunction`` under an autotuner / heuristics wrapper (``.fn`` of a JITFunction is plain Python)."""
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _compile(fn, signature, constexprs, attrs, arch: int, num_warps: int, num_stages: int) -> dict:
    if os.environ.get("TRITON_INTERPRET"):
        raise RuntimeError("compiling for a GPU target needs a process without TRITON_INTERPRET (main() unsets it)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    kernel = triton.compile(
        ASTSource(fn, signature, constexprs, attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    out = {"shared_bytes": int(kernel.metadata.shared), **ptxas_usage(kernel.asm["ptx"], arch)}
    out["compile_s"] = round(time.perf_counter() - t0, 2)
    return out


def attention_signature(dtype: str, fp8: bool) -> tuple[dict[str, str], list[str]]:
    from arvid.kernels.sink_window_attention import _sink_window_attn_kernel

    fn = _jit_function(_sink_window_attn_kernel)
    const = {"HEAD_DIM", "IS_FP8", "INPUT_PRECISION", "BLOCK_M", "BLOCK_N"}
    sig = {}
    for n in fn.arg_names:
        if n in const:
            sig[n] = "constexpr"
        elif n in ("Q", "Out"):
            sig[n] = f"*{dtype}"
        elif n in ("K", "V"):
            sig[n] = "*fp8e4nv" if fp8 else f"*{dtype}"
        elif n in ("K_SCALE", "V_SCALE"):
            sig[n] = "*fp32" if fp8 else "*i32"  # without FP8 the wrapper passes kv_len, zero strides
        elif n == "KV_LEN":
            sig[n] = "*i32"
        elif n == "qk_scale":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    # As Triton specialises them at launch: pointers and the q / cache / out strides (multiples of
    # D = 128) are 16-divisible; FP8 scales [B, S, H] have strides (S*H, H = 12, 1): the head stride
    # is the constant 1, the token stride not 16-divisible; a non-FP8 cache passes zero strides.
    aligned = [n for n in fn.arg_names if sig[n].startswith("*")]
    for n in fn.arg_names:
        if not n.startswith("stride_"):
            continue
        if fp8 and n in ("stride_ksh", "stride_vsh"):
            sig[n] = "constexpr"
        elif not (fp8 and n in ("stride_ksn", "stride_vsn")):
            aligned.append(n)
    return sig, aligned


def attention_config(arch: int, dtype: str, fp8: bool, config: tuple[int, int, int, int]) -> dict:
    """Compile one sink + window attention config; its resources."""
    from arvid.kernels.sink_window_attention import _sink_window_attn_kernel

    fn = _jit_function(_sink_window_attn_kernel)
    bm, bn, warps, stages = config
    sig, aligned = attention_signature(dtype, fp8)
    constexprs = {"HEAD_DIM": HEAD_DIM, "IS_FP8": fp8, "INPUT_PRECISION": "tf32", "BLOCK_M": bm, "BLOCK_N": bn}
    if fp8:
        constexprs.update(stride_ksh=1, stride_vsh=1)
    return _compile(fn, sig, constexprs, _divisible(fn, sig, aligned), arch, warps, stages)


def append_kernel(arch: int, dtype: str, fp8: bool) -> dict:
    """Compile the fused q/k-norm + RoPE + append kernel at the launch it gets for 12 heads of 128."""
    from arvid.kernels import qk_norm_rope_append as qk
    from arvid.kernels.rope_3d import rope_3d_split

    fn = _jit_function(qk._qk_norm_rope_append_kernel)
    # The wrapper's GPU launch (_qk_norm_rope_append_fwd): ~2K elements per tensor per program.
    block_h = 1 << (NUM_HEADS - 1).bit_length()
    block_t = max(1, 2048 // (block_h * HEAD_DIM))
    tile = block_t * block_h * HEAD_DIM
    num_warps = 1 if tile <= 256 else 2 if tile <= 512 else 4 if tile <= 4096 else 8
    cf, ch, _ = rope_3d_split(HEAD_DIM)
    const = {
        "HALF_D": HEAD_DIM // 2, "BLOCK_T": block_t, "BLOCK_H": block_h, "CF": cf, "CH": ch, "IS_FP8": fp8,
        "FP8_MAX": qk.FP8_E4M3_MAX, "SCALE_MIN": qk.FP8_SCALE_MIN,
    }  # fmt: skip
    sig = {}
    for n in fn.arg_names:
        if n in const:
            sig[n] = "constexpr"
        elif n in ("Q", "K", "V", "QO", "WQ", "WK"):
            sig[n] = f"*{dtype}"
        elif n in ("KC", "VC"):
            sig[n] = "*fp8e4nv" if fp8 else f"*{dtype}"
        elif n in ("KS", "VS"):
            sig[n] = "*fp32" if fp8 else "*i32"
        elif n in ("COS", "SIN"):
            sig[n] = "*fp32"
        elif n in ("WRITE_START", "FRAME_OFFSET"):
            sig[n] = "*i32"
        elif n in ("inv_hd", "eps"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    aligned = [n for n in fn.arg_names if sig[n].startswith("*")]
    out = _compile(fn, sig, const, _divisible(fn, sig, aligned), arch, num_warps, 1)
    return {**out, "block_t": block_t, "block_h": block_h, "num_warps": num_warps}


def collect(archs: Sequence[int], dtypes: Sequence[str] = DTYPES, *, queries: int = 4680, log=None) -> dict:
    """Every attention config and the append kernel for each target x dtype x (bf16/fp16 or FP8 cache).

    ``queries``: the chunk's query count the pruning sees (4680 = 3 frames x 1560 tokens, Wan2.1 at 832x480).
    """
    import triton

    from arvid.kernels import sink_window_attention as swa

    rows, append = [], []
    for arch in archs:
        for dtype in dtypes:
            for fp8 in (False, True):
                elem = 2  # fp16 / bf16 queries
                kv = 1 if fp8 else elem
                kept = swa.kept_configs(swa._GPU_CONFIGS, arch, queries, HEAD_DIM, elem, kv, SMEM_LIMIT[arch])
                for cfg in swa._GPU_CONFIGS:
                    res = attention_config(arch, dtype, fp8, cfg)
                    model = swa._smem_bytes(cfg[0], cfg[1], cfg[3], HEAD_DIM, elem, kv, arch)
                    rows.append({
                        "kernel": "sink_window_attention", "arch": f"sm_{arch}", "dtype": dtype, "fp8_cache": fp8,
                        "block_m": cfg[0], "block_n": cfg[1], "num_warps": cfg[2], "num_stages": cfg[3],
                        **res, "smem_model_bytes": model, "smem_limit_bytes": SMEM_LIMIT[arch], "kept": cfg in kept,
                    })  # fmt: skip
                    if log:
                        r = rows[-1]
                        log(
                            f"sm_{arch} {dtype}{' fp8' if fp8 else ''} {cfg}: smem {r['shared_bytes']} B (model "
                            f"{model}), {r['registers']} regs, spills {r['spill_store_bytes']}/"
                            f"{r['spill_load_bytes']} B{'' if r['kept'] else ', pruned'} ({r['compile_s']} s)"
                        )
                append.append(
                    {"kernel": "qk_norm_rope_append", "arch": f"sm_{arch}", "dtype": dtype, "fp8_cache": fp8,
                     **append_kernel(arch, dtype, fp8)}
                )  # fmt: skip
    return {
        "triton": triton.__version__,
        "head_dim": HEAD_DIM,
        "num_heads": NUM_HEADS,
        "queries": queries,
        "attention": rows,
        "append": append,
    }


def format_table(report: dict) -> str:
    lines = [
        f"Triton {report['triton']}, head dim {report['head_dim']}, {report['queries']} queries per chunk",
        "arch    dtype fp8  BM  BN  W S   smem B  model B  regs  spill st/ld  kept",
    ]
    for r in report["attention"]:
        lines.append(
            f"{r['arch']:<7} {r['dtype']:<5} {'yes' if r['fp8_cache'] else 'no':<4} {r['block_m']:>3} "
            f"{r['block_n']:>3} {r['num_warps']} {r['num_stages']} {r['shared_bytes']:>8} {r['smem_model_bytes']:>8} "
            f"{r['registers'] or '-':>5} {r['spill_store_bytes']:>5}/{r['spill_load_bytes']:<5} "
            f"{'yes' if r['kept'] else 'no'}"
        )
    lines.append("qk_norm_rope_append (one launch config per shape):")
    for r in report["append"]:
        lines.append(
            f"{r['arch']:<7} {r['dtype']:<5} {'yes' if r['fp8_cache'] else 'no':<4} BLOCK_T {r['block_t']} "
            f"{r['num_warps']} warps: smem {r['shared_bytes']} B, {r['registers']} regs, spills "
            f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arvid.bench.kernel_resources", description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="sm_90,sm_120", help="comma-separated targets, e.g. sm_90,sm_120")
    p.add_argument("--dtype", default=",".join(DTYPES), help="query dtypes (fp16, bf16)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    # Compiling for a GPU needs the real JIT functions, not the interpreter's stand-ins: set before the
    # kernels are imported (triton.jit reads it at decoration). Not at import of this module, which would
    # turn the interpreter off for a whole process (the test session) that only reads its constants.
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        archs = [parse_arch(a) for a in args.arch.split(",") if a.strip()]
        dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
        if bad := [d for d in dtypes if d not in DTYPES]:
            raise ValueError(f"unknown dtype(s) {bad}; choose from {', '.join(DTYPES)}")
        from arvid.kernels._triton_utils import _triton_import_error

        if reason := _triton_import_error():  # a GPU is not needed, only the compiler
            raise ValueError(f"needs Triton: {reason}")
    except ValueError as e:
        print(f"kernel_resources: error: {e}", file=sys.stderr)
        return 2
    report = collect(archs, dtypes, log=None if args.quiet else lambda s: print(s, file=sys.stderr, flush=True))
    from .env import git_state

    given = list(argv) if argv is not None else sys.argv[1:]
    report["command"] = " ".join(["python -m arvid.bench.kernel_resources", *given])
    report.update(git_state())
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
