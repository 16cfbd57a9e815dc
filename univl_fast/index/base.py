"""``SearchableIndex``: what every searchable index shares (one faiss index, its shards in this
process, or its shards on Ray actors): row-order doc ids and modalities, the tuned default
search parameters, the embedding space and encoding from the manifest, the argument checks,
and ``search`` over ``search_arrays``. A subclass implements only its array search
(``_search_arrays``) and ``dim``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from univl_fast.index.params import SearchParams
from univl_fast.types import IMAGE, TEXT, Hit

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


class SearchableIndex:
    """A searchable index: ``search`` returns Hits, ``search_arrays`` (scores, rows).

    Attributes: ``ntotal``, ``dim``, ``manifest`` (dict), ``doc_ids`` (list[str], row order),
    ``modalities`` (list[str], row order), ``modality_codes`` ((n,) uint8),
    ``default_params`` (the tuned search parameters), ``encoding_mismatch`` (how the queries'
    encoding differs from the corpus's, set when loaded for an encoder: see
    ``univl_fast.index.binding``; None when it does not).
    """

    def __init__(
        self,
        doc_ids: list[str],
        modality_codes: np.ndarray,
        manifest: dict[str, Any],
        default_params: SearchParams,
    ):
        self.doc_ids = doc_ids
        self.modality_codes = modality_codes
        self.manifest = manifest
        self.default_params = default_params
        self.encoding_mismatch: str | None = None
        self._modalities_list: list[str] | None = None
        self._counts = {
            name: int((modality_codes == code).sum()) for name, code in MODALITY_CODES.items()
        }

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def modalities(self) -> list[str]:
        if self._modalities_list is None:
            self._modalities_list = [MODALITY_NAMES[c] for c in self.modality_codes.tolist()]
        return self._modalities_list

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
        return False

    def count(self, modality: str | None = None) -> int:
        """Rows searchable under ``modality`` (all rows for None)."""
        if modality is None:
            return self.ntotal
        check_modality(modality)
        return self._counts[modality]

    # ------------------------------------------------------------------ search
    def prepare(
        self, queries: Any, k: int, params: SearchParams | None, modality: str | None
    ) -> tuple[np.ndarray, int, SearchParams]:
        """Checked queries, k' = min(k, rows searchable) and the parameters of one search
        (``params`` over the tuned defaults); raises naming a bad argument."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = check_queries(queries, self.dim)
        k_eff = min(int(k), self.count(modality))
        return q, k_eff, (params or SearchParams()).merged_over(self.default_params)

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
        q, k_eff, p = self.prepare(queries, k, params, modality)
        if q.shape[0] == 0 or k_eff == 0:
            return empty_result(q.shape[0], k_eff)
        return self._search_arrays(q, k_eff, p, modality)

    def _search_arrays(
        self, q: np.ndarray, k: int, params: SearchParams, modality: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The array search itself, on checked queries and 1 <= k <= rows searchable."""
        raise NotImplementedError

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


def check_modality(modality: str) -> None:
    if modality not in MODALITY_CODES:
        raise ValueError(
            f"modality must be one of {list(MODALITY_CODES)} or None, got {modality!r}"
        )


def empty_result(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, k), np.float32), np.empty((n, k), np.int64)
