#!/usr/bin/env bash
# A whole benchmark run in one command; gpu.sh and cpu.sh call this with LOTTS_BENCH_MODE set.
#   gpu: env report, build the CUDA extension, GPU tests, kernel benchmarks, then the cost
#        benchmark (bench_cost.py) in the time left, summary (under 8 minutes in all)
#   cpu: reduced-shape benchmarks, summary (about 2 minutes)
# Every stage runs under its own timeout, clamped so the whole run ends by its deadline; a stage
# that fails or hangs is recorded (stages.tsv, summary.md) and the next one still runs.
# Results (logs, JSON, stages.tsv, summary.md) go to $OUT if set, else
# benchmarks/results/<UTC timestamp>/. Optional: PYTHON (default python3), LOTTS_BENCH_TOTAL_S.
set -u
MODE=${LOTTS_BENCH_MODE:-gpu}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
RESULTS=${OUT:-$REPO/benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS" || exit 1
STAGES=$RESULTS/stages.tsv
: > "$STAGES"
if [ "$MODE" = gpu ]; then TOTAL=${LOTTS_BENCH_TOTAL_S:-465}; else TOTAL=${LOTTS_BENCH_TOTAL_S:-130}; fi
DEADLINE=$(( $(date +%s) + TOTAL ))
SUMMARY_S=30  # kept back for the summary

if compgen -G ".whl/*.whl" > /dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$RESULTS/wheels.log" 2>&1; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "== carried wheels failed to install (see wheels.log)"
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# stage NAME MAX_SECONDS COMMAND...: COMMAND's output goes to NAME.log; rc 124/137 = timed out.
stage() {
  local name=$1 limit=$2 left start rc secs
  shift 2
  left=$(( DEADLINE - $(date +%s) - SUMMARY_S ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then
    printf '%s\tskip\t0\t0\n' "$name" >> "$STAGES"
    echo "== $name: skipped, out of time"
    return
  fi
  start=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >> "$STAGES"
  echo "== $name: rc=$rc in ${secs}s (limit ${limit}s)"
  tail -n 3 "$RESULTS/$name.log"
}

bench() {  # bench NAME MAX_SECONDS PYTEST_K_EXPRESSION [ENV=VALUE...]
  local name=$1 limit=$2 expr=$3
  shift 3
  stage "bench_$name" "$limit" env "$@" "$PY" -m pytest benchmarks/bench_kernels.py -q -rs \
    -p no:cacheprovider -k "$expr" --benchmark-json "$RESULTS/bench_$name.json"
}

if [ "$MODE" = gpu ]; then
  [ -f lotts_kernels/env.py ] && stage env 30 "$PY" -m lotts_kernels.env
  stage nvidia_smi 15 nvidia-smi
  stage build 120 "$PY" -m lotts_kernels.cuda_build
  stage gpu_tests 90 "$PY" -m pytest tests -m gpu -q -rs -p no:cacheprovider
  bench attention_with_token_maps 60 attention_with_token_maps
  bench attention_propagate 60 attention_propagate
  bench quality_mask 45 quality_mask
  bench masked_noise_blend 60 "masked_noise_blend and not (seed and compile)"
  bench blend_seed_compile 120 "masked_noise_blend and seed and compile" LOTTS_BENCH_COMPILE_SEED=1
  # LoTTS vs Best-of-N at real size (bench_cost.py; needs a carried diffusers wheel): last, with
  # whatever time is left, so it never crowds out the kernel stages.
  left=$(( DEADLINE - $(date +%s) - SUMMARY_S ))
  if [ -f benchmarks/bench_cost.py ] && (( left >= 60 )); then
    stage bench_cost "$left" "$PY" benchmarks/bench_cost.py --results "$RESULTS/bench_cost.md" \
      --budget-s $(( left - 20 ))
  fi
else  # one process: on a shared 2-core machine each start costs ~10 s
  bench all 100 "test_bench" LOTTS_BENCH_BUDGET=0.1
fi

shopt -s nullglob
timeout -k 5 "$SUMMARY_S" "$PY" benchmarks/summary.py "$RESULTS"/bench_*.json --stages "$STAGES" \
  --out "$RESULTS/summary.md" > "$RESULTS/summary.log" 2>&1
rc=$?
if [ -s "$RESULTS/summary.md" ]; then cat "$RESULTS/summary.md"; else cat "$RESULTS/summary.log"; fi
echo "== summary rc=$rc; results in $RESULTS"
