#!/usr/bin/env bash
# One complete run on a lent GPU machine (../shared/GPU.md) that fits ONE device call:
#   stages in order of value, each with a time budget (printed, enforced with timeout); a stage whose
#   budget no longer fits in what is left of the whole suite's budget is skipped with a note.
#   Results: exactly three files in $OUT, rewritten as each stage ends, so a call stopped at its
#   limit still returns every stage that finished:
#     results.tar.gz  every stage's log and JSON (one folder per stage)
#     summary.json    per stage: budget, seconds, exit status, status, note; prerequisites; versions
#     suite.log       this script's own output
# Prepare here first:  ../shared/tools/gpu-wheels.sh   (fills .whl/, carried along)
# Then on the device:  OUT=$OUT bash bench/run_gpu_suite.sh
# Rehearse on the CPU: OUT=/tmp/rehearsal bash bench/run_gpu_suite.sh --rehearse
#   (every stage in the same order, tiny preset and small shapes, in the installed venv; checks the
#    prerequisites, that the GPU budgets sum to at most SUITE_BUDGET_S and that $OUT holds at most 8
#    files no deeper than 2 folders; exits non-zero when any of that or a stage fails)
set -uo pipefail
OUT=${OUT:-gpu_out}
MODE=${1:-}
REHEARSE=0
[ "$MODE" = --rehearse ] && REHEARSE=1
# README's first command installs arvid into .venv/ of the checkout: use it where this shell has not
# activated it (a new shell on the CPU machine), so the rehearsal runs what the install put there.
if ! command -v arvid >/dev/null 2>&1 && [ -x .venv/bin/arvid ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
# The whole suite's budget on the GPU: ~8 of the 15 device minutes (start, idle and one short rerun
# take the rest; GPU.md). Stage budgets below are GPU seconds and sum to at most this.
SUITE_BUDGET_S=480
# The rehearsal runs the same stages on a shared CPU machine (tiny preset, Triton interpreter):
# its clock says nothing about the GPU's, so it gets this many times the budget.
REHEARSAL_SLACK=3

mkdir -p "$OUT"
rm -rf "${OUT:?}/results.tar.gz" "$OUT/summary.json" "$OUT/suite.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/arvid_suite.XXXXXX")
exec > >(tee -a "$OUT/suite.log") 2>&1
START=$SECONDS
STAGES="$WORK/.stages.tsv"  # name, budget, seconds, exit, status, note
: > "$STAGES"
NOTES="$WORK/.notes.txt"
: > "$NOTES"

# Triton autotunes once per kernel and shape, and every stage is its own process: share the results.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/arvid_triton_cache} TRITON_CACHE_AUTOTUNING=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/arvid_inductor_cache}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

note() { echo "NOTE: $*"; echo "$*" >> "$NOTES"; }

pack() {  # results.tar.gz and summary.json from what has finished so far (atomic replaces)
  tar -czf "$OUT/.results.tar.gz" -C "$WORK" --exclude='./.*' . && mv -f "$OUT/.results.tar.gz" "$OUT/results.tar.gz"
  python3 - "$STAGES" "$NOTES" "$OUT/.summary.json" "$SUITE_BUDGET_S" "$REHEARSE" "$WORK/environment.txt" <<'PY'
import json, sys
stages_tsv, notes, out, budget, rehearse, env = sys.argv[1:]
stages = []
for line in open(stages_tsv):
    name, b, s, rc, status, note = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "budget_s": int(b), "seconds": int(s), "exit": int(rc), "status": status, "note": note})
try:
    environment = open(env).read()
except OSError:
    environment = None
json.dump({"rehearsal": rehearse == "1", "suite_budget_s": int(budget), "stages": stages,
           "notes": [n for n in open(notes).read().splitlines() if n], "environment": environment},
          open(out, "w"), indent=1)
PY
  mv -f "$OUT/.summary.json" "$OUT/summary.json"
}

FAILED=0
BUDGET_SUM=0
stage() {  # name budget_s command...: output in results.tar.gz under name/, never stops the suite
  local name=$1 budget=$2; shift 2
  BUDGET_SUM=$((BUDGET_SUM + budget))
  local limit=$budget
  [ $REHEARSE = 1 ] && limit=$((budget * REHEARSAL_SLACK))
  local left=$(( (REHEARSE == 1 ? SUITE_BUDGET_S * REHEARSAL_SLACK : SUITE_BUDGET_S) - (SECONDS - START) ))
  mkdir -p "$WORK/$name"
  if [ "$limit" -gt "$left" ]; then
    echo "== [$name] skipped: budget ${limit}s, ${left}s left of the suite's"
    printf '%s\t%s\t0\t0\tskipped\t%s\n' "$name" "$budget" "budget ${limit}s > ${left}s left" >> "$STAGES"
    pack; return
  fi
  echo "== [$name] budget ${limit}s (${left}s left): $*"
  local t0=$SECONDS
  STAGE_DIR="$WORK/$name" timeout --kill-after=10 "$limit" "$@" > "$WORK/$name/log.txt" 2>&1
  local rc=$? status=ok why=""
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout why="over its ${limit}s budget: stopped"
  elif [ $rc -ne 0 ]; then status=failed why="$(tail -n 1 "$WORK/$name/log.txt" | tr '\t' ' ' | cut -c1-300)"; fi
  if [ $status = timeout ] && [ "${SOFT_TIMEOUT:-0}" = 1 ]; then
    status=skipped why="did not finish within its ${limit}s budget: skipped (no numbers)"
  fi
  [ $status = ok ] || [ $status = skipped ] || FAILED=$((FAILED + 1))
  echo "   $status (exit $rc) in $((SECONDS - t0))s${why:+: $why}"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$budget" "$((SECONDS - t0))" "$rc" "$status" "$why" >> "$STAGES"
  pack
}

# -- prerequisites, before anything is timed ---------------------------------------------------
HAVE_WHEELS=0
if compgen -G ".whl/*.whl" > /dev/null; then HAVE_WHEELS=1; else
  note ".whl/ is missing or empty: run ../shared/tools/gpu-wheels.sh before the GPU call (on the GPU image, without it, the stages that need torchao or diffusers are skipped)"
fi
HAVE_TORCHAO=0 HAVE_DIFFUSERS=0
if [ $REHEARSE = 1 ]; then
  PRESET=tiny DEVICE=cpu LONG_FRAMES=60 ATTN_ARGS="--shapes tiny --dtype fp32 --no-flex --warmup 1 --iters 2"
  APPEND_ARGS="--dtype fp32 --warmup 1 --iters 2"
  if [ $HAVE_WHEELS = 1 ]; then  # the GPU's wheels are for Python 3.12: check them without installing
    python3 - <<'PY' || { note "prerequisite: .whl/ lacks an importable torchao or diffusers wheel"; FAILED=$((FAILED + 1)); }
import glob, sys, zipfile
for pkg in ("torchao", "diffusers"):
    wheels = glob.glob(f".whl/{pkg}-*.whl")
    if not wheels:
        sys.exit(f"no {pkg} wheel in .whl/")
    if f"{pkg}/__init__.py" not in zipfile.ZipFile(wheels[0]).namelist():
        sys.exit(f"{wheels[0]} holds no {pkg} package")
sys.path.insert(0, glob.glob(".whl/diffusers-*.whl")[0])  # pure Python: imports from the wheel itself
import diffusers
print("diffusers", diffusers.__version__, "from", diffusers.__file__)
PY
  fi
  python3 -c "import diffusers" 2>/dev/null && HAVE_DIFFUSERS=1
  python3 -c "import torchao" 2>/dev/null && HAVE_TORCHAO=1
else
  PRESET=wan2.1-t2v-1.3b DEVICE=cuda LONG_FRAMES=198 ATTN_ARGS="--no-flex" APPEND_ARGS=""
  if [ $HAVE_WHEELS = 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
      && export PYTHONPATH=$PWD/.site${PYTHONPATH:+:$PYTHONPATH} || note "installing .whl/ into .site failed"
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e . || { note "pip install -e . failed: nothing can run"; pack; exit 1; }
  python3 -c "import torchao" 2>/dev/null && HAVE_TORCHAO=1 || note "torchao does not import: quantized variants skipped"
  python3 -c "import diffusers" 2>/dev/null && HAVE_DIFFUSERS=1 || note "diffusers does not import: the VAE stage is skipped"
fi
{ nvidia-smi 2>&1 || echo "no nvidia-smi"
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null; git status --porcelain 2>/dev/null | head -5
  echo "torchao importable: $HAVE_TORCHAO, diffusers importable: $HAVE_DIFFUSERS, wheels: $HAVE_WHEELS"
} > "$WORK/environment.txt" 2>&1
cat "$WORK/environment.txt"
pack

# -- stages, most valuable first --------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
  # Nothing here has been timed on a GPU yet: the budgets are estimates from the roofline (~0.3 s per
  # 1.3B chunk at half the H100's peak) and are enforced, so a wrong one costs that stage, not the call.
  CORE=eager,triton,triton+graphs,triton+graphs+fp8kv
  COMPILE=triton+graphs,triton+stepgraphs,triton+graphs+compile
  QUANT=triton+graphs,triton+graphs+int8,triton+graphs+fp8
  LONG=triton+graphs VAE_VARIANT=triton+graphs ENGINES=triton+graphs,functional
else  # no CUDA graphs, no fused kernels at speed on the CPU: the same stages with what runs there
  CORE=eager,sdpa,sdpa+fp8kv COMPILE=sdpa,sdpa+compile QUANT=sdpa,sdpa+int8,sdpa+fp8
  LONG=sdpa VAE_VARIANT=sdpa ENGINES=sdpa,functional
fi
# --yes: the estimate's refusal is for people at a terminal; --quiet: no progress bars in the logs.
BENCH=(arvid bench --preset "$PRESET" --device "$DEVICE" --yes --quiet)
# shellcheck disable=SC2016  # $STAGE_DIR is expanded by the stage's own shell
stage stream_bench 150 bash -c '"$@" --json "$STAGE_DIR/stream_bench.json"' _ "${BENCH[@]}" --backend "$CORE" \
  --frames 36 --warmup 2 --rounds 2 --switch-frames 18
stage pytest_gpu 45 python3 -m pytest -m gpu -q -rs tests
# shellcheck disable=SC2086,SC2016  # the argument strings are meant to split
stage bench_attention 40 bash -c 'python3 -m arvid.bench.bench_sink_window_attention '"$ATTN_ARGS"' --json "$STAGE_DIR/bench_sink_window_attention.json"'
# shellcheck disable=SC2016
stage bench_append 20 bash -c 'python3 -m arvid.bench.bench_qk_norm_rope_append '"$APPEND_ARGS"' --json "$STAGE_DIR/bench_qk_norm_rope_append.json"'
# shellcheck disable=SC2016
stage compile 60 bash -c '"$@" --json "$STAGE_DIR/compile.json"' _ "${BENCH[@]}" --backend "$COMPILE" \
  --frames 18 --warmup 2 --rounds 2 --switch-frames 9
if [ $HAVE_TORCHAO = 1 ] || [ "$DEVICE" = cpu ]; then
  # shellcheck disable=SC2016
  stage quant 40 bash -c '"$@" --json "$STAGE_DIR/quant.json"' _ "${BENCH[@]}" --backend "$QUANT" \
    --frames 18 --warmup 2 --rounds 1
else note "quant skipped: torchao does not import (a quantized variant on CUDA without it is refused)"; fi
if [ $HAVE_DIFFUSERS = 1 ]; then  # the VAE timed once, one variant, not for every variant and round
  # shellcheck disable=SC2016
  stage vae 30 bash -c '"$@" --json "$STAGE_DIR/vae.json"' _ "${BENCH[@]}" --backend "$VAE_VARIANT" --vae \
    --frames 12 --warmup 1 --rounds 1
else note "vae skipped: diffusers does not import"; fi
# shellcheck disable=SC2016
stage long_run 25 bash -c '"$@" --json "$STAGE_DIR/long_run.json"' _ "${BENCH[@]}" --backend "$LONG" \
  --frames "$LONG_FRAMES" --warmup 2 --rounds 1
# The quick CPU tests under this machine's torch / triton (2.11 / 3.6 on the GPU image), CUDA hidden.
stage compat 30 env CUDA_VISIBLE_DEVICES= python3 -m pytest -q -x -m "not slow and not gpu" -p no:cacheprovider \
  tests/test_graph_capture_slots.py tests/test_kernel_contracts.py tests/test_compile.py \
  tests/test_sequence_parallel.py::test_gather_tokens_uses_collectives_of_torch_211
# Engines last: the functional chunk step every exporter traces, run by PyTorch. AOTInductor is left
# out: its packages of the 1.3B step compile for minutes (four exports ran past 300 s in the audit).
note "engines: aoti is not in the one-call suite (its 1.3B package exports take minutes); functional runs instead"
# shellcheck disable=SC2016
SOFT_TIMEOUT=1 stage engines 30 bash -c '"$@" --json "$STAGE_DIR/engines.json"' _ \
  "${BENCH[@]}" --backend "$ENGINES" --frames 15 --warmup 1 --rounds 1 --switch-frames 9

echo
echo "stages: $(cut -f1,5 "$STAGES" | tr '\t\n' ': ')"
grep -h "^|" "$WORK/stream_bench/log.txt" 2>/dev/null
echo "$FAILED stage(s) failed or timed out; GPU budgets sum to ${BUDGET_SUM}s of ${SUITE_BUDGET_S}s"
pack
rm -rf "$WORK"
if [ $REHEARSE = 1 ]; then
  CHECK=0
  [ $BUDGET_SUM -le $SUITE_BUDGET_S ] || { echo "REHEARSAL: stage budgets sum to ${BUDGET_SUM}s > ${SUITE_BUDGET_S}s"; CHECK=1; }
  FILES=$(find "$OUT" -type f | wc -l)
  DEEP=$(find "$OUT" -mindepth 4 -type f | wc -l)  # OUT/a/b/file is 2 folders deep: allowed
  [ "$FILES" -le 8 ] || { echo "REHEARSAL: $FILES files in $OUT, at most 8 come back"; CHECK=1; }
  [ "$DEEP" -eq 0 ] || { echo "REHEARSAL: $DEEP file(s) deeper than 2 folders"; CHECK=1; }
  echo "rehearsal: $FILES file(s) in $OUT, budgets ${BUDGET_SUM}s <= ${SUITE_BUDGET_S}s"
  [ $FAILED -eq 0 ] && [ $CHECK -eq 0 ]
fi
