"""Micro-benchmark: fused sink + window attention off the ring-buffer cache vs the alternatives.

Run ``python -m arvid.bench.bench_sink_window_attention [--shapes longlive,fill,recache] [--dtype bf16]
[--json OUT]``. On CUDA, for each shape it times (median of CUDA-event timings after warm-up):

* ``triton``: :func:`arvid.kernels.sink_window_attention.sink_window_attention_with_kv_cache`
  straight on the ring buffer (kv_len read on the device);
* ``sdpa-concat/<backend>``: what the reference implementation does every layer: a fresh
  ``torch.cat`` of sink + window (the copy is INCLUDED in the time), then
  ``scaled_dot_product_attention`` under each backend (FLASH, CUDNN, EFFICIENT; ones that
  error are reported as such);
* ``sdpa-gathered/<backend>``: SDPA on K/V gathered contiguously beforehand (copy excluded);
* ``flash-attn kvcache``: flash-attn's ``flash_attn_with_kvcache`` on the ring with ``cache_seqlens``
  (FA3's ``flash_attn_interface`` on Hopper where installed, else FA2), whenever flash-attn imports;
* ``flex``: compiled FlexAttention over the whole ring with a block mask ``kv_idx < kv_len``
  (mask built outside the timing);
* ``append``: the fused q/k norm + RoPE + cache append for the same chunk, with its time as a
  fraction of one ``triton`` attention call (target < 10%).

TFLOP/s counts ``4 * B * H * Lq * kv * D`` (QK^T and PV, kv = valid keys). Without CUDA the
script says so and runs a tiny CPU sanity pass through the references (timings there are
CPU times of the plain-PyTorch paths, not kernel numbers), then exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from arvid.kernels import triton_unavailable_reason
from arvid.kernels.layouts import RingLayer
from arvid.kernels.sink_window_attention import (
    sink_window_attention_ref,
    sink_window_attention_with_kv_cache,
    warmup_sink_window_attention,
)
from arvid.runtime.attention import _flash_module
from arvid.runtime.devices import DTYPES

from ._timing import (
    CACHE_TOKENS,
    SINK_TOKENS,
    TOKENS_PER_FRAME,
    Row,
    environment_info,
    print_table,
    short_error,
    time_ms,
    write_json,
)


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    lq: int  # queries (the chunk's tokens)
    kv: int  # valid keys (sink + window, the chunk's own included)
    slots: int  # ring-buffer size S
    sink: int  # sink tokens at the front of the ring (for the concat baseline)


def shapes_for(groups: list[str], batch: int) -> list[Shape]:
    out: list[Shape] = []
    for g in groups:
        if g == "longlive":  # steady state: 3-frame chunk over the full 12-frame cache
            out.append(Shape("longlive", batch, 4680, CACHE_TOKENS, CACHE_TOKENS, SINK_TOKENS))
        elif g == "fill":  # the first chunks, before the window is full
            out += [Shape(f"fill-kv{n}", batch, 4680, n, CACHE_TOKENS, SINK_TOKENS) for n in (4680, 9360, 14040)]
        elif g == "recache":  # prompt switch: 9 or 12 re-run frames attend to the full cache
            out += [Shape(f"recache-q{n}", batch, n, CACHE_TOKENS, CACHE_TOKENS, SINK_TOKENS) for n in (14040, 18720)]
        elif g == "tiny":  # CPU sanity pass
            out.append(Shape("tiny", batch, 64, 200, 256, 48))
        else:
            raise SystemExit(f"unknown shape group {g!r}; choose from longlive, fill, recache, tiny")
    return out


def attention_flops(batch: int, heads: int, lq: int, kv: int, head_dim: int) -> float:
    return 4.0 * batch * heads * lq * kv * head_dim


# ----------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------


def _inputs(shape: Shape, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    b, s = shape.batch, shape.slots
    q = torch.randn(b, shape.lq, heads, head_dim, generator=g, device=device, dtype=dtype)
    k_cache = torch.randn(b, s, heads, head_dim, generator=g, device=device, dtype=dtype)
    v_cache = torch.randn(b, s, heads, head_dim, generator=g, device=device, dtype=dtype)
    kv_len = torch.full((b,), shape.kv, dtype=torch.int32, device=device)
    return q, k_cache, v_cache, kv_len


def _sdpa_backends() -> list[tuple[str, object]]:
    from torch.nn.attention import SDPBackend

    names = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")
    return [(n.lower().replace("_attention", ""), getattr(SDPBackend, n)) for n in names if hasattr(SDPBackend, n)]


def _sdpa(q_bhld, k_bhld, v_bhld, backend):
    if backend is None:
        return F.scaled_dot_product_attention(q_bhld, k_bhld, v_bhld)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q_bhld, k_bhld, v_bhld)


def _concat_sink_window(cache: torch.Tensor, sink: int, kv: int) -> torch.Tensor:
    # The reference keeps sink and window apart and builds a fresh [B, H, kv, D] copy per call.
    return torch.cat([cache[:, :sink], cache[:, sink:kv]], dim=1).transpose(1, 2)


def _flex_callable(q, k_cache, v_cache, kv_len, device):
    """Compiled FlexAttention over the whole ring with a ``kv_idx < kv_len[b]`` block mask."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, lq, _, _ = q.shape
    s = k_cache.shape[1]

    def valid_prefix(b_idx, h_idx, q_idx, kv_idx):
        return kv_idx < kv_len[b_idx]

    mask = create_block_mask(valid_prefix, b, None, lq, s, device=device)
    flex = torch.compile(flex_attention, dynamic=False)
    # Flex wants [B, H, L, D]; contiguous copies made once, outside the timing.
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k_cache, v_cache))
    return lambda: flex(qt, kt, vt, block_mask=mask)


def run_shape(shape: Shape, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, args) -> list[Row]:
    q, k_cache, v_cache, kv_len = _inputs(shape, heads, head_dim, dtype, device)
    cache = RingLayer(k_cache, v_cache)  # what arvid's kernel and reference take
    flops = attention_flops(shape.batch, heads, shape.lq, shape.kv, head_dim)
    rows: list[Row] = []
    # --cpu-all-methods (a development aid) walks the GPU code path on the CPU, kernel under TRITON_INTERPRET=1.
    on_gpu = device.type == "cuda" or args.cpu_all_methods

    def measure(method: str, fn: Callable[[], torch.Tensor], expected: torch.Tensor | None, note: str = "") -> Row:
        row = Row(shape.name, method, shape.batch, shape.lq, shape.kv, heads, head_dim, note=note)
        try:
            out = fn()
            if expected is not None:
                row.max_abs_err = float((out.float().transpose(1, 2) - expected.float()).abs().max())
            row.ms = time_ms(fn, device, args.warmup, args.iters)
            row.tflops = flops / (row.ms * 1e-3) / 1e12
        except Exception as exc:  # a backend that cannot run this shape/dtype is reported, not fatal
            row.note = short_error(exc)
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        rows.append(row)
        return row

    # Pre-gathered contiguous K/V (copy excluded): the cleanest SDPA number, and the correctness anchor.
    qt = q.transpose(1, 2).contiguous()
    kt = k_cache[:, : shape.kv].transpose(1, 2).contiguous()
    vt = v_cache[:, : shape.kv].transpose(1, 2).contiguous()
    backends = _sdpa_backends() if on_gpu else [("default", None)]
    expected = None  # [B, H, Lq, D] from the first SDPA backend that runs: the correctness anchor
    for _, backend in backends:
        try:
            expected = _sdpa(qt, kt, vt, backend)
            break
        except Exception:
            continue
    for name, backend in backends:
        measure(f"sdpa-gathered/{name}", lambda b=backend: _sdpa(qt, kt, vt, b).transpose(1, 2), expected)
    for name, backend in backends:

        def concat_call(b=backend):
            k = _concat_sink_window(k_cache, shape.sink, shape.kv)
            v = _concat_sink_window(v_cache, shape.sink, shape.kv)
            return _sdpa(q.transpose(1, 2), k, v, b).transpose(1, 2)

        measure(f"sdpa-concat/{name}", concat_call, expected, "sink+window copy included")

    attn_row = None
    if on_gpu:
        reason = triton_unavailable_reason()
        if reason is None:
            try:
                warmup_sink_window_attention(q, cache, kv_len)  # autotune outside the timing
                note = ""
            except Exception as exc:
                note = short_error(exc)
            attn_row = measure("triton", lambda: sink_window_attention_with_kv_cache(q, cache, kv_len), expected, note)
            best = getattr(_triton_kernel(), "best_config", None)
            if best is not None:
                attn_row.extra["config"] = str(best)
        else:
            rows.append(Row(shape.name, "triton", shape.batch, shape.lq, shape.kv, heads, head_dim, note=reason))
        fa = _flash_module()
        if fa is not None:  # the design card's attention package, what LongLive itself calls
            measure(
                f"flash-attn kvcache ({fa.__name__})",
                lambda: _first(fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=kv_len, causal=False)),
                expected,
            )
        if not args.no_flex:
            try:
                flex_fn = _flex_callable(q, k_cache, v_cache, kv_len, device)
            except Exception as exc:
                rows.append(
                    Row(shape.name, "flex", shape.batch, shape.lq, shape.kv, heads, head_dim, note=short_error(exc))
                )
            else:
                measure("flex (compiled, block mask)", lambda: flex_fn().transpose(1, 2), expected)
    else:
        # CPU sanity: the reference against SDPA; the Triton kernel is not timed on a CPU.
        measure("reference (torch, fp32 math)", lambda: sink_window_attention_ref(q, cache, kv_len), expected)

    if args.append:
        rows.append(_append_row(shape, heads, head_dim, dtype, device, args, attn_row))
    return rows


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # FA3 may return (out, lse)


def _triton_kernel():
    from arvid.kernels import sink_window_attention as mod

    return getattr(mod, "_sink_window_attn_kernel", None)


def _append_row(shape, heads, head_dim, dtype, device, args, attn_row: Row | None) -> Row:
    """Fused append for the same chunk (Lq tokens) as a fraction of one triton attention call."""
    from .bench_qk_norm_rope_append import time_append

    row = Row(shape.name, "append (fused norm+rope+cache write)", shape.batch, shape.lq, shape.kv, heads, head_dim)
    frames = shape.lq // TOKENS_PER_FRAME
    if shape.lq % TOKENS_PER_FRAME:
        row.note = "skipped (needs whole 1560-token frames)"
        return row
    try:
        row.ms = time_append(shape.batch, heads, head_dim, frames, shape.slots, dtype, device, args.warmup, args.iters)
        if attn_row is not None and attn_row.ms:
            row.ratio = row.ms / attn_row.ms
    except Exception as exc:
        row.note = short_error(exc)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="longlive,fill,recache", help="comma list: longlive, fill, recache, tiny")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes a while)")
    p.add_argument("--no-append", dest="append", action="store_false", help="skip the fused-append ratio rows")
    p.add_argument("--json", default=None, help="write results and environment to this JSON file")
    p.add_argument("--cpu-all-methods", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.cuda.is_available() or args.cpu_all_methods:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype, heads, head_dim = DTYPES[args.dtype], args.heads, args.head_dim
        shapes = shapes_for(args.shapes.split(","), args.batch)
    else:
        print(
            "bench_sink_window_attention: no CUDA device; kernel timings need a GPU. Running a tiny CPU "
            "sanity pass through the PyTorch paths instead (these are not kernel numbers)."
        )
        device, dtype, heads, head_dim = torch.device("cpu"), torch.float32, 2, 32
        shapes = shapes_for(["tiny"], 1)
        args.append = False
    rows: list[Row] = []
    for shape in shapes:
        rows += run_shape(shape, heads, head_dim, dtype, device, args)
    env = environment_info(device)
    dtype_name = str(dtype).replace("torch.", "")
    title = f"sink_window_attention on {env.get('device_name')} ({dtype_name}, H={heads}, D={head_dim}; "
    print_table(rows, title + f"torch {torch.__version__}, triton {env.get('triton')})")
    if args.json:
        payload = {
            "benchmark": "sink_window_attention",
            "environment": env,
            "dtype": dtype_name,
            "flops_formula": "4*B*H*Lq*kv*D",
            "timing": f"median of {args.iters} CUDA-event timings after {args.warmup} warm-up calls",
            "rows": [asdict(r) for r in rows],
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
