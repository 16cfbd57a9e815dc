#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with the pinned torch,
# the project (its compiled core built through CMake) and the dev tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${UNIVL_VENV:-.venv}  # scripts/gpu_check.sh sets its own (.venv-gpu)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The versions the tests passed with (scripts/make_constraints.py wrote it from that venv), so
# a fresh install next month gets them, not whatever is newest. UNIVL_CONSTRAINTS=FILE picks
# another (constraints/gpu.txt: a resolve of [dev-gpu]), UNIVL_CONSTRAINTS= none.
CONSTRAINTS=${UNIVL_CONSTRAINTS-constraints/cpu.txt}
# torch: the pinned x86-64 release; on aarch64 the CPU wheels that exist there (pyproject's
# [train] says the same with platform markers)
TORCH=(torch==2.14.1 torchvision==0.29.1)
if [ "$(uname -m)" = aarch64 ]; then
  TORCH=(torch==2.9.1 torchvision==0.24.1)
  if [ -n "$CONSTRAINTS" ]; then
    # the constraints were written on x86-64: without its torch and CUDA wheels
    mkdir -p build
    grep -vE '^(torch|torchvision|triton|nvidia-|cuda-)' "$CONSTRAINTS" > build/constraints-aarch64.txt
    CONSTRAINTS=build/constraints-aarch64.txt
  fi
fi
PIN=()
if [ -n "$CONSTRAINTS" ]; then
  echo "[setup] constraints: $CONSTRAINTS"
  PIN=(-c "$CONSTRAINTS")
fi
echo "[setup] ${TORCH[*]}"
$PIP install -q "${PIN[@]}" "${TORCH[@]}"
echo "[setup] build tools"
$PIP install -q "setuptools>=68" wheel "pybind11>=2.12" "cmake>=3.24" ninja
# The search page's browser test: Debian's Chromium and its driver (Selenium drives them; no
# browser is downloaded by anything else). apt-get update runs only when they are missing.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[setup] chromium + chromium-driver (apt)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
      || echo "[setup] WARNING: could not install chromium; the browser test will be skipped"
  else
    echo "[setup] WARNING: no apt-get: install chromium + chromedriver for the browser test"
  fi
fi
echo "[setup] ray[data]==2.60.0 (scale-out, the [ray] extra)"
$PIP install -q "${PIN[@]}" "ray[data]==2.60.0"
EXTRAS=${UNIVL_EXTRAS:-dev}
echo "[setup] univl-fast[$EXTRAS] (builds univl_fast._C)"
$PIP install -q "${PIN[@]}" --no-build-isolation -e ".[$EXTRAS]"
"$VENV/bin/python" -m univl_fast.info --brief
