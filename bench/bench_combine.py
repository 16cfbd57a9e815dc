"""Fused image-doc combine (Eq. 3) at 100,000 x 512 against numpy and a memory-bound floor.

    .venv/bin/python -m pytest bench/bench_combine.py --benchmark-only -q -p no:cacheprovider \
        --benchmark-columns=min,median,mean,stddev,rounds --benchmark-sort=name

All cases run in the same session on the same arrays (a, b: 100,000 x 512, i.e. 205 MB each in
float32, 102 MB each in float16; out: 205 MB float32, preallocated unless the name says
"new out"):

* ``combine``: ``univl_fast.ops.combine_image_docs(a, b, out=out)`` (all CPU threads, the best
  SIMD kernel; ``combine[avx2]`` etc. force one kernel);
* ``numpy``: the same op in numpy into a preallocated output, as a careful numpy user writes
  it: ``np.add(a, b, out=out)`` (float16 inputs are widened to float32 inside the ufunc, no
  temporaries), then ``out /= np.linalg.norm(out, axis=1, keepdims=True)`` in place (the
  norms are one (n, 1) temporary). ``numpy new arrays`` is the naive form
  ``s = a + b; s / np.linalg.norm(s, ...)`` for reference;
* ``copy``: ``np.copyto`` of a buffer holding both inputs' bytes into another one: measures
  this machine's memcpy bandwidth (bytes read + bytes written per second);
* ``add`` (float32 only): ``np.add(a, b, out=out)``, the exact memory traffic of the op (read a
  and b, write one float32 array) with no reduction.

The last test prints, from the medians: numpy / combine, and the memory floor: the bytes the op
must move (read a and b, write out: 614 MB in float32, 410 MB with float16 inputs) divided by
the memcpy bandwidth, i.e. the time no implementation can beat on this machine, with
combine / floor beside it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from univl_fast import _C, ops

N = int(os.environ.get("BENCH_COMBINE_N", "100000"))  # small values only check the file runs
D = 512
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    a = rng.random((N, D), dtype=np.float32) * 2 - 1
    b = rng.random((N, D), dtype=np.float32) * 2 - 1
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    return {
        "float32": (a, b, np.concatenate([a, b])),
        "float16": (a16, b16, np.concatenate([a16, b16])),
        "out": np.empty((N, D), np.float32),
    }


def _record(benchmark, key: str) -> None:
    MEDIANS[key] = benchmark.stats.stats.median


def _numpy_combine_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The numpy baseline: no full-size temporaries, result written into ``out`` (float32)."""
    np.add(a, b, out=out, dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _numpy_combine_new_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a.astype(np.float32) + b.astype(np.float32)
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def op_bytes(a: np.ndarray, b: np.ndarray) -> int:
    """Bytes the combine must move at least: read a and b once, write one float32 (n, d)."""
    return a.nbytes + b.nbytes + a.shape[0] * a.shape[1] * 4


def memory_floor_s(a: np.ndarray, b: np.ndarray, copy_s: float, copied_bytes: int) -> float:
    """Seconds the op takes at the measured memcpy bandwidth (a copy of ``copied_bytes`` bytes
    that took ``copy_s`` moved 2 * copied_bytes: read and written)."""
    return op_bytes(a, b) / (2 * copied_bytes / copy_s)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_combine(benchmark, arrays, dtype):
    a, b, _ = arrays[dtype]
    out = arrays["out"]
    benchmark.group = f"combine {N}x{D} {dtype}"
    benchmark.extra_info["simd"] = _C.build_info()["simd_selected"]
    benchmark.extra_info["threads"] = _C.build_info()["threads"]
    benchmark.pedantic(
        ops.combine_image_docs, args=(a, b), kwargs={"out": out}, rounds=15, warmup_rounds=2
    )
    _record(benchmark, f"combine {dtype}")


@pytest.mark.parametrize("simd", _C.build_info()["simd_supported"])
def test_combine_per_kernel(benchmark, arrays, simd):
    a, b, _ = arrays["float32"]
    out = arrays["out"]
    benchmark.group = f"combine {N}x{D} float32"
    previous = _C.set_simd_variant(simd)
    try:
        benchmark.pedantic(
            ops.combine_image_docs, args=(a, b), kwargs={"out": out}, rounds=7, warmup_rounds=1
        )
    finally:
        _C.set_simd_variant(previous)
    _record(benchmark, f"combine[{simd}] float32")


def test_combine_new_out(benchmark, arrays):
    a, b, _ = arrays["float32"]
    benchmark.group = f"combine {N}x{D} float32"
    benchmark.pedantic(ops.combine_image_docs, args=(a, b), rounds=10, warmup_rounds=1)
    _record(benchmark, "combine new out float32")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_numpy(benchmark, arrays, dtype):
    a, b, _ = arrays[dtype]
    out = np.empty((N, D), np.float32)
    benchmark.group = f"combine {N}x{D} {dtype}"
    benchmark.pedantic(_numpy_combine_into, args=(a, b, out), rounds=5, warmup_rounds=1)
    ref = ops.combine_image_docs_reference(a[:64], b[:64])
    np.testing.assert_allclose(out[:64], ref, rtol=1e-5, atol=1e-6)  # it computes the same op
    _record(benchmark, f"numpy {dtype}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_numpy_new_arrays(benchmark, arrays, dtype):
    a, b, _ = arrays[dtype]
    benchmark.group = f"combine {N}x{D} {dtype}"
    benchmark.pedantic(_numpy_combine_new_arrays, args=(a, b), rounds=5, warmup_rounds=1)
    _record(benchmark, f"numpy new arrays {dtype}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_copy_floor(benchmark, arrays, dtype):
    _, _, both = arrays[dtype]
    dst = np.empty_like(both)
    benchmark.group = f"combine {N}x{D} {dtype}"
    benchmark.pedantic(np.copyto, args=(dst, both), rounds=15, warmup_rounds=2)
    _record(benchmark, f"copy {dtype}")


def test_add_floor(benchmark, arrays):
    # float32 only: numpy's float16 -> float32 add is a slow casting loop, no floor at all.
    a, b, _ = arrays["float32"]
    out = arrays["out"]
    benchmark.group = f"combine {N}x{D} float32"
    benchmark.pedantic(np.add, args=(a, b), kwargs={"out": out}, rounds=15, warmup_rounds=2)
    _record(benchmark, "add float32")


def test_zz_ratios(benchmark, arrays):
    """Prints the ratios of the medians above (runs last: pytest keeps file order)."""
    benchmark.group = "ratios (not a timing)"
    benchmark.pedantic(lambda: None, rounds=1)
    lines = []
    for dtype in ("float32", "float16"):
        c = MEDIANS.get(f"combine {dtype}")
        if c is None:
            continue
        a, b, both = arrays[dtype]
        parts = [f"{dtype}: combine {c * 1e3:.1f} ms"]
        for base in ("numpy", "numpy new arrays"):
            m = MEDIANS.get(f"{base} {dtype}")
            if m is not None:
                parts.append(f"{base}/combine {m / c:.2f}x ({base} {m * 1e3:.1f} ms)")
        copy_s = MEDIANS.get(f"copy {dtype}")
        if copy_s is not None:
            floor = memory_floor_s(a, b, copy_s, both.nbytes)
            gbps = 2 * both.nbytes / copy_s / 1e9
            parts.append(
                f"memory floor {floor * 1e3:.1f} ms ({op_bytes(a, b) / 1e6:.0f} MB at the "
                f"measured memcpy {gbps:.1f} GB/s), combine/floor {c / floor:.2f}x"
            )
        add = MEDIANS.get(f"add {dtype}")
        if add is not None:
            parts.append(f"combine/add {c / add:.2f}x (add {add * 1e3:.1f} ms)")
        lines.append("; ".join(parts))
    print("\n" + "\n".join(lines))
