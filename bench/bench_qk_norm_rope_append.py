"""Micro-benchmark: fused q/k RMSNorm + 3D RoPE + ring-buffer append vs the same work in PyTorch ops.

Run ``python -m arvid.bench.bench_qk_norm_rope_append [--shapes chunk,recache] [--dtype bf16] [--json OUT]``.
On CUDA, for each shape (Wan 1.3B: 12 heads x 128, 30 x 52 tokens per latent frame) it times
(median of CUDA-event timings after warm-up):

* ``fused``: :func:`arvid.kernels.qk_norm_rope_append.qk_norm_rope_append_kv_cache`;
* ``fused + fp8``: the same writing a float8_e4m3fn cache with per token-head scales (sm_89+);
* ``torch ops``: RMSNorm across heads, RoPE with precomputed cos/sin, two slice writes (what an
  unfused runtime does, without host syncs);
* ``attention``: one :func:`~arvid.kernels.sink_window_attention.sink_window_attention_with_kv_cache`
  call of the same chunk over the full 18720-token cache, to report the append as a fraction of
  it (target < 10%).

GB/s counts the bytes the op must move: read q, k, v and write q_out, K and V slots
(``6 * B * L * H * D * itemsize``). Without CUDA the script says so, runs a tiny CPU sanity pass
of the PyTorch paths and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import torch

from arvid.kernels import triton_unavailable_reason
from arvid.kernels.layouts import PlanTensors, RingLayer, RopeCosSin
from arvid.kernels.qk_norm_rope_append import (
    qk_norm_rope_append_kv_cache,
    qk_norm_rope_append_kv_cache_ref,
    rms_norm_across_heads_ref,
)
from arvid.kernels.rope_3d import apply_rope_3d_ref, rope_3d_cos_sin, rope_3d_tables
from arvid.kernels.sink_window_attention import sink_window_attention_with_kv_cache, warmup_sink_window_attention
from arvid.runtime.devices import DTYPES, has_sm89

from ._timing import (
    CACHE_TOKENS,
    FRAME_GRID,
    TOKENS_PER_FRAME,
    Row,
    environment_info,
    print_table,
    short_error,
    time_ms,
    write_json,
)

ROPE_POSITIONS = 1024

# name -> (latent frames written, first slot, frame offset)
SHAPES = {
    "chunk": [("chunk-3f", 3, 2 * 3 * TOKENS_PER_FRAME, 9)],  # steady state: a 3-frame chunk into the window
    "recache": [("recache-9f", 9, 3 * TOKENS_PER_FRAME, 30), ("recache-12f", 12, 0, 0)],
}


def _inputs(
    batch, heads, head_dim, frames, slots, write_start, frame_offset, dtype, device, grid=FRAME_GRID, fp8=False
):
    g = torch.Generator(device=device).manual_seed(0)
    seq = frames * grid[0] * grid[1]
    q, k, v = (torch.randn(batch, seq, heads, head_dim, generator=g, device=device, dtype=dtype) for _ in range(3))
    wq = 1 + 0.1 * torch.randn(heads * head_dim, generator=g, device=device, dtype=dtype)
    wk = 1 + 0.1 * torch.randn(heads * head_dim, generator=g, device=device, dtype=dtype)
    rope = RopeCosSin(*rope_3d_tables(head_dim, ROPE_POSITIONS, device=device))
    cache_dtype = torch.float8_e4m3fn if fp8 else dtype
    k_cache = torch.zeros(batch, slots, heads, head_dim, device=device, dtype=cache_dtype)
    v_cache = torch.zeros(batch, slots, heads, head_dim, device=device, dtype=cache_dtype)
    cache = RingLayer(k_cache, v_cache)
    if fp8:
        scales = [torch.ones(batch, slots, heads, device=device) for _ in range(2)]
        cache = RingLayer(k_cache, v_cache, *scales)
    plan = PlanTensors.zeros(batch, device)
    plan.fill(write_start=write_start, kv_len=min(write_start + seq, slots), frame_offset=frame_offset)
    return {
        "q": q, "k": k, "v": v, "norm_q_weight": wq, "norm_k_weight": wk,
        "cache": cache, "rope": rope, "plan": plan, "grid_sizes": (frames, grid[0], grid[1]),
    }  # fmt: skip


def _torch_ops_callable(inputs, write_start: int, frame_offset: int):
    """The unfused path with cos/sin gathered once outside the timing and a host-side write_start."""
    q, k, v, wq, wk = (inputs[n] for n in ("q", "k", "v", "norm_q_weight", "norm_k_weight"))
    k_cache, v_cache, rope = inputs["cache"].k, inputs["cache"].v, inputs["rope"]
    cos, sin = rope_3d_cos_sin(rope.cos, rope.sin, inputs["grid_sizes"], frame_offset)
    end = write_start + q.shape[1]

    def run():
        q_out = apply_rope_3d_ref(rms_norm_across_heads_ref(q, wq), cos, sin)
        k_cache[:, write_start:end] = apply_rope_3d_ref(rms_norm_across_heads_ref(k, wk), cos, sin)
        v_cache[:, write_start:end] = v
        return q_out

    return run


def time_append(
    batch, heads, head_dim, frames, slots, dtype, device, warmup=5, iters=20, write_start=0, frame_offset=0
) -> float:
    """Median ms of one fused append of ``frames`` latent frames (used by the attention bench for its ratio)."""
    inputs = _inputs(batch, heads, head_dim, frames, slots, write_start, frame_offset, dtype, device)
    return time_ms(lambda: qk_norm_rope_append_kv_cache(**inputs), device, warmup, iters)


def run_shape(name, frames, write_start, frame_offset, args_ns, dtype, device, heads, head_dim, grid) -> list[Row]:
    batch, slots = args_ns.batch, CACHE_TOKENS if device.type == "cuda" else 4 * frames * grid[0] * grid[1]
    inputs = _inputs(batch, heads, head_dim, frames, slots, write_start, frame_offset, dtype, device, grid)
    q = inputs["q"]
    seq = q.shape[1]
    bytes_moved = 6 * batch * seq * heads * head_dim * q.element_size()
    rows: list[Row] = []

    def measure(method, fn, expected=None, note="") -> Row:
        row = Row(name, method, batch, seq, slots, heads, head_dim, note=note)
        try:
            out = fn()
            if expected is not None:
                row.max_abs_err = float((out.float() - expected.float()).abs().max())
            row.ms = time_ms(fn, device, args_ns.warmup, args_ns.iters)
            row.extra["GB/s"] = round(bytes_moved / (row.ms * 1e-3) / 1e9, 1)
        except Exception as exc:
            row.note = short_error(exc)
        rows.append(row)
        return row

    cache = inputs["cache"]
    expected = qk_norm_rope_append_kv_cache_ref(**{**inputs, "cache": RingLayer(cache.k.clone(), cache.v.clone())})
    eager = measure("torch ops (unfused)", _torch_ops_callable(inputs, write_start, frame_offset), expected)
    if device.type != "cuda" and not args_ns.cpu_all_methods:  # --cpu-all-methods: development aid (interpreter)
        return rows
    reason = triton_unavailable_reason()
    if reason is not None:
        rows.append(Row(name, "fused", batch, seq, slots, heads, head_dim, note=reason))
        return rows
    fused = measure("fused", lambda: qk_norm_rope_append_kv_cache(**inputs), expected)
    if fused.ms and eager.ms:
        fused.extra["speedup_vs_torch_ops"] = round(eager.ms / fused.ms, 2)
    if device.type != "cuda" or has_sm89(device):  # the CPU runs it in the interpreter
        fp8_inputs = _inputs(
            batch, heads, head_dim, frames, slots, write_start, frame_offset, dtype, device, grid, fp8=True
        )
        measure("fused + fp8 quantize", lambda: qk_norm_rope_append_kv_cache(**fp8_inputs), expected)
    else:
        rows.append(Row(name, "fused + fp8 quantize", batch, seq, slots, heads, head_dim, note="needs sm_89+"))
    if not args_ns.no_attention:
        k_cache = torch.randn(batch, CACHE_TOKENS, heads, head_dim, device=device, dtype=dtype)
        full = RingLayer(k_cache, torch.randn_like(k_cache))
        kv_len = torch.full((batch,), CACHE_TOKENS, dtype=torch.int32, device=device)
        warmup_sink_window_attention(q, full, kv_len)
        attn = measure("attention (triton, kv=18720)", lambda: sink_window_attention_with_kv_cache(q, full, kv_len))
        attn.extra.pop("GB/s", None)
        attn.kv = CACHE_TOKENS
        if attn.ms and fused.ms:
            fused.ratio = fused.ms / attn.ms
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="chunk,recache", help="comma list: chunk, recache")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-attention", action="store_true", help="skip the attention call used for the ratio")
    p.add_argument("--json", default=None, help="write results and environment to this JSON file")
    p.add_argument("--cpu-all-methods", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    if torch.cuda.is_available():
        device, dtype, heads, head_dim, grid = (
            torch.device("cuda"),
            DTYPES[args.dtype],
            args.heads,
            args.head_dim,
            FRAME_GRID,
        )
        for group in args.shapes.split(","):
            if group not in SHAPES:
                raise SystemExit(f"unknown shape group {group!r}; choose from {', '.join(SHAPES)}")
            for name, frames, write_start, frame_offset in SHAPES[group]:
                rows += run_shape(name, frames, write_start, frame_offset, args, dtype, device, heads, head_dim, grid)
    else:
        print(
            "bench_qk_norm_rope_append: no CUDA device; kernel timings need a GPU. Running a tiny CPU sanity "
            "pass through the PyTorch paths instead (these are not kernel numbers)."
        )
        device, dtype, heads, head_dim, grid = torch.device("cpu"), torch.float32, 2, 32, (4, 6)
        rows += run_shape("tiny", 2, 8, 3, args, dtype, device, heads, head_dim, grid)
    env = environment_info(device)
    print_table(
        rows,
        f"qk_norm_rope_append on {env.get('device_name')} (H={heads}, D={head_dim}; "
        f"torch {torch.__version__}, triton {env.get('triton')}); ratio = fused / attention",
    )
    for r in rows:
        if r.extra:
            print(f"  {r.shape:<14}{r.method:<32}{r.extra}")
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "qk_norm_rope_append",
                "environment": env,
                "dtype": str(dtype).replace("torch.", ""),
                "bytes_formula": "6*B*L*H*D*itemsize (read q,k,v; write q_out, K, V)",
                "timing": f"median of {args.iters} CUDA-event timings after {args.warmup} warm-up calls",
                "rows": [asdict(r) for r in rows],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
