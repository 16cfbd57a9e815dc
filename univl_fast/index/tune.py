"""Tuning: the cheapest (nprobe, k_factor) that reaches a recall@k target against exact search.

Recall is tie-aware: a returned row counts as correct when its exact score is at least the
exact k-th best score (minus a float32 rounding tolerance), so an index returning a different
member of a group of tied vectors is not penalised.

Without held-out queries, tuning uses ``fallback_tune_queries``: a seeded random sample of
corpus vectors, each perturbed by isotropic Gaussian noise to cosine ~0.9 with its source and
re-normalised. The source vector stays in the corpus (as a query's positive would), the query
itself is not in it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from univl_fast.index.params import SearchParams

log = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-5  # float32 rounding of a 512-d unit-vector inner product is ~1e-6
K_FACTORS = (1, 2, 4, 8, 16, 32, 64)
MAX_NPROBE = 2048  # also faiss-gpu's limit, so a tuned value is valid on both


def fallback_tune_queries(vectors: np.ndarray, n: int, seed: int, noise_cos: float = 0.9):
    """(n, d) float32 unit queries near random corpus rows (see module docstring)."""
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(vectors.shape[0], size=min(n, vectors.shape[0]), replace=False))
    base = np.asarray(vectors[rows], dtype=np.float32)
    d = base.shape[1]
    # |noise| chosen so that cos(base, base + noise) ~ noise_cos for a unit base vector
    sigma = math.tan(math.acos(noise_cos)) / math.sqrt(d)
    q = base + rng.standard_normal(base.shape).astype(np.float32) * sigma
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262_144
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: (scores (nq, k) float32, rows (nq, k) int64).

    Streams over the corpus in chunks (works on a memory-mapped array without loading it).
    """
    nq = queries.shape[0]
    k = min(k, vectors.shape[0])
    best_d = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    for start in range(0, vectors.shape[0], chunk):
        block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        d, i = faiss.knn(queries, block, min(k, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        i = i + start
        cat_d = np.concatenate([best_d, d], axis=1)
        cat_i = np.concatenate([best_i, i], axis=1)
        order = np.argsort(-cat_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cat_d, order, axis=1)
        best_i = np.take_along_axis(cat_i, order, axis=1)
    return best_d, best_i


def tie_aware_recall(
    vectors: np.ndarray,
    queries: np.ndarray,
    rows: np.ndarray,
    exact_scores: np.ndarray,
    k: int,
) -> float:
    """Mean over queries of |{returned rows scoring >= exact k-th score}| / min(k, available).

    rows: (nq, >=k) int64 returned by the index (-1 = no result); exact_scores: (nq, k') exact
    top scores, k' = min(k, corpus size). Exact scores of returned rows are recomputed.
    """
    k_eff = min(k, exact_scores.shape[1])
    if k_eff == 0 or queries.shape[0] == 0:
        return 1.0
    rows = rows[:, :k_eff]
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    flat = np.unique(safe)
    lookup = np.asarray(vectors[flat], dtype=np.float32)
    pos = np.searchsorted(flat, safe)
    true = np.einsum("qd,qkd->qk", queries, lookup[pos])
    thresh = exact_scores[:, k_eff - 1 : k_eff] - SCORE_TOLERANCE
    hits = ((true >= thresh) & valid).sum(axis=1)
    return float(np.mean(np.minimum(hits, k_eff) / k_eff))


@dataclass
class TuneResult:
    params: SearchParams
    recall: float
    target_met: bool
    queries: int
    k: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "search_params": self.params.to_json(),
            "recall_at_k": self.recall,
            "k": self.k,
            "target_met": self.target_met,
            "queries": self.queries,
            "trials": self.trials,
        }


def _cost(nprobe: int, k_factor: int, k: int, list_len: float, code: int, refine: int) -> float:
    """Bytes touched per query: scanned codes + re-ranked vectors (the coarse step is fixed)."""
    return nprobe * list_len * code + k_factor * k * refine


def tune(
    search: Callable[[np.ndarray, int, SearchParams], tuple[np.ndarray, np.ndarray]],
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    target: float,
    nlist: int | None,
    has_refine: bool,
    code_bytes: int,
    refine_bytes: int,
) -> TuneResult:
    """Find the cheapest SearchParams reaching ``target`` recall@k (tie-aware, vs exact).

    search(queries, k, params) -> (scores, rows) runs the index. For each k_factor (deepest
    first; just None without refine) find the smallest power-of-two nprobe reaching the
    target, walking up from the previous k_factor's answer (recall grows with nprobe and with
    k_factor), and stop once scanning alone costs more than the best pair so far; keep the
    pair with the lowest estimated bytes touched per query (``_cost``). If no pair reaches the
    target, the best recall measured wins (``target_met`` False, a warning logged).
    """
    n = vectors.shape[0]
    exact_scores, _ = exact_search(vectors, queries, k)
    trials: list[dict[str, Any]] = []
    cache: dict[tuple[int | None, int | None], float] = {}

    def recall_of(nprobe: int | None, kf: int | None) -> float:
        key = (nprobe, kf)
        if key not in cache:
            _, rows = search(queries, k, SearchParams(nprobe=nprobe, k_factor=kf))
            cache[key] = tie_aware_recall(vectors, queries, rows, exact_scores, k)
            trials.append({"nprobe": nprobe, "k_factor": kf, "recall": round(cache[key], 5)})
            log.debug("tune nprobe=%s k_factor=%s recall=%.4f", nprobe, kf, cache[key])
        return cache[key]

    k_factors: tuple[int | None, ...] = K_FACTORS if has_refine else (None,)
    if nlist is None:  # no IVF: only the re-ranking depth to choose
        best = None
        for kf in k_factors:
            r = recall_of(None, kf)
            if r >= target:
                best = (None, kf)
                break
        if best is None:
            best = max(cache, key=lambda key: cache[key])
        return TuneResult(
            SearchParams(nprobe=None, k_factor=best[1]),
            cache[best],
            cache[best] >= target,
            queries.shape[0],
            k,
            trials,
        )

    probes = [1 << i for i in range(0, int(math.log2(min(nlist, MAX_NPROBE))) + 1)]
    list_len = n / nlist
    reached: list[tuple[float, int, int | None]] = []
    best_cost = math.inf
    lo = 0  # index into probes: the smallest nprobe worth trying for this k_factor
    # deepest re-ranking first: it needs the fewest lists, and the nprobe a shallower pool
    # needs can only be larger, so each k_factor's search starts where the previous ended
    for kf in sorted(k_factors, key=lambda v: -(v or 0)):
        i = lo
        while i < len(probes):
            cost = _cost(probes[i], kf or 0, k, list_len, code_bytes, refine_bytes)
            if probes[i] * list_len * code_bytes >= best_cost:
                break  # scanning alone already costs more than the best pair found
            if recall_of(probes[i], kf) >= target:
                reached.append((cost, probes[i], kf))
                best_cost = min(best_cost, cost)
                break
            i += 1
        else:
            i = len(probes)
        lo = min(i, len(probes) - 1)
        if i == len(probes) or probes[i] * list_len * code_bytes >= best_cost:
            break  # shallower pools would need even more lists
    if reached:
        _, nprobe, kf = min(reached)
        r = cache[(nprobe, kf)]
        return TuneResult(SearchParams(nprobe, kf), r, True, queries.shape[0], k, trials)
    best = max(cache, key=lambda key: cache[key])
    log.warning(
        "recall target %.3f not reached; best recall %.4f at nprobe=%s k_factor=%s",
        target,
        cache[best],
        *best,
    )
    return TuneResult(SearchParams(*best), cache[best], False, queries.shape[0], k, trials)
