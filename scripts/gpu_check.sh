#!/usr/bin/env bash
# The GPU check (issue 10 section 3), one prepared script for a CUDA host:
#   1. build univl_fast._C with its CUDA kernels for the GPU found here (scripts/setup.sh with
#      UNIVL_CUDA=ON and this GPU's architecture only, so nvcc compiles one target);
#   2. swap the CPU builds of ONNX Runtime / faiss for the GPU ones ([gpu] extra; skipped with
#      UNIVL_GPU_CHECK_INSTALL=0, or when pip cannot reach them: the CPU pair is put back);
#   3. run every needs_cuda / needs_tensorrt test;
#   4. run the GPU benchmarks (bench/bench_gpu.py: combine kernel vs numpy / torch, ORT CUDA and
#      TensorRT fp16 vs ORT CPU on ViT-B-32, faiss GPU IVF-PQ vs CPU at 1M vectors);
#   5. write a markdown report: REPORT (first argument), default bench/results/gpu.md.
# Everything runs within UNIVL_GPU_CHECK_BUDGET_S seconds (default 480 = 8 minutes): each step
# gets what is left, and a step cut short is reported as such.
#
#   bash scripts/gpu_check.sh [REPORT.md]
#
# Where no GPU is visible it says so and exits 0 without building or writing anything.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-bench/results/gpu.md}
BUDGET=${UNIVL_GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)

gpus=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total \
    --format=csv,noheader 2>/dev/null | grep -v '^No devices' || true)
fi
if [ -z "$gpus" ]; then
  echo "gpu_check: no GPU visible on this machine (nvidia-smi is missing or lists none):" \
    "nothing to check, no report written."
  exit 0
fi

LOG=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
PY=.venv/bin/python
STEPS=()
FAILED=0
left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME LOGFILE CMD...: runs CMD with the time that is left, records status and seconds.
step() {
  local name=$1 log=$2 t0 rc remaining
  shift 2
  remaining=$(left)
  if [ "$remaining" -le 5 ]; then
    STEPS+=("| $name | not run: time budget spent | 0 |")
    FAILED=1
    return 1
  fi
  echo "gpu_check: $name (${remaining}s left)"
  t0=$(date +%s)
  timeout --kill-after=10 "$remaining" "$@" >"$log" 2>&1
  rc=$?
  local status="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="cut short at the time budget"
  elif [ "$rc" -ne 0 ]; then
    status="failed (exit $rc; last lines below)"
  fi
  STEPS+=("| $name | $status | $(($(date +%s) - t0)) |")
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

cap=$(echo "$gpus" | head -n1 | awk -F', ' '{gsub(/\./, "", $2); print $2}')
export UNIVL_CUDA=ON
export UNIVL_CUDA_ARCHS=${UNIVL_CUDA_ARCHS:-${cap}-real}
step "build with CUDA (sm_${cap})" "$LOG/build.log" bash scripts/setup.sh

if [ -x "$PY" ] && [ "${UNIVL_GPU_CHECK_INSTALL:-1}" != "0" ]; then
  # One module per pair: the CPU build goes before its GPU build comes (README, GPU status).
  swap_to_gpu="$PY -m pip uninstall -y -q onnxruntime faiss-cpu && $PY -m pip install -q \
    'onnxruntime-gpu>=1.18' 'faiss-gpu>=1.8' 'tensorrt>=10' 'cuda-python>=12.6'"
  step "install the [gpu] extra's packages" "$LOG/install.log" bash -c "$swap_to_gpu"
  if ! $PY -c "import onnxruntime, faiss" >/dev/null 2>&1; then
    # Uninstalled but the GPU builds did not come (offline host): put the CPU pair back.
    $PY -m pip install -q "onnxruntime>=1.18" "faiss-cpu>=1.8" >>"$LOG/install.log" 2>&1
  fi
fi

if [ -x "$PY" ]; then
  $PY -m univl_fast.info >"$LOG/info.txt" 2>&1
  step "GPU tests (-m 'needs_cuda or needs_tensorrt')" "$LOG/tests.log" \
    $PY -m pytest tests -m "needs_cuda or needs_tensorrt" -q -rs -p no:cacheprovider
  step "GPU benchmarks (bench/bench_gpu.py)" "$LOG/bench.log" \
    env BENCH_GPU_REPORT="$LOG/bench.md" $PY -m pytest bench/bench_gpu.py -q -rs -s \
    -p no:cacheprovider --benchmark-disable
fi

mkdir -p "$(dirname "$REPORT")"
{
  echo "# GPU check"
  echo
  echo "\`bash scripts/gpu_check.sh\` at $(date -u '+%Y-%m-%d %H:%M UTC'), commit" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(($(date +%s) - START)) s of a ${BUDGET} s budget."
  echo
  echo "GPU(s): name, compute capability, driver, memory:"
  echo
  echo "$gpus" | sed 's/^/- /'
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${STEPS[@]}"
  echo
  if [ -s "$LOG/info.txt" ]; then
    echo "## Build and environment (python -m univl_fast.info)"
    echo
    echo '```'
    cat "$LOG/info.txt"
    echo '```'
    echo
  fi
  if [ -s "$LOG/tests.log" ]; then
    echo "## GPU tests"
    echo
    echo '```'
    grep -E "passed|failed|error|SKIPPED|FAILED|ERROR" "$LOG/tests.log" | tail -n 60
    echo '```'
    echo
  fi
  if [ -s "$LOG/bench.md" ]; then
    echo "## GPU benchmarks (medians)"
    echo
    cat "$LOG/bench.md"
    echo
  fi
  for f in build install tests bench; do
    if [ "$FAILED" -ne 0 ] && [ -s "$LOG/$f.log" ]; then
      echo "## Last lines of the $f log"
      echo
      echo '```'
      tail -n 25 "$LOG/$f.log"
      echo '```'
      echo
    fi
  done
  echo "Logs: $LOG"
} >"$REPORT"
echo "gpu_check: report written to $REPORT (logs in $LOG)"
exit "$FAILED"
