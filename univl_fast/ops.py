"""Compiled array ops with their numpy references.

``combine_image_docs`` is UniVL-DR's image-document embedding (paper Eq. 3): the image embedding
plus the caption embedding, L2-normalized, fused in one pass by ``univl_fast._C``.
"""

from __future__ import annotations

import numpy as np

from univl_fast.utils.env import check_core_knobs

__all__ = ["combine_image_docs", "combine_image_docs_reference"]


_core_knobs_checked = False


def _core():
    global _core_knobs_checked
    if not _core_knobs_checked:  # _C reads UNIVL_FAST_SIMD once, at its first combine
        check_core_knobs()
        _core_knobs_checked = True
    try:
        from univl_fast import _C
    except ImportError as exc:  # no silent numpy fallback: the compiled core is part of the package
        raise ImportError(
            "univl_fast._C (the compiled core) is not built or failed to load "
            f"({exc}). Build and install it with: "
            "python -m pip install --no-build-isolation -e .  (needs a C++17 compiler, "
            "cmake>=3.24, ninja and pybind11>=2.12; see scripts/setup.sh)"
        ) from exc
    return _C


def combine_image_docs(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Image-document embeddings: ``out[i] = (a[i] + b[i]) / ||a[i] + b[i]||_2``.

    a: (n, d) float32 or float16, e.g. image embeddings; b: (n, d) float32 or float16, e.g. the
    caption embeddings. Any row stride works without a copy as long as the last dimension is
    contiguous; other layouts are copied first.
    out: optional (n, d) float32 array (contiguous last dimension) to write into; may be ``a``
    itself (float32, same layout) but must not otherwise overlap a or b.
    device: "cpu" (vectorized, multi-threaded, GIL released), "cuda" (the current CUDA device) or
    "cuda:N" (device N): host arrays in and out, copied through per-device reused buffers on
    the device's own stream; needs a build with CUDA and a GPU (unverified: no GPU here).

    Returns the (n, d) float32 result (``out`` when given). The norm is accumulated in float64,
    so the result is within about 1 float32 ulp of a float64 computation.
    Defined results: a row whose sum is all zero gives an all-zero row; a row with any NaN or
    inf in a or b gives an all-NaN row.
    Raises ValueError (ndim != 2, shape mismatch naming the dimension, bad out) or TypeError
    (dtype other than float32/float16).
    """
    _C = _core()
    if device == "cpu":
        return _C.combine_image_docs(a, b, out=out)
    return _C.combine_image_docs_cuda(a, b, out=out, device=cuda_device_index(device))


def cuda_device_index(device: str) -> int:
    """ "cuda" -> -1 (the calling thread's current device), "cuda:N" -> N; ValueError otherwise."""
    if device == "cuda":
        return -1
    prefix, _, index = str(device).partition(":")
    if prefix == "cuda" and index.isdigit():
        return int(index)
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0), got {device!r}")


def combine_image_docs_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy float64 reference of :func:`combine_image_docs` (same defined results).

    a, b: (n, d) arrays of any float dtype. Returns (n, d) float64.
    """
    with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf, 0 / 0: handled below
        s = np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64)
        norm = np.sqrt(np.sum(s * s, axis=1, keepdims=True))
        out = s / norm
    out[(norm == 0).ravel()] = 0.0
    out[~np.isfinite(s).all(axis=1)] = np.nan
    return out
