"""univl_fast.ops.combine_image_docs (compiled, Eq. 3) against its float64 numpy reference."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import univl_fast
from univl_fast import ops

_C = pytest.importorskip("univl_fast._C", reason="compiled core not built")

REL_TOL = 1e-6  # float32 output vs float64 reference, per element


def random_pair(n: int, d: int, dtype=np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 7919 * n + d)
    # Uniform in [-1, 1): signs mix, so a + b also exercises cancellation.
    a = (rng.random((n, d), dtype=np.float32) * 2 - 1).astype(dtype, copy=False)
    b = (rng.random((n, d), dtype=np.float32) * 2 - 1).astype(dtype, copy=False)
    # Never an all-zero row sum in the random cases (zero rows have their own test).
    # (IEEE addition gives exactly 0 only for x == -y, so the input dtype is enough to check.)
    zero = ~np.any(a + b != 0, axis=1)
    a[zero] = 1
    return a, b


def assert_matches_reference(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Every element within REL_TOL relative error of the float64 reference (row chunks keep
    the float64 temporaries small for the 100k-row cases)."""
    assert out.dtype == np.float32 and out.shape == a.shape
    for start in range(0, a.shape[0], 16384):
        rows = slice(start, start + 16384)
        ref = ops.combine_image_docs_reference(a[rows], b[rows])
        got = out[rows].astype(np.float64)
        assert np.isfinite(got).all(), "an output element is not finite"
        err = np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
        worst = float(err.max()) if err.size else 0.0
        assert worst <= REL_TOL, f"max relative error {worst:.3g} > {REL_TOL} (rows {rows})"


@pytest.fixture(params=_C.build_info()["simd_supported"])
def simd_variant(request):
    """Runs a test once per SIMD kernel this CPU supports, restoring the default after."""
    previous = _C.set_simd_variant(request.param)
    yield request.param
    _C.set_simd_variant(previous)


# ------------------------------------------------------------------ accuracy

SHAPES = [
    (n, d) for n in (1, 3, 100, 100_000) for d in (1, 7, 512, 1031) if n < 100_000 or d <= 512
]


@pytest.mark.parametrize(("n", "d"), SHAPES, ids=[f"n{n}-d{d}" for n, d in SHAPES])
def test_float32_matches_float64_reference(n, d):
    a, b = random_pair(n, d)
    assert_matches_reference(ops.combine_image_docs(a, b), a, b)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 59, 97, 512, 1025])
def test_every_simd_variant_matches_reference(simd_variant, d):
    # Widths around every vector step (4, 8, 16, 32) exercise the main loops and the tails.
    for dtype in (np.float32, np.float16):
        a, b = random_pair(37, d, dtype)
        assert_matches_reference(_C.combine_image_docs(a, b), a, b)


def test_every_simd_variant_large_output(simd_variant):
    # >= 64 MiB of output: the kernels write it with non-temporal stores. d = 516 leaves a
    # 4-wide tail after the 16-wide blocks; row 5 is a zero row, row 9 a NaN row.
    a, b = random_pair(33_000, 516)
    b[5] = -a[5]
    a[9, 100] = np.nan
    out = np.full(a.shape, -7.0, np.float32)
    _C.combine_image_docs(a, b, out=out)
    assert (out[5] == 0).all() and np.isnan(out[9]).all()
    keep = np.ones(len(a), bool)
    keep[[5, 9]] = False
    assert_matches_reference(out[keep], a[keep], b[keep])


@pytest.mark.parametrize(("n", "d"), [(1, 7), (3, 512), (100, 1031), (100_000, 512)])
def test_float16_inputs(n, d):
    a, b = random_pair(n, d, np.float16)
    # The reference sees exactly the fp16 values, widened to float64.
    assert_matches_reference(ops.combine_image_docs(a, b), a, b)


@pytest.mark.parametrize(("da", "db"), [(np.float16, np.float32), (np.float32, np.float16)])
def test_mixed_dtypes(da, db):
    a, _ = random_pair(50, 97, da, seed=1)
    _, b = random_pair(50, 97, db, seed=2)
    assert_matches_reference(ops.combine_image_docs(a, b), a, b)


def test_rows_are_unit_norm():
    a, b = random_pair(1000, 512)
    norms = np.linalg.norm(ops.combine_image_docs(a, b).astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)


# ------------------------------------------------------------------ layouts


def _layouts(n: int, d: int):
    base_a, base_b = random_pair(3 * n, 2 * d + 3, seed=5)
    yield "columns ::2 (copied)", base_a[:n, : 2 * d : 2], base_b[:n, : 2 * d : 2]
    yield "rows ::3 (row stride)", base_a[::3, :d], base_b[::3, :d]
    yield "offset columns 1: (row stride)", base_a[:n, 1 : d + 1], base_b[:n, 1 : d + 1]
    yield "reversed rows ::-1", base_a[:n, :d][::-1], base_b[:n, :d][::-1]
    a, b = random_pair(n, d, seed=6)
    yield "Fortran order (copied)", np.asfortranarray(a), np.asfortranarray(b)
    yield "transposed view (copied)", np.ascontiguousarray(a.T).T, b
    yield "one Fortran, one C", np.asfortranarray(a), b


@pytest.mark.parametrize("d", [7, 512])
def test_non_contiguous_inputs(d):
    for name, a, b in _layouts(100, d):
        assert a.shape == b.shape == (100, d), name
        out = ops.combine_image_docs(a, b)
        assert out.flags.c_contiguous, name
        assert_matches_reference(out, a, b)


def test_broadcast_rows_zero_row_stride():
    a, b = random_pair(50, 33)
    row = np.broadcast_to(a[0], a.shape)  # row stride 0: read in place
    assert row.strides[0] == 0
    assert_matches_reference(ops.combine_image_docs(row, b), row, b)


def test_non_contiguous_float16():
    a, b = random_pair(300, 64, np.float16)
    assert_matches_reference(ops.combine_image_docs(a[::3], b[1::3]), a[::3], b[1::3])
    assert_matches_reference(ops.combine_image_docs(a[:, ::2], b[:, 1::2]), a[:, ::2], b[:, 1::2])


# ------------------------------------------------------------------ out=


@pytest.mark.parametrize(("n", "d"), [(1, 1), (3, 7), (100, 1031), (20_000, 512)])
def test_every_output_element_is_written(n, d):
    a, b = random_pair(n, d)
    out = np.full((n, d), np.nan, dtype=np.float32)  # sentinel
    result = ops.combine_image_docs(a, b, out=out)
    assert result is out
    assert not np.isnan(out).any()
    assert_matches_reference(out, a, b)


def test_out_with_row_stride_leaves_padding_alone():
    a, b = random_pair(64, 33)
    big = np.full((64, 40), 7.0, dtype=np.float32)
    out = big[:, :33]
    ops.combine_image_docs(a, b, out=out)
    assert_matches_reference(out, a, b)
    assert (big[:, 33:] == 7.0).all()


def test_in_place_over_a():
    a, b = random_pair(100, 97)
    expected = ops.combine_image_docs(a, b)
    result = ops.combine_image_docs(a, b, out=a)
    assert result is a
    np.testing.assert_array_equal(a, expected)


def test_empty_shapes():
    for shape in [(0, 5), (5, 0), (0, 0)]:
        a = np.zeros(shape, np.float32)
        out = ops.combine_image_docs(a, a)
        assert out.shape == shape and out.dtype == np.float32


# ------------------------------------------------------------------ defined results


def test_zero_row_gives_zero_output():
    a, b = random_pair(6, 97)
    b[1] = -a[1]  # sums to exactly zero
    a[4] = 0.0
    b[4] = 0.0
    out = ops.combine_image_docs(a, b)
    assert (out[1] == 0).all() and (out[4] == 0).all()
    keep = [0, 2, 3, 5]
    assert_matches_reference(out[keep], a[keep], b[keep])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nan_and_inf_rows_give_nan_rows(dtype):
    a, b = random_pair(8, 41, dtype)
    a[1, 3] = np.nan
    b[2, 40] = np.inf
    a[3, 0] = -np.inf
    a[4, 5], b[4, 5] = np.inf, -np.inf  # inf - inf
    b[5, :] = np.nan
    out = ops.combine_image_docs(a, b)
    for row in (1, 2, 3, 4, 5):
        assert np.isnan(out[row]).all(), row
    keep = [0, 6, 7]
    assert_matches_reference(out[keep], a[keep], b[keep])
    ref = ops.combine_image_docs_reference(a, b)
    assert np.isnan(ref[[1, 2, 3, 4, 5]]).all()


def test_large_values_do_not_overflow():
    # (a + b) and its squares overflow float32; the kernel works in float64.
    a = np.full((2, 9), 3.0e38, dtype=np.float32)
    out = ops.combine_image_docs(a, a)
    np.testing.assert_allclose(out, 1 / 3.0, rtol=1e-6)


def test_tiny_values_keep_precision():
    a, b = random_pair(10, 64)
    a *= 1e-30
    b *= 1e-30
    assert_matches_reference(ops.combine_image_docs(a, b), a, b)


# ------------------------------------------------------------------ argument checks


def test_ndim_error_names_the_input():
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"b must be 2-D \(n, d\); got ndim=1"):
        ops.combine_image_docs(a, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"a must be 2-D .* ndim=3 with shape \(2, 4, 5\)"):
        ops.combine_image_docs(np.ones((2, 4, 5), np.float32), a)


def test_shape_mismatch_names_the_dimension():
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"dimension 1 \(d, columns\) differs.*\(4, 5\).*\(4, 6\)"):
        ops.combine_image_docs(a, np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"dimension 0 \(n, rows\) differs"):
        ops.combine_image_docs(a, np.ones((3, 5), np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.dtype(">f4")])
def test_dtype_error(dtype):
    a = np.ones((4, 5), np.float32)
    with pytest.raises(TypeError, match=r"b has dtype .*expected float32 or float16"):
        ops.combine_image_docs(a, np.ones((4, 5), dtype))


def test_out_errors():
    a = np.ones((4, 5), np.float32)
    with pytest.raises(TypeError, match="out has dtype float64"):
        ops.combine_image_docs(a, a, out=np.empty((4, 5)))
    with pytest.raises(ValueError, match=r"out has the wrong shape: dimension 1 is 6, expected 5"):
        ops.combine_image_docs(a, a, out=np.empty((4, 6), np.float32))
    ro = np.empty((4, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.combine_image_docs(a, a, out=ro)
    with pytest.raises(ValueError, match="contiguous"):
        ops.combine_image_docs(a, a, out=np.empty((4, 10), np.float32)[:, ::2])
    big = np.ones((5, 5), np.float32)
    with pytest.raises(ValueError, match="out overlaps a"):
        ops.combine_image_docs(big[:4], a, out=big[1:])
    with pytest.raises(ValueError, match="device must be"):
        ops.combine_image_docs(a, a, device="tpu")


def test_lists_are_rejected_by_dtype_not_silently_cast():
    with pytest.raises(TypeError, match="float64"):
        ops.combine_image_docs([[1.0, 2.0]], [[3.0, 4.0]])


def test_missing_extension_raises_import_error_with_build_hint(monkeypatch):
    monkeypatch.delattr(univl_fast, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "univl_fast._C", None)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e"):
        ops.combine_image_docs(np.ones((1, 2), np.float32), np.ones((1, 2), np.float32))


# ------------------------------------------------------------------ CUDA


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("n", "d"), [(1, 1), (3, 7), (100, 1031), (100_000, 512)])
def test_cuda_matches_reference_and_cpu(dtype, n, d):
    a, b = random_pair(n, d, dtype)
    gpu = ops.combine_image_docs(a, b, device="cuda")
    assert_matches_reference(gpu, a, b)
    np.testing.assert_allclose(gpu, ops.combine_image_docs(a, b), rtol=1e-6, atol=0)


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
def test_cuda_defined_results():
    a, b = random_pair(8, 97)
    b[1] = -a[1]
    a[2, 5] = np.nan
    b[3, 0] = np.inf
    out = np.full((8, 97), -1.0, np.float32)
    ops.combine_image_docs(a, b, out=out, device="cuda")
    assert (out[1] == 0).all() and np.isnan(out[2]).all() and np.isnan(out[3]).all()
    keep = [0, 4, 5, 6, 7]
    assert_matches_reference(out[keep], a[keep], b[keep])


def _strided_layouts(dtype):
    """Views read in place (no copy) by both kernels, each with its row stride in elements."""
    base_a, base_b = random_pair(300, 70, dtype, seed=9)
    flipped = np.flip(base_a[:100, :64], axis=0)  # a view: row stride -70 elements
    yield "negative row stride (np.flip view)", flipped, base_b[:100, :64], -70
    yield "negative stride, every 3rd row", base_a[::-3, :64], base_b[:100, :64], -210
    yield "positive row stride", base_a[::3, :64], base_b[::3, :64], 210
    row = np.broadcast_to(base_a[0, :64], (100, 64))
    yield "zero row stride (broadcast)", row, base_b[:100, :64], 0
    es = base_a.itemsize
    overlap = np.lib.stride_tricks.as_strided(base_a, shape=(100, 64), strides=(2 * es, es))
    yield "overlapping rows (row stride < d)", overlap, base_b[:100, :64], 2


def _check_strided_layouts(dtype, device: str) -> None:
    for name, a, b, stride in _strided_layouts(dtype):
        assert a.strides[0] == stride * a.itemsize, (name, a.strides)
        assert not a.flags.c_contiguous, name
        out = ops.combine_image_docs(a, b, device=device)
        assert_matches_reference(out, a, b)
        if device != "cpu":
            np.testing.assert_array_equal(out, ops.combine_image_docs(a, b), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_strided_layouts_cpu(dtype):
    _check_strided_layouts(dtype, "cpu")


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_layouts_real_strides(dtype):
    _check_strided_layouts(dtype, "cuda")


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
def test_cuda_out_with_row_stride_and_negative_out():
    a, b = random_pair(64, 33)
    big = np.full((64, 40), 7.0, np.float32)
    ops.combine_image_docs(a, b, out=big[:, :33], device="cuda")
    assert_matches_reference(big[:, :33], a, b)
    assert (big[:, 33:] == 7.0).all()
    flipped_out = np.flip(np.zeros((64, 33), np.float32), axis=0)
    assert flipped_out.strides[0] < 0
    ops.combine_image_docs(a, b, out=flipped_out, device="cuda")
    assert_matches_reference(flipped_out, a, b)


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
def test_cuda_buffers_grow_and_shrink_without_stale_data():
    # Big, small, big again (different data each time): reused device buffers must never leak
    # rows of an earlier call into a later result.
    for i, n in enumerate((5000, 3, 1, 20_000, 17, 5000)):
        a, b = random_pair(n, 300, seed=100 + i)
        out = np.full((n, 300), np.nan, np.float32)
        ops.combine_image_docs(a, b, out=out, device="cuda:0")
        assert_matches_reference(out, a, b)


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
def test_cuda_concurrent_calls_from_threads():
    pairs = [random_pair(3000 + 500 * i, 97 + i, seed=i) for i in range(8)]
    outs: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(5):
            outs[i] = ops.combine_image_docs(*pairs[i], device="cuda")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    for i, (a, b) in enumerate(pairs):
        assert_matches_reference(outs[i], a, b)


@pytest.mark.needs_cuda
@pytest.mark.needs_cuda_core
def test_cuda_missing_device_index_is_named():
    a = np.ones((2, 3), np.float32)
    bad = _C.cuda_device_count()
    with pytest.raises(RuntimeError, match=rf"device {bad} does not exist"):
        ops.combine_image_docs(a, a, device=f"cuda:{bad}")


def test_cuda_device_strings():
    assert ops.cuda_device_index("cuda") == -1
    assert ops.cuda_device_index("cuda:0") == 0
    assert ops.cuda_device_index("cuda:3") == 3
    a = np.ones((2, 3), np.float32)
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA", "cuda:1:2"):
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            ops.combine_image_docs(a, a, device=bad)
    with pytest.raises(ValueError, match="device must be a CUDA device index"):
        _C.combine_image_docs_cuda(a, a, device=-2)


def test_cuda_without_gpu_raises_clearly():
    if _C.cuda_device_count() > 0:
        pytest.skip("a CUDA GPU is present: covered by the needs_cuda tests")
    a = np.ones((2, 3), np.float32)
    expected = "no CUDA device" if _C.build_info()["cuda"] else "built without CUDA"
    with pytest.raises(RuntimeError, match=expected):
        ops.combine_image_docs(a, a, device="cuda")


def test_concurrent_calls_from_threads():
    # The GIL is released while computing: calls from several threads overlap and stay correct.
    pairs = [random_pair(2000, 97 + i, seed=i) for i in range(6)]
    outs: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda i=i: outs.__setitem__(i, ops.combine_image_docs(*pairs[i])))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (a, b) in enumerate(pairs):
        assert_matches_reference(outs[i], a, b)
