"""The native int8 text tower (torch-free): our own compiled CLIP text transformer.

``NativeTextTower(path)`` loads the exporter's ``text_int8.native.npz`` into
``univl_fast._C.TextTower``, on the best build of its kernels this CPU runs (``native_isas``:
generic < avx2 < avx512_vnni; ``UNIVL_FAST_NATIVE_ISA`` forces a lower one, ``.isa`` says which
runs). It has the same ``run(ids) -> raw embeddings`` as the ONNX Runtime towers, so the Encoder
uses it in their place for queries, text documents and captions. Why it exists and how it computes:
``csrc/cpu/text_tower.h``; measured speed: ``BENCHMARKS.md``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from univl_fast.errors import UnivlFastError
from univl_fast.utils.env import EnvVarError, check_core_knobs, env_choice

FORMAT = "univl-native-text/1"
ISA_KNOB = "UNIVL_FAST_NATIVE_ISA"
# Builds fast enough for ``auto`` to prefer the native towers (exact int32 GEMMs in every build;
# the portable one is a scalar GEMM).
FAST_ISAS = ("avx2", "avx512_vnni")
# Keys of the constructor that come from the file's meta.
_META_KEYS = (
    "vocab",
    "width",
    "heads",
    "layers",
    "hidden",
    "context",
    "embed_dim",
    "act",
    "pool",
    "eos_id",
    "ln_eps",
)


class NativeWeightsError(UnivlFastError, ValueError):
    """A native tower weights file (or array) that cannot be loaded."""


def load_native_npz(
    path: str | os.PathLike | bytes, fmt: str, tower: str
) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """(path, meta, arrays) of a native ``tower`` weights file (or its bytes) of format ``fmt``;
    NativeWeightsError naming the file for anything else."""
    in_memory = isinstance(path, (bytes, bytearray))
    where = Path("<memory>") if in_memory else Path(path)
    try:
        with np.load(io.BytesIO(path) if in_memory else where, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NativeWeightsError(f"{where}: not a readable .npz file ({exc})") from exc
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError) as exc:
        raise NativeWeightsError(
            f"{where}: not a native {tower}-tower file (no valid meta)"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise NativeWeightsError(f"{where}: format {got!r}, expected {fmt!r}")
    return where, meta, arrays


def embedding_fp16(table: np.ndarray, what: str) -> np.ndarray:
    """A float embedding table as the native tower keeps it: float16 (NativeWeightsError if a
    value does not fit: beyond +-65504, or not finite)."""
    with np.errstate(over="ignore"):  # reported below
        half = np.asarray(table, dtype=np.float16)
    if not np.isfinite(half).all():
        raise NativeWeightsError(f"{what}: values beyond the float16 range (+-65504) or not finite")
    return half


def native_isas() -> list[str]:
    """Builds of the native towers' kernels this CPU runs, best last: 'generic' always, 'avx2'
    (AVX2 + FMA + F16C), 'avx512_vnni' (AVX-512 F/BW/VL/DQ + VNNI)."""
    from univl_fast import _C

    return list(_C.text_tower_isas())


def resolve_isa(isa: str = "auto") -> str:
    """The kernel build a native tower runs for ``isa``: itself when named (the compiled tower
    refuses one this CPU lacks); for 'auto' the one ``UNIVL_FAST_NATIVE_ISA`` forces, else the
    best this CPU runs. EnvVarError naming the knob, its value and this CPU's builds when the
    knob asks for one it lacks."""
    if isa != "auto":
        return isa
    have = native_isas()
    forced = env_choice(ISA_KNOB)
    if forced is None or forced == "auto":
        return have[-1]
    if forced not in have:
        raise EnvVarError(ISA_KNOB, forced, f"auto or a build this CPU runs ({', '.join(have)})")
    return forced


def fast_native_available() -> tuple[bool, str]:
    """(True, "") when the native towers would run a fast build here (avx2 or avx512_vnni,
    ``UNIVL_FAST_NATIVE_ISA`` considered); else (False, why). The portable build is correct but
    scalar (ONNX Runtime is faster), so 'auto' does not pick it."""
    isa = resolve_isa()
    if isa in FAST_ISAS:
        return True, ""
    if native_isas()[-1] in FAST_ISAS:
        return False, f"{ISA_KNOB}={isa} forces the native towers' portable (slow) kernels"
    return False, (
        "this CPU has neither AVX2 (+FMA, F16C) nor AVX-512 VNNI (the native towers' fast "
        "kernels; the portable build is scalar)"
    )


class NativeTower:
    """What the native towers share: ``run`` (the compiled tower's), thread views and the
    in-flight count. Subclasses set ``_tower`` (a ``univl_fast._C`` tower), ``path``, ``isa``
    and ``threads``."""

    _tower = None
    path: Path
    isa: str
    threads: int

    def _build(self, ctor, arrays: dict, keys: tuple[str, ...], threads: int, isa: str) -> None:
        """The compiled tower ``ctor(arrays, **meta[keys], threads, isa)`` (self.meta set);
        NativeWeightsError naming the file for weights it refuses."""
        isa = resolve_isa(isa)  # EnvVarError (a ValueError, not the file's fault) passes
        try:
            self._tower = ctor(
                arrays, **{k: self.meta[k] for k in keys}, threads=int(threads), isa=isa
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NativeWeightsError(f"{self.path}: {exc}") from exc
        self.isa = self._tower.isa
        self.threads = self._tower.threads
        self.embed_dim: int = int(self.meta["embed_dim"])
        self.weight_bytes: int = self._tower.weight_bytes  # packed int8 weights

    def with_threads(self, threads: int):
        """The same weights (shared, not copied) run with ``threads`` threads."""
        view = copy.copy(self)
        view._tower = self._tower.with_threads(int(threads))
        view.threads = view._tower.threads
        return view

    @property
    def in_flight(self) -> int:
        """Calls running now on this tower and the views sharing its weights."""
        return self._tower.in_flight

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._tower.run(x)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, isa={self.isa!r}, threads={self.threads})"
        )


class NativeTextTower(NativeTower):
    """``run(ids int64 (batch, seq)) -> float32 (batch, embed_dim)`` raw text embeddings (ids
    converted to C-contiguous int64 by the binding)."""

    def __init__(self, path: str | os.PathLike | bytes, threads: int = 1, isa: str = "auto"):
        """path: the weights file, or its bytes (the exporter verifies before writing). isa:
        'auto' (``resolve_isa``) or a build from ``native_isas()``."""
        from univl_fast import _C

        check_core_knobs()  # the tower's team reads UNIVL_FAST_TEAM_SPIN_US itself
        self.path, meta, arrays = load_native_npz(path, FORMAT, "text")
        self.meta = meta
        emb = arrays.get("token_embedding")
        if emb is not None and emb.dtype in (np.float16, np.float32):  # float32: older files
            arrays["token_embedding"] = embedding_fp16(emb, f"{self.path}: token_embedding")
        self._build(_C.TextTower, arrays, _META_KEYS, threads, isa)
        self.embedding_bytes: int = self._tower.embedding_bytes  # float16 token embedding


__all__ = [
    "FAST_ISAS",
    "FORMAT",
    "ISA_KNOB",
    "NativeTextTower",
    "NativeTower",
    "NativeWeightsError",
    "embedding_fp16",
    "fast_native_available",
    "load_native_npz",
    "native_isas",
    "resolve_isa",
]
