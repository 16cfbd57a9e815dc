#!/usr/bin/env bash
# Cross-builds the compiled core for aarch64 (Graviton, Ampere, ...) on an x86-64 machine, so a
# build break there shows without an aarch64 host:
#   1. the whole module through CMakeLists.txt (CPU only: UNIVL_CUDA=OFF) with
#      aarch64-linux-gnu-g++, checking that no x86 flag or x86 source reaches that build;
#   2. a static test driver (tests/cpp/native_kernels_check.cpp + the portable csrc/cpu files)
#      run under qemu-aarch64: the portable kernels against double / int64 references and a
#      small random text tower (alone, on a thread team, row by row).
# Needs g++-aarch64-linux-gnu and qemu-user (Debian); .ci/run installs them when missing.
# Usage: bash scripts/cross_aarch64.sh [BUILD_DIR]   (default build/aarch64)
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CROSS_CXX:-aarch64-linux-gnu-g++}
QEMU=${CROSS_QEMU:-qemu-aarch64}
OUT=${1:-build/aarch64}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
for tool in "$CXX" "$QEMU" cmake; do
  command -v "$tool" >/dev/null || {
    echo "[cross-aarch64] $tool not found (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)" >&2
    exit 2
  }
done
mkdir -p "$OUT"

echo "[cross-aarch64] 1/2 CMake build of univl_fast._C for aarch64 ($($CXX -dumpfullversion))"
cat >"$OUT/toolchain.cmake" <<TC
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER $(command -v "$CXX"))
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
TC
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$OUT/cmake" "${GEN[@]}" -DCMAKE_TOOLCHAIN_FILE="$PWD/$OUT/toolchain.cmake" \
  -DUNIVL_CUDA=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DPython_EXECUTABLE="$PY" \
  -DPython_INCLUDE_DIR="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >"$OUT/configure.log" \
  || { cat "$OUT/configure.log"; exit 1; }
cmake --build "$OUT/cmake" --parallel "${CROSS_JOBS:-2}"
module=$(find "$OUT/cmake" -maxdepth 1 -name '_C*.so' | head -n 1)
[ -n "$module" ] || { echo "[cross-aarch64] no module built" >&2; exit 1; }
if ! readelf -h "$module" | grep -q 'AArch64'; then
  echo "[cross-aarch64] $module is not an aarch64 object" >&2
  exit 1
fi
if grep -Eq -- '-m(avx|fma|f16c|sse|prefer-vector-width)|_avx(2|512)\.cpp' "$OUT/cmake/compile_commands.json"; then
  echo "[cross-aarch64] an x86 flag or x86 source reached the aarch64 build:" >&2
  grep -Eo -- '-m(avx|fma|f16c|sse|prefer-vector-width)[^ ]*|[^ ]*_avx(2|512)\.cpp' \
    "$OUT/cmake/compile_commands.json" | sort -u >&2
  exit 1
fi

echo "[cross-aarch64] 2/2 kernel self-check under $QEMU"
"$CXX" -std=c++17 -O2 -Wall -Wextra -Wno-unused-parameter -Werror -fopenmp-simd -Icsrc -static \
  -pthread tests/cpp/native_kernels_check.cpp csrc/cpu/text_tower.cpp \
  csrc/cpu/text_tower_generic.cpp csrc/cpu/tower_driver.cpp csrc/serving/team.cpp \
  -o "$OUT/native_kernels_check"
"$QEMU" "$OUT/native_kernels_check"
echo "[cross-aarch64] ok"
