"""``Index``: a faiss index plus the doc id and modality of every row, searched with
per-call ``SearchParams`` (thread-safe: nothing is mutated at search time).

Threads: faiss releases the GIL during ``search`` and each call runs its own OpenMP team
(``faiss.omp_set_num_threads`` caps it); concurrent calls are safe on CPU indexes. A service
that batches queries (``univl_fast.batching``) gets more from one large call than many small
concurrent ones.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import faiss
import numpy as np

from univl_fast.index import gpu
from univl_fast.index.files import save_index
from univl_fast.index.introspect import (
    IndexParts,
    default_search_params,
    faiss_search_parameters,
    parts_of,
)
from univl_fast.index.params import SearchParams
from univl_fast.types import IMAGE, TEXT, Hit

log = logging.getLogger(__name__)

MODALITY_CODES: dict[str, int] = {TEXT: 0, IMAGE: 1}
MODALITY_NAMES: tuple[str, ...] = (TEXT, IMAGE)


def encode_modalities(modalities: list[str] | np.ndarray) -> np.ndarray:
    """list of "text"|"image" -> (n,) uint8 codes; raises naming the first bad entry."""
    if isinstance(modalities, np.ndarray) and modalities.dtype == np.uint8:
        if modalities.size and int(modalities.max()) >= len(MODALITY_NAMES):
            bad = int(np.flatnonzero(modalities >= len(MODALITY_NAMES))[0])
            raise ValueError(f"modalities[{bad}]: unknown modality code {modalities[bad]}")
        return modalities
    out = np.empty(len(modalities), dtype=np.uint8)
    for i, m in enumerate(modalities):
        code = MODALITY_CODES.get(m)
        if code is None:
            raise ValueError(f"modalities[{i}]: {m!r} is not one of {list(MODALITY_CODES)}")
        out[i] = code
    return out


def check_queries(queries: Any, dim: int) -> np.ndarray:
    """(n, dim) float32 C-contiguous finite queries; raises naming the problem."""
    q = np.asarray(queries)
    if q.ndim != 2:
        raise ValueError(f"queries must be a 2-D (n, {dim}) array, got shape {q.shape}")
    if q.shape[1] != dim:
        raise ValueError(f"queries have dimension {q.shape[1]} but the index holds {dim}-d vectors")
    q = np.ascontiguousarray(q, dtype=np.float32)
    finite = np.isfinite(q).all(axis=1)
    if not finite.all():
        raise ValueError(f"queries[{int(np.flatnonzero(~finite)[0])}] contains NaN or inf")
    return q


def hits_of(
    doc_ids: list[str], modalities: list[str], scores: np.ndarray, rows: np.ndarray
) -> list[list[Hit]]:
    """Hits per query from (scores, rows) arrays; rows of -1 (unfilled slots) are dropped."""
    out: list[list[Hit]] = []
    for srow, rrow in zip(scores.tolist(), rows.tolist(), strict=True):
        out.append(
            [Hit(doc_ids[r], modalities[r], s) for s, r in zip(srow, rrow, strict=True) if r >= 0]
        )
    return out


class _RowSelector:
    """A faiss IDSelector restricting search to the rows of one modality (kept alive here)."""

    def __init__(self, mask: np.ndarray):
        rows = np.flatnonzero(mask)
        self.count = int(rows.size)
        self._bitmap = None
        if self.count and rows[-1] - rows[0] + 1 == self.count:  # contiguous: a range check
            self.sel = faiss.IDSelectorRange(int(rows[0]), int(rows[-1]) + 1)
        else:
            self._bitmap = np.packbits(mask.astype(bool), bitorder="little")
            self.sel = faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(self._bitmap))


class Index:
    """A searchable index: ``search`` returns Hits, ``search_arrays`` (scores, rows).

    Attributes: ``ntotal``, ``dim``, ``manifest`` (dict, see store.py), ``doc_ids`` (list[str],
    row order), ``modalities`` (list[str], row order), ``modality_codes`` ((n,) uint8),
    ``encoding_mismatch`` (how the queries' encoding differs from the corpus's, set when
    loaded for an encoder: see ``univl_fast.index.binding``; None when it does not).
    Saved and loaded by ``univl_fast.index.store.save_index`` / ``load_index``.
    """

    def __init__(
        self,
        faiss_index: faiss.Index,
        doc_ids: list[str],
        modality_codes: np.ndarray,
        manifest: dict[str, Any],
        device: str = "auto",
    ):
        n = int(faiss_index.ntotal)
        if len(doc_ids) != n or modality_codes.shape != (n,):
            raise ValueError(
                f"index has {n} rows but {len(doc_ids)} doc ids and "
                f"{modality_codes.shape[0]} modalities"
            )
        self._cpu = faiss_index
        self._parts: IndexParts = parts_of(faiss_index)
        self.doc_ids = doc_ids
        self.modality_codes = modality_codes
        self.manifest = manifest
        tuned = SearchParams.from_json(manifest.get("search_params"))
        self.default_params = tuned.merged_over(default_search_params(self._parts))
        self._selectors = {
            name: _RowSelector(modality_codes == code) for name, code in MODALITY_CODES.items()
        }
        self._modalities_list: list[str] | None = None
        self.encoding_mismatch: str | None = None
        self._gpu: gpu.GpuIndex | None = None
        if gpu.wants_gpu(device):
            self._gpu = gpu.to_gpu(faiss_index, required=True)

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    @property
    def dim(self) -> int:
        return int(self._cpu.d)

    @property
    def modalities(self) -> list[str]:
        if self._modalities_list is None:
            self._modalities_list = [MODALITY_NAMES[c] for c in self.modality_codes.tolist()]
        return self._modalities_list

    @property
    def faiss_index(self) -> faiss.Index:
        """The CPU faiss index (what ``save`` writes)."""
        return self._cpu

    @property
    def embedding_space(self) -> dict[str, Any] | None:
        """The embedding space of the vectors (None: built before spaces were recorded)."""
        return self.manifest.get("embedding_space")

    @property
    def encoding(self) -> dict[str, Any] | None:
        """How the corpus was encoded (precision, backend, text runtime), when recorded."""
        return self.manifest.get("encoding")

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def count(self, modality: str | None = None) -> int:
        """Rows searchable under ``modality`` (all rows for None)."""
        if modality is None:
            return self.ntotal
        return self._selector(modality).count

    # ------------------------------------------------------------------ search
    def _selector(self, modality: str) -> _RowSelector:
        try:
            return self._selectors[modality]
        except KeyError:
            raise ValueError(
                f"modality must be one of {list(MODALITY_CODES)} or None, got {modality!r}"
            ) from None

    def _check_queries(self, queries: Any) -> np.ndarray:
        return check_queries(queries, self.dim)

    def search_arrays(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        modality: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product.

        queries: (n, d) float32 (other float dtypes are converted). Returns (scores (n, k')
        float32, rows (n, k') int64) with k' = min(k, rows searchable); a row of -1 (score
        -inf) marks a slot an approximate index could not fill. rows index ``doc_ids``.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._check_queries(queries)
        sel = self._selector(modality) if modality is not None else None
        k_eff = min(int(k), sel.count if sel is not None else self.ntotal)
        if q.shape[0] == 0 or k_eff == 0:
            return np.empty((q.shape[0], k_eff), np.float32), np.empty(
                (q.shape[0], k_eff), np.int64
            )
        p = (params or SearchParams()).merged_over(self.default_params)
        if self._gpu is not None:
            reason = self._gpu.cannot_search(k_eff, p, sel is not None)
            if reason is None:
                return self._gpu.search(q, k_eff, p)
            log.debug("searching on CPU: %s", reason)
        fparams, _keep = faiss_search_parameters(self._parts, p, sel.sel if sel else None)
        scores, rows = self._cpu.search(q, k_eff, params=fparams)
        return scores, rows

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        modality: str | None = None,
    ) -> list[list[Hit]]:
        """Top-k Hits per query (best first); empty query array -> []."""
        scores, rows = self.search_arrays(queries, k, params=params, modality=modality)
        return hits_of(self.doc_ids, self.modalities, scores, rows)

    def save(self, directory: str | os.PathLike) -> None:
        """Write this index to ``directory`` (the API name scripts rely on, design.md); the
        writing itself is the free function ``univl_fast.index.files.save_index``."""
        save_index(self, directory)

    def __repr__(self) -> str:
        return (
            f"Index({self.manifest.get('factory')!r}, ntotal={self.ntotal}, dim={self.dim}, "
            f"params={self.default_params}, gpu={self.on_gpu})"
        )
