#!/usr/bin/env bash
# Verifies the package on the NVIDIA GPU of this machine, in at most ~8 minutes on one
# H100/H200 (each part has a time budget; a part that fails or runs out of time is reported
# and the others still run):
#   a. build sassha_fast for the GPU present (its compute capability only)
#   b. the CUDA and Triton backend tests (tests/backends/test_backend_cuda.py,
#      test_backend_triton.py) and torch.library.opcheck of every dispatcher op on CUDA
#      (test_dispatcher_ops.py, test_triton_ops.py), and the updates' wrote_nonfinite flag at
#      the edge of each dtype's range (test_wrote_nonfinite.py, both backends)
#   c. compute-sanitizer memcheck and racecheck over every fused op (scripts/sanitizer_ops.py)
#   d. benchmarks (python -m bench): each op's GB/s against a device copy (ops suite),
#      SASSHA's step against AdamW(fused=True) at three sizes (step suite), and the
#      training-iteration table (train suite)
#   e. every test that captures and replays a CUDA graph (pytest -k "$GRAPH_TESTS"), the
#      whole step(closure) iteration and the compiled step with mode="reduce-overhead"
#      (tests/optim/test_compiled_step.py) included
# Everything goes to bench/results/<gpu name>/ (gpu_check.md: device, driver, torch, date,
# the outcome of each part; one log per part; the bench suites' own folders).
# Without a GPU it says so and exits 0, having run nothing.
#   bash scripts/run.sh gpu-check          (or: bash scripts/gpu_check.sh)
# Budgets in seconds: GPU_CHECK_BUILD_S, _TESTS_S, _BENCH_S, _TRAIN_S (defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! gpu_line=$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader \
      2>/dev/null | head -n 1) || [ -z "$gpu_line" ]; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none); nothing was run"
  exit 0
fi
IFS=',' read -r gpu_name driver compute_cap <<< "$gpu_line"
gpu_name=$(echo "$gpu_name" | xargs); driver=$(echo "$driver" | xargs)
compute_cap=$(echo "$compute_cap" | xargs)

BUILD_S=${GPU_CHECK_BUILD_S:-120}
TESTS_S=${GPU_CHECK_TESTS_S:-180}
BENCH_S=${GPU_CHECK_BENCH_S:-90}
TRAIN_S=${GPU_CHECK_TRAIN_S:-90}
# Tests that capture a CUDA graph: the backends' own and the whole step(closure) iteration.
GRAPH_TESTS=${GPU_CHECK_GRAPH_TESTS:-"cuda_graph or captur"}

# The folder the bench writes to (bench.harness.meta.device_kind, without needing Python yet).
kind=$(echo "$gpu_name" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
out="bench/results/$kind"
mkdir -p "$out"
report="$out/gpu_check.md"
PY=.venv/bin/python
failures=0
started=$(date -u +"%Y-%m-%d %H:%M UTC")

declare -a outcomes=()
record() {  # record PART STATUS SECONDS DETAIL
  outcomes+=("| $1 | $2 | $3 | $4 |")
  if [ "$2" != "passed" ]; then failures=$((failures + 1)); fi
  echo "gpu-check: $1: $2 (${3}s) $4"
}

# run_part PART BUDGET LOG COMMAND...: runs COMMAND with a time limit, logs its output.
run_part() {
  local part=$1 budget=$2 log=$3; shift 3
  local t0=$SECONDS status rc=0
  timeout --kill-after=10 "$budget" "$@" > "$log" 2>&1 || rc=$?
  case $rc in
    0) status=passed ;;
    124|137) status="timed out after ${budget}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$part" "$status" $((SECONDS - t0)) "\`$(basename "$log")\`"
}

echo "gpu-check: $gpu_name (compute capability $compute_cap, driver $driver), results in $out"

# a. Build for this GPU only (run.sh rebuilds when the arch list or the sources change).
export TORCH_CUDA_ARCH_LIST="$compute_cap"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
run_part "a. build for sm_${compute_cap/./}" "$BUILD_S" "$out/build.log" bash scripts/run.sh build
if ! "$PY" -c "import sassha_fast._C as C, sys; sys.exit(0 if C.with_cuda else 1)" 2>/dev/null; then
  record "a. CUDA part present" "failed" 0 "sassha_fast._C has no CUDA part; see build.log"
fi

# b, c, e run side by side (16 CPU cores, correctness only); d runs alone afterwards.
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
pids=()
timeout --kill-after=10 "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider -rs \
  tests/backends/test_backend_cuda.py tests/backends/test_dispatcher_ops.py \
  tests/backends/test_wrote_nonfinite.py > "$out/tests_cuda.log" 2>&1 & pids+=($!)
timeout --kill-after=10 "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider -rs \
  tests/backends/test_backend_triton.py tests/backends/test_triton_ops.py \
  > "$out/tests_triton.log" 2>&1 & pids+=($!)
timeout --kill-after=10 "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider -rs tests \
  -k "$GRAPH_TESTS" > "$out/tests_cuda_graphs.log" 2>&1 & pids+=($!)
if [ -x "$sanitizer" ]; then
  # Without the caching allocator every tensor is its own allocation, so memcheck sees an
  # access past a tensor's end even when the pool has memory there.
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=10 "$TESTS_S" "$sanitizer" \
      --tool "$tool" --error-exitcode 1 "$PY" scripts/sanitizer_ops.py \
      > "$out/sanitizer_$tool.log" 2>&1 &
    pids+=($!)
  done
fi
t0=$SECONDS
parts=("b. CUDA backend tests|tests_cuda.log" "b. Triton backend tests|tests_triton.log"
       "e. CUDA-graph capture tests (-k '$GRAPH_TESTS')|tests_cuda_graphs.log")
if [ -x "$sanitizer" ]; then
  parts+=("c. compute-sanitizer memcheck|sanitizer_memcheck.log"
          "c. compute-sanitizer racecheck|sanitizer_racecheck.log")
fi
for i in "${!pids[@]}"; do
  rc=0; wait "${pids[$i]}" || rc=$?
  case $rc in
    0) status=passed ;;
    124|137) status="timed out after ${TESTS_S}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "${parts[$i]%%|*}" "$status" $((SECONDS - t0)) "\`${parts[$i]##*|}\`"
done
if [ ! -x "$sanitizer" ]; then
  record "c. compute-sanitizer" "not run" 0 "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"
fi
# The capture tests must have run on the GPU (the pattern selects some, they did not all
# skip); skips are listed with their reasons in the log (-rs).
if ! grep -qE "[1-9][0-9]* passed" "$out/tests_cuda_graphs.log"; then
  record "e. CUDA-graph tests ran" "failed" 0 "none passed; see tests_cuda_graphs.log"
fi

# d. Benchmarks, alone on the GPU.
run_part "d. ops suite: GB/s against a device copy" "$BENCH_S" "$out/bench_ops.log" \
  "$PY" -m bench --quick --suite ops --out "$out/ops"
run_part "d. step suite: SASSHA against AdamW(fused=True), 1M/16M/256M" "$BENCH_S" \
  "$out/bench_step.log" "$PY" -m bench --quick --suite step \
  --sets sweep-1M,sweep-16M,sweep-256M --out "$out/step"
run_part "d. train suite: training iterations" "$TRAIN_S" "$out/bench_train.log" \
  "$PY" -m bench --quick --suite train --out "$out/train"

torch_version=$("$PY" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)" \
  2>/dev/null || echo "unknown")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown")
{
  echo "# gpu-check on $gpu_name"
  echo
  echo "\`bash scripts/run.sh gpu-check\`, started $started, finished $(date -u +"%Y-%m-%d %H:%M UTC")."
  echo
  echo "- device: $gpu_name, compute capability $compute_cap"
  echo "- driver: $driver"
  echo "- torch: $torch_version"
  echo "- commit: $commit"
  echo "- built for: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo
  echo "| part | outcome | seconds | log |"
  echo "| :--- | :--- | ---: | :--- |"
  printf '%s\n' "${outcomes[@]}"
  echo
  echo "Benchmark tables: \`ops/results.md\`, \`step/results.md\`, \`train/results.md\`."
} > "$report"
echo "gpu-check: wrote $report; $failures part(s) did not pass"
[ "$failures" -eq 0 ]
