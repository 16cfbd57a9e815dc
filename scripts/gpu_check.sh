#!/usr/bin/env bash
# The GPU check: the one command to run on a CUDA host.
#   1. finds the GPU (nvidia-smi, else the CUDA driver itself); none: says so, exits 0, touches
#      nothing;
#   2. an environment for it: UNIVL_GPU_CHECK_PYTHON (an interpreter used as it is), else the
#      separate venv .venv-gpu built by scripts/setup.sh with the [dev-gpu] extra and
#      constraints/gpu.txt (the pins of pyproject.toml; the compiled core with CUDA for this
#      GPU's architecture). The project's .venv is never touched. .venv-gpu is marked complete
#      only after its install succeeded; an incomplete one (offline host, failed build) is
#      removed and rebuilt on the next run, never used;
#   3. runs every needs_cuda / needs_tensorrt test (JUnit XML: exact counts);
#   4. the GPU benchmarks (bench/bench_gpu.py; UNIVL_GPU_CHECK_BENCH=0 skips them);
#   5. writes a markdown report: REPORT (first argument), default bench/results/gpu.md;
#   6. ends with one verdict line:
#        GPU check: N passed, M skipped, K failed on <GPU name>, driver X, CUDA Y
# Exit status: 0 only when every GPU test ran and passed (a skipped GPU test on a GPU host is a
# failure of the check: it means the GPU path was not exercised) and every step succeeded.
# Everything runs within UNIVL_GPU_CHECK_BUDGET_S seconds (default 480).
#
#   bash scripts/gpu_check.sh [REPORT.md]
set -uo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-bench/results/gpu.md}
BUDGET=${UNIVL_GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)
HOST_PY=${PYTHON:-python3}

# ------------------------------------------------------------------ 1. is there a GPU?
gpus=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total \
    --format=csv,noheader 2>/dev/null | grep -v '^No devices' || true)
fi
# the CUDA driver itself (ctypes, standard library only: no venv needed)
driver_json=$("$HOST_PY" univl_fast/utils/cuda_driver.py 2>/dev/null || echo '{}')
field() { # field KEY: one value of the driver probe's JSON
  "$HOST_PY" -c 'import json,sys; d=json.loads(sys.argv[1] or "{}"); v=d.get(sys.argv[2], "")
print(", ".join(map(str, v)) if isinstance(v, list) else v)' "$driver_json" "$1" 2>/dev/null
}
driver_devices=$(field devices)
if [ -z "$gpus" ] && [ "${driver_devices:-0}" -gt 0 ] 2>/dev/null; then
  gpus="$(field names), $(field capabilities), unknown driver, unknown memory"
fi
if [ -z "$gpus" ]; then
  why=$(field error)
  echo "GPU check: no GPU: nothing to check (nvidia-smi lists none; CUDA driver: ${why:-no answer})."
  echo "Nothing was installed, built or written."
  exit 0
fi

gpu_name=$(echo "$gpus" | head -n1 | awk -F', ' '{print $1}')
cap=$(echo "$gpus" | head -n1 | awk -F', ' '{gsub(/\./, "", $2); print $2}')
driver=$(echo "$gpus" | head -n1 | awk -F', ' '{print $3}')
cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
[ -n "$cuda" ] || cuda=$(field driver_cuda)
[ -n "$cuda" ] || cuda="unknown"

LOG=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
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

# ------------------------------------------------------------------ 2. the environment
if [ -n "${UNIVL_GPU_CHECK_PYTHON:-}" ]; then
  PY=$UNIVL_GPU_CHECK_PYTHON
  STEPS+=("| environment | $PY as it is (UNIVL_GPU_CHECK_PYTHON) | 0 |")
else
  VENV=.venv-gpu
  STAMP=$VENV/.univl-gpu-check-complete
  want=$(cat pyproject.toml constraints/gpu.txt | sha256sum | cut -c1-16)
  if [ -d "$VENV" ] && [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "gpu_check: $VENV is incomplete or was made for other pins: rebuilding it"
    rm -rf "$VENV"
  fi
  if [ ! -d "$VENV" ]; then
    if step "install $VENV ([dev-gpu], constraints/gpu.txt, CUDA sm_${cap})" "$LOG/install.log" \
      env UNIVL_VENV="$VENV" UNIVL_EXTRAS=dev-gpu UNIVL_CONSTRAINTS=constraints/gpu.txt \
      UNIVL_CUDA=ON UNIVL_CUDA_ARCHS="${UNIVL_CUDA_ARCHS:-${cap}-real}" bash scripts/setup.sh; then
      echo "$want" >"$STAMP"
    else
      rm -rf "$VENV" # never leave a half-installed environment behind
    fi
  else
    STEPS+=("| environment | $VENV (complete, same pins) | 0 |")
  fi
  PY=$VENV/bin/python
fi

counts="0 0 0"
if [ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1; then
  "$PY" -m univl_fast.info >"$LOG/info.txt" 2>&1
  # ---------------------------------------------------------------- 3. the GPU tests
  step "GPU tests (-m 'needs_cuda or needs_tensorrt')" "$LOG/tests.log" \
    "$PY" -m pytest tests -m "needs_cuda or needs_tensorrt" -q -rs -p no:cacheprovider \
    --junitxml="$LOG/tests.xml"
  counts=$("$PY" - "$LOG/tests.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 0, 0)
    raise SystemExit
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
n = lambda key: sum(int(s.get(key, 0)) for s in suites)  # noqa: E731
failed = n("failures") + n("errors")
skipped = n("skipped")
print(n("tests") - failed - skipped, skipped, failed)
EOF
)
  # ---------------------------------------------------------------- 4. the GPU benchmarks
  if [ "${UNIVL_GPU_CHECK_BENCH:-1}" != "0" ]; then
    step "GPU benchmarks (bench/bench_gpu.py)" "$LOG/bench.log" \
      env BENCH_GPU_REPORT="$LOG/bench.md" "$PY" -m pytest bench/bench_gpu.py -q -rs -s \
      -p no:cacheprovider --benchmark-disable
  fi
else
  FAILED=1
fi
read -r passed skipped failed <<<"$counts"
STEPS+=("| GPU tests counted | $passed passed, $skipped skipped, $failed failed | 0 |")
# a GPU host where the GPU tests skipped (or none ran) has not checked the GPU path
if [ "$skipped" -gt 0 ] || [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ]; then
  FAILED=1
fi
VERDICT="GPU check: $passed passed, $skipped skipped, $failed failed on $gpu_name, driver $driver, CUDA $cuda"

# ------------------------------------------------------------------ 5. the report
mkdir -p "$(dirname "$REPORT")"
{
  echo "# GPU check"
  echo
  echo "\`bash scripts/gpu_check.sh\` at $(date -u '+%Y-%m-%d %H:%M UTC'), commit" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(($(date +%s) - START)) s of a ${BUDGET} s budget."
  echo
  echo "**$VERDICT**"
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
  for f in install tests bench; do
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
echo "$VERDICT"
exit "$FAILED"
