#!/usr/bin/env bash
# Run the ISA-sensitive tests (pytest marker `isa`) under each CPU model qemu-x86_64 emulates that
# differs from this host, one verdict line per leg:
#
#     bash scripts/cpu_matrix.sh                 # default legs: Haswell Skylake-Server Nehalem qemu64
#     bash scripts/cpu_matrix.sh Haswell         # one leg (what CI runs)
#
# The venv (.venv, or $PYTHON) runs unchanged under the emulated CPU: numpy, onnxruntime and
# univl_fast._C dispatch on the CPUID qemu shows them. qemu's TCG has no AVX-512, so every model
# with AVX-512 (Skylake-Server, Cascadelake, Icelake) runs as AVX2: a leg whose CPU features
# (as numpy reads them) equal the host's or an earlier leg's is skipped, saying so. A model the
# venv's wheels cannot run on (numpy 2 needs x86-64-v2: SSE4.2, POPCNT) is skipped with the
# reason. Emulation is ~200x slower than native: correctness only, never speed.
# Env: PYTHON (default .venv/bin/python), QEMU (default qemu-x86_64), CPU_MATRIX_TIMEOUT (seconds
# per leg, default 1200). Exit status: 1 when a leg failed, 0 otherwise (skips included).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
QEMU=${QEMU:-qemu-x86_64}
LEG_TIMEOUT=${CPU_MATRIX_TIMEOUT:-1200}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ $(uname -m) != x86_64 ]]; then
    echo "cpu_matrix: every leg skipped: this host is $(uname -m); the legs emulate x86_64 CPUs"
    exit 0
fi
if ! command -v "$QEMU" >/dev/null; then
    echo "cpu_matrix: $QEMU not found (Debian: apt-get install qemu-user)" >&2
    exit 2
fi
mapfile -t FILES < <(grep -l "pytest.mark.isa" tests/test_*.py)
if [[ ${#FILES[@]} -eq 0 ]]; then
    echo "cpu_matrix: no test module uses the isa marker" >&2
    exit 2
fi
LEGS=("$@")
[[ ${#LEGS[@]} -gt 0 ]] || LEGS=(Haswell Skylake-Server Nehalem qemu64)

# the CPU features numpy sees, one sorted line (natively or under qemu)
FEATURES='from numpy._core._multiarray_umath import __cpu_features__ as f
print(" ".join(sorted(k for k, v in f.items() if v)))'
quiet() { grep -v "TCG doesn't support requested feature"; }

seen=("$("$PY" -c "$FEATURES")")
seen_by=("the host")
failed=0
for cpu in "${LEGS[@]}"; do
    if ! features=$("$QEMU" -cpu "$cpu" "$PY" -c "$FEATURES" 2>/tmp/cpu_matrix_probe.$$); then
        why=$(quiet </tmp/cpu_matrix_probe.$$ | tail -1)
        echo "cpu_matrix $cpu: SKIP: the venv's Python/numpy does not start on this CPU model (${why:-no output})"
        continue
    fi
    if ! "$QEMU" -cpu "$cpu" "$PY" -c "import onnxruntime, faiss, univl_fast._C" \
        >/tmp/cpu_matrix_probe.$$ 2>&1; then
        why=$(quiet </tmp/cpu_matrix_probe.$$ | tail -1)
        echo "cpu_matrix $cpu: SKIP: the venv's onnxruntime/faiss/univl_fast._C do not load on this CPU model (${why:-no output})"
        continue
    fi
    dup=""
    for i in "${!seen[@]}"; do
        [[ ${seen[$i]} == "$features" ]] && dup=${seen_by[$i]}
    done
    if [[ -n $dup ]]; then
        echo "cpu_matrix $cpu: SKIP: same CPU features as $dup under qemu (TCG has no AVX-512)"
        continue
    fi
    seen+=("$features")
    seen_by+=("$cpu")
    isa=$(tr ' ' '\n' <<<"$features" | grep -E '^(AVX2|FMA3|AVX512F|AVX512VNNI|AVXVNNI|SSE42)$' | tr '\n' ' ')
    log=$(mktemp /tmp/cpu_matrix_"$cpu".XXXXXX.log)
    t0=$SECONDS
    timeout "$LEG_TIMEOUT" "$QEMU" -cpu "$cpu" "$PY" -m pytest -q -p no:cacheprovider -m isa \
        "${FILES[@]}" 2>&1 | quiet >"$log"
    rc=${PIPESTATUS[0]}
    summary=$(grep -E '[0-9]+ (passed|failed|error|skipped)' "$log" | tail -1)
    secs=$((SECONDS - t0))
    if [[ $rc -eq 0 ]]; then
        echo "cpu_matrix $cpu: PASS: ${summary} [${isa% }] (${secs}s emulated)"
    else
        failed=1
        [[ $rc -eq 124 ]] && summary="timed out after ${LEG_TIMEOUT}s"
        echo "cpu_matrix $cpu: FAIL (exit $rc): ${summary:-no summary} [${isa% }]; log $log"
        tail -40 "$log"
    fi
done
rm -f /tmp/cpu_matrix_probe.$$
exit $failed
