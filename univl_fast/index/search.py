"""``Index``: a faiss index plus the doc id and modality of every row, searched with
per-call ``SearchParams`` (thread-safe: nothing is mutated at search time).

Threads: faiss releases the GIL during ``search`` and each call runs its own OpenMP team
(``faiss.omp_set_num_threads`` caps it); concurrent calls are safe on CPU indexes. A service
that batches queries (``univl_fast.search.batching``) gets more from one large call than many small
concurrent ones.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import faiss
import numpy as np

from univl_fast.index import gpu

# MODALITY_NAMES, encode_modalities, check_queries and hits_of are re-exported from here
from univl_fast.index.base import (  # noqa: F401
    MODALITY_CODES,
    MODALITY_NAMES,
    SearchableIndex,
    check_modality,
    check_queries,
    encode_modalities,
    hits_of,
)
from univl_fast.index.files import save_index
from univl_fast.index.introspect import (
    IndexParts,
    default_search_params,
    faiss_search_parameters,
    parts_of,
)
from univl_fast.index.params import SearchParams

log = logging.getLogger(__name__)


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


class Index(SearchableIndex):
    """One faiss index plus the doc id and modality of every row (``SearchableIndex``).

    Also: ``faiss_index`` (the CPU index), ``parts`` (its faiss components), ``selector``
    (the faiss IDSelector of one modality's rows): what a sharded index searching this one
    as a shard needs. Saved and loaded by ``univl_fast.index.store.save_index`` /
    ``load_index``.
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
        tuned = SearchParams.from_json(manifest.get("search_params"))
        super().__init__(
            doc_ids, modality_codes, manifest, tuned.merged_over(default_search_params(self._parts))
        )
        self._selectors = {
            name: _RowSelector(modality_codes == code) for name, code in MODALITY_CODES.items()
        }
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
    def faiss_index(self) -> faiss.Index:
        """The CPU faiss index (what ``save`` writes)."""
        return self._cpu

    @property
    def parts(self) -> IndexParts:
        """The faiss components of the CPU index (coarse quantizer, codes, re-ranking store)."""
        return self._parts

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def selector(self, modality: str | None) -> faiss.IDSelector | None:
        """The faiss selector of ``modality``'s rows (None: every row)."""
        if modality is None:
            return None
        check_modality(modality)
        return self._selectors[modality].sel

    # ------------------------------------------------------------------ search
    def _search_arrays(
        self, q: np.ndarray, k: int, params: SearchParams, modality: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        sel = self.selector(modality)
        if self._gpu is not None:
            reason = self._gpu.cannot_search(k, params, sel is not None)
            if reason is None:
                return self._gpu.search(q, k, params)
            log.debug("searching on CPU: %s", reason)
        fparams, _keep = faiss_search_parameters(self._parts, params, sel)
        return self._cpu.search(q, k, params=fparams)

    def save(self, directory: str | os.PathLike) -> None:
        """Write this index to ``directory`` (the API name scripts rely on, design.md); the
        writing itself is the free function ``univl_fast.index.files.save_index``."""
        save_index(self, directory)

    def __repr__(self) -> str:
        return (
            f"Index({self.manifest.get('factory')!r}, ntotal={self.ntotal}, dim={self.dim}, "
            f"params={self.default_params}, gpu={self.on_gpu})"
        )
