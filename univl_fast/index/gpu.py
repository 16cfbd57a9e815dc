"""faiss GPU path. Present in every build: on a CPU-only faiss (or no GPU) ``gpu_count()``
answers 0 and ``to_gpu`` returns None (or raises, naming the extra to install, when a GPU was
required).

What moves: the candidate generator (OPQ pre-transform stays on CPU, the IVF-PQ / Flat part
goes to the GPU); a re-ranking store stays in host memory and re-ranks the GPU's candidates
there. Limits of faiss-gpu respected: k and nprobe <= 2048, IVF-PQ code sizes the GPU kernels
support, float16 lookup tables when M * 2^nbits > 16384, no IDSelector (modality-restricted
searches run on the CPU copy). Anything outside those limits falls back to CPU with the
reason logged.

NOT VERIFIED on this project's machines (no GPU, faiss-cpu wheel): written against faiss's
documented GPU API.
"""

from __future__ import annotations

import logging
import threading

import faiss
import numpy as np

from univl_fast.errors import UnivlFastError
from univl_fast.index.introspect import parts_of
from univl_fast.index.params import SearchParams

log = logging.getLogger(__name__)

GPU_MAX_K = 2048
GPU_MAX_NPROBE = 2048
# bytes per code the GPU IVF-PQ kernels implement (faiss/gpu/impl/IVFPQ.cu isSupportedPQCodeLength)
GPU_PQ_CODE_BYTES = frozenset({1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96})


DEVICES = ("auto", "cpu", "gpu", "cuda")


class GpuUnavailable(UnivlFastError, RuntimeError):
    """device="gpu" was asked for but faiss cannot put this index on a GPU here."""


def wants_gpu(device: str) -> bool:
    """Whether an index opened with ``device`` goes to the GPU.

    "gpu" / "cuda": yes (raises later if it cannot). "cpu": no. "auto": no, for now: the GPU
    path has never run on a GPU (unverified), so it is used only when asked for by name; with a
    GPU present this is logged once so the choice is visible.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device in ("gpu", "cuda"):
        return True
    if device == "auto" and gpu_count() > 0:
        _log_auto_stays_on_cpu()
    return False


_auto_logged = False


def _log_auto_stays_on_cpu() -> None:
    global _auto_logged
    if not _auto_logged:
        _auto_logged = True
        log.info(
            "index device 'auto' stays on the CPU: the faiss GPU path is unverified; "
            "pass device='gpu' to use it"
        )


def gpu_count() -> int:
    """GPUs faiss can use here (0 on a CPU-only faiss build)."""
    fn = getattr(faiss, "get_num_gpus", None)
    try:
        return int(fn()) if fn is not None else 0
    except Exception:  # noqa: BLE001 - a broken driver means no usable GPU
        return 0


def unsupported_reason(index: faiss.Index) -> str | None:
    """Why this index cannot go to the GPU, or None if it can."""
    if gpu_count() == 0:
        return "no faiss GPU support here (pip install univl-fast[gpu] on a CUDA host)"
    parts = parts_of(index)
    if parts.ivf is not None:
        pq = getattr(faiss.downcast_index(parts.ivf), "pq", None)
        if pq is not None:
            if int(pq.nbits) != 8:
                return f"GPU IVF-PQ needs 8-bit codes, index has {pq.nbits}"
            if int(pq.code_size) not in GPU_PQ_CODE_BYTES:
                return f"GPU IVF-PQ does not support {pq.code_size} bytes per code"
    return None


class GpuIndex:
    """The GPU copy of an index's candidate generator, searched under faiss-gpu's limits."""

    def __init__(self, cpu_index: faiss.Index, device: int = 0):
        parts = parts_of(cpu_index)
        self._res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        pq = getattr(faiss.downcast_index(parts.ivf), "pq", None) if parts.ivf else None
        if pq is not None and int(pq.M) * (1 << int(pq.nbits)) > 16384:
            co.useFloat16 = True  # float16 lookup tables: required past 16384 entries
        base_gpu = faiss.index_cpu_to_gpu(self._res, device, parts.base, co)
        self._base = base_gpu
        if parts.refine is not None:
            # re-rank on the host from the CPU index's store (owned by the CPU index)
            self._index = faiss.IndexRefine(base_gpu, parts.refine)
            self._index.own_fields = False
            self._index.own_refine_index = False
        else:
            self._index = base_gpu
        self._cpu = cpu_index  # keeps the refine store alive
        self._has_ivf = parts.ivf is not None
        self._has_refine = parts.refine is not None
        # faiss GPU resources are per-device; serialise calls to be safe across threads
        self._lock = threading.Lock()

    def cannot_search(self, k: int, params: SearchParams, restricted: bool) -> str | None:
        if restricted:
            return "faiss-gpu has no IDSelector: modality-restricted search runs on CPU"
        if k > GPU_MAX_K:
            return f"k={k} exceeds faiss-gpu's limit {GPU_MAX_K}"
        if self._has_ivf and (params.nprobe or 1) > GPU_MAX_NPROBE:
            return f"nprobe={params.nprobe} exceeds faiss-gpu's limit {GPU_MAX_NPROBE}"
        if self._has_refine and k * (params.k_factor or 1) > GPU_MAX_K:
            return f"k*k_factor={k * (params.k_factor or 1)} exceeds faiss-gpu's k limit"
        return None

    def search(self, q: np.ndarray, k: int, params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        base = None
        if self._has_ivf:
            base = faiss.SearchParametersIVF()
            base.nprobe = int(params.nprobe or 1)
        top = base
        if self._has_refine:
            top = faiss.IndexRefineSearchParameters()
            top.k_factor = float(params.k_factor or 1)
            if base is not None:
                top.base_index_params = base
        with self._lock:
            return self._index.search(q, k, params=top)


def to_gpu(cpu_index: faiss.Index, required: bool = False, device: int = 0) -> GpuIndex | None:
    """A GpuIndex for ``cpu_index`` or None (reason logged); raises if ``required`` and not
    possible."""
    reason = unsupported_reason(cpu_index)
    if reason is None:
        try:
            return GpuIndex(cpu_index, device)
        except Exception as exc:  # noqa: BLE001 - fall back to CPU, say why
            reason = f"moving the index to GPU {device} failed: {exc}"
    if required:
        raise GpuUnavailable(f"GPU search requested but unavailable: {reason}")
    if gpu_count() > 0:
        log.warning("index stays on CPU: %s", reason)
    else:
        log.debug("index stays on CPU: %s", reason)
    return None
