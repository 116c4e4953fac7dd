#!/usr/bin/env bash
# One complete run on a lent GPU machine (../shared/GPU.md): install, GPU tests, kernel and
# end-to-end benchmarks, roofline; JSON and logs under $OUT, a short summary printed last.
# Prepare here first:  ../shared/tools/gpu-wheels.sh   (fills .whl/, carried along)
# Then on the device:  OUT=$OUT bash bench/run_gpu_suite.sh [quick]
set -uo pipefail
OUT=${OUT:-gpu_out}
QUICK=${1:-}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
  && export PYTHONPATH=$PWD/.site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1

{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; \
  git rev-parse HEAD 2>/dev/null; } > "$OUT/environment.txt" 2>&1

run() {  # name, command...: log to $OUT/name.log, never stop the suite
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  ( time "$@" ) > "$OUT/$name.log" 2>&1; echo "   exit $?" | tee -a "$OUT/commands.txt"
}

run pytest_gpu python3 -m pytest -m gpu -q -rs tests
run bench_attention python3 -m arvid.bench.bench_sink_window_attention --json "$OUT/bench_sink_window_attention.json"
run bench_append python3 -m arvid.bench.bench_qk_norm_rope_append --json "$OUT/bench_qk_norm_rope_append.json"
run roofline arvid roofline --preset wan2.1-t2v-1.3b --gpu h100 --precision all --json "$OUT/roofline.json"
VARIANTS=eager,sdpa,triton,sdpa+graphs,triton+graphs,triton+stepgraphs,triton+graphs+fp8kv
[ "$QUICK" = quick ] || VARIANTS=$VARIANTS,triton+graphs+compile
run stream_bench arvid bench --preset wan2.1-t2v-1.3b --device cuda --backends "$VARIANTS" --vae \
  --frames 36 --warmup 2 --rounds 2 --switch-frames 18 --json "$OUT/stream_bench.json"
# The engines that run there (no TensorRT on the lent machines): AOTInductor packages of the chunk
# step, compiled once into a scratch cache; capped so a slow compile cannot eat the call.
ARVID_AOTI_CACHE=/tmp/arvid_aoti run engines timeout 300 arvid bench --preset wan2.1-t2v-1.3b --device cuda \
  --backends eager,triton+graphs,aoti,aoti+graphs --frames 15 --warmup 1 --switch-frames 9 --json "$OUT/engines.json"
[ "$QUICK" = quick ] || run long_run arvid bench --preset wan2.1-t2v-1.3b --device cuda \
  --backends triton+graphs --frames 960 --warmup 2 --json "$OUT/long_run_960.json"

echo; tail -n 3 "$OUT/pytest_gpu.log"; grep -h "^|" "$OUT/stream_bench.log" 2>/dev/null
