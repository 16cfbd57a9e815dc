"""The native int8 image tower (torch-free): our own compiled CLIP ViT image transformer.

``NativeImageTower(path)`` loads the exporter's ``image_int8.native.npz`` into
``univl_fast._C.ImageTower``, which runs on the native text tower's kernels (the same build:
``native_text.resolve_isa``; AVX2 or AVX-512 VNNI where the CPU has them). It has the same
``run(pixels) -> raw embeddings`` as the ONNX Runtime image towers (pixels: the preprocessor's
float32 (n, 3, S, S)), so the Encoder uses it in their place for image documents. How it computes: ``csrc/cpu/image_tower.h``.
"""

from __future__ import annotations

import os

from univl_fast.runtime.native_text import (
    NativeTower,
    NativeWeightsError,
    fast_native_available,
    load_native_npz,
)
from univl_fast.utils.env import check_core_knobs

FORMAT = "univl-native-image/1"
# Keys of the constructor that come from the file's meta.
_META_KEYS = (
    "width",
    "heads",
    "layers",
    "hidden",
    "embed_dim",
    "patch",
    "image_size",
    "act",
    "ln_eps",
)


class NativeImageTower(NativeTower):
    """``run(pixels float32 (n, 3, S, S)) -> float32 (n, embed_dim)`` raw image embeddings
    (TypeError for another dtype, ValueError for another shape, each naming what it needs)."""

    def __init__(self, path: str | os.PathLike | bytes, threads: int = 1, isa: str = "auto"):
        """path: the weights file, or its bytes (the exporter verifies before writing). isa:
        'auto' (``native_text.resolve_isa``) or a build from ``native_isas()``."""
        from univl_fast import _C

        check_core_knobs()  # the tower's team reads UNIVL_FAST_TEAM_SPIN_US itself
        self.path, meta, arrays = load_native_npz(path, FORMAT, "image")
        self.meta = meta
        self._build(_C.ImageTower, arrays, _META_KEYS, threads, isa)
        self.image_size: int = int(meta["image_size"])


__all__ = ["FORMAT", "NativeImageTower", "NativeWeightsError", "fast_native_available"]
