"""The faiss steps shared by the index builder (``build``), the candidate selection
(``select``) and the sharded fill: an empty index from a factory string, cheaper
OPQ / PQ training settings, adding vectors in chunks, and ``Filled`` (a trained index filled
at full size, as one index or as shards: what tuning and timing search).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from univl_fast.index.params import IndexConfig, SearchParams


@dataclass
class Filled:
    """A trained index filled with the whole corpus: ``index`` the faiss index whose parts
    and per-vector memory describe it (one shard of a sharded one), ``search(queries, k,
    params) -> (scores, rows)`` over all of it, the seconds adding took, and what the filler
    needs to finish it (``state``)."""

    index: faiss.Index
    search: Callable[[np.ndarray, int, SearchParams], tuple[np.ndarray, np.ndarray]]
    add_seconds: float
    state: Any = None


def set_training_costs(index: faiss.Index, cfg: IndexConfig) -> None:
    """Cheaper OPQ / PQ training than faiss's defaults (see IndexConfig). Measured on this
    machine kind: faiss's default OPQ64 training on 512-d took > 10 min of 2 busy cores, most
    of it in 8-d k-means; with these settings it takes about a minute, and the exact
    re-ranking step makes up the small loss in code quality (bench/results/index.md)."""
    top = faiss.downcast_index(index)
    base = faiss.downcast_index(top.base_index) if isinstance(top, faiss.IndexRefine) else top
    if isinstance(base, faiss.IndexPreTransform):
        for i in range(base.chain.size()):
            vt = faiss.downcast_VectorTransform(base.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = int(cfg.opq_iterations)
                vt.niter_pq_0 = int(cfg.pq_kmeans_iterations)
                vt.max_train_points = int(cfg.opq_train_points)
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(base))
    except RuntimeError:
        return
    pq = getattr(ivf, "pq", None)
    if pq is not None:
        pq.cp.niter = int(cfg.pq_kmeans_iterations)
        pq.cp.max_points_per_centroid = int(cfg.pq_points_per_centroid)


def new_index(factory: str, d: int) -> faiss.Index:
    """An empty inner-product index from a faiss factory string (ValueError if invalid)."""
    try:
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid faiss factory string {factory!r}: {exc}") from None


def add_in_chunks(
    index: faiss.Index, vectors: np.ndarray, chunk: int, progress: bool = False, bar=None
) -> float:
    """Add ``vectors`` to ``index`` ``chunk`` rows at a time; returns the seconds it took."""
    t0 = time.perf_counter()
    for start in range(0, vectors.shape[0], chunk):
        block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        index.add(block)
        if bar is not None:
            bar.update(block.shape[0])
    return time.perf_counter() - t0
