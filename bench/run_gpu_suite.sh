#!/usr/bin/env bash
# One complete run on a lent GPU machine (../shared/GPU.md): install, GPU tests, kernel and
# end-to-end benchmarks, roofline; JSON and logs under $OUT, a short summary printed last.
# Prepare here first:  ../shared/tools/gpu-wheels.sh   (fills .whl/, carried along)
# Then on the device:  OUT=$OUT bash bench/run_gpu_suite.sh [quick]
# Rehearse on the CPU: OUT=/tmp/rehearsal bash bench/run_gpu_suite.sh --rehearse
#   (every stage in the same order, tiny preset and small shapes, in the installed venv; exits non-zero
#    when a stage fails, so a broken stage is found here and not in the only GPU call)
set -uo pipefail
OUT=${OUT:-gpu_out}
MODE=${1:-}
mkdir -p "$OUT"
if [ "$MODE" = --rehearse ]; then
  PRESET=tiny DEVICE=cpu FRAMES_LONG=60 ATTN_ARGS="--shapes tiny --dtype fp32 --no-flex --warmup 1 --iters 2"
  APPEND_ARGS="--dtype fp32 --warmup 1 --iters 2"
  export TRITON_INTERPRET=1
else
  PRESET=wan2.1-t2v-1.3b DEVICE=cuda FRAMES_LONG=960 ATTN_ARGS="" APPEND_ARGS=""
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    && export PYTHONPATH=$PWD/.site || exit 1
  python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
fi

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; \
  git rev-parse HEAD 2>/dev/null; } > "$OUT/environment.txt" 2>&1

FAILED=0
run() {  # name, command...: log to $OUT/name.log, never stop the suite
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  ( time "$@" ) > "$OUT/$name.log" 2>&1; local rc=$?
  echo "   exit $rc" | tee -a "$OUT/commands.txt"
  [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
}

# -m gpu: on the CPU every test skips (exit 0); the rehearsal checks that they collect.
run pytest_gpu python3 -m pytest -m gpu -q -rs tests
# shellcheck disable=SC2086  # the argument strings are meant to split
run bench_attention python3 -m arvid.bench.bench_sink_window_attention $ATTN_ARGS --json "$OUT/bench_sink_window_attention.json"
# shellcheck disable=SC2086
run bench_append python3 -m arvid.bench.bench_qk_norm_rope_append $APPEND_ARGS --json "$OUT/bench_qk_norm_rope_append.json"
run roofline arvid roofline --preset wan2.1-t2v-1.3b --gpu h100 --precision all --json "$OUT/roofline.json"
if [ "$DEVICE" = cuda ]; then
  VARIANTS=eager,sdpa,triton,sdpa+graphs,triton+graphs,triton+stepgraphs,triton+graphs+fp8kv
  [ "$MODE" = quick ] || VARIANTS=$VARIANTS,triton+graphs+compile
  ENGINES=eager,triton+graphs,aoti,aoti+graphs
else  # no CUDA graphs, no fused kernels at speed on the CPU: the same stages with what runs there
  VARIANTS=eager,sdpa,sdpa+fp8kv ENGINES=eager,sdpa,aoti
fi
# --yes: the estimate's refusal is for people at a terminal; --quiet: no progress bars in the logs.
run stream_bench arvid bench --preset $PRESET --device $DEVICE --backend "$VARIANTS" --vae --yes --quiet \
  --frames 36 --warmup 2 --rounds 2 --switch-frames 18 --json "$OUT/stream_bench.json"
# The engines that run there (no TensorRT on the lent machines): AOTInductor packages of the chunk
# step, compiled once into a scratch cache; capped so a slow compile cannot eat the call.
ARVID_AOTI_CACHE=/tmp/arvid_aoti run engines timeout 300 arvid bench --preset $PRESET --device $DEVICE \
  --backend "$ENGINES" --frames 15 --warmup 1 --rounds 1 --switch-frames 9 --yes --quiet --json "$OUT/engines.json"
[ "$MODE" = quick ] || run long_run arvid bench --preset $PRESET --device $DEVICE \
  --backend "$([ "$DEVICE" = cuda ] && echo triton+graphs || echo sdpa)" --frames $FRAMES_LONG --warmup 2 \
  --rounds 1 --yes --quiet --json "$OUT/long_run_$FRAMES_LONG.json"

echo; tail -n 3 "$OUT/pytest_gpu.log"; grep -h "^|" "$OUT/stream_bench.log" 2>/dev/null
echo "$FAILED stage(s) failed"
[ "$MODE" != --rehearse ] || [ $FAILED -eq 0 ]
