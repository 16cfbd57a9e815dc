"""Tuning: the cheapest (nprobe, k_factor) that reaches a recall@k target against exact search.

Recall is tie-aware: a returned row counts as correct when its exact score is at least the
exact k-th best score (minus a float32 rounding tolerance), so an index returning a different
member of a group of tied vectors is not penalised.

Without tune queries, tuning uses ``fallback_tune_queries``: a seeded random sample of corpus
rows, each moved away from its source row towards another random row's direction (centred on
the corpus mean, so the move stays in the subspace the corpus occupies) and by isotropic
noise, then re-normalised. Real queries sit off the documents' distribution (the modality gap)
and their neighbours straddle clusters; a corpus row with small isotropic noise does neither
(its neighbours are its source's, found in its source's list), so it would flatter an IVF
index. The mixing makes the fallback at least as hard as the realistic queries of the
benchmark's generator (tests/test_index_budget.py checks it), and the manifest labels it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from univl_fast.index.params import SearchParams

log = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-5  # float32 rounding of a 512-d unit-vector inner product is ~1e-6
K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # 4-bit fast-scan needs deep pools
# beyond K_FACTORS[-1], the re-ranking pool keeps doubling while recall with every list
# probed rises by >= MIN_RISE per doubling, up to MAX_K_FACTOR
MAX_K_FACTOR = 2048
MIN_RISE = 0.002
MAX_NPROBE = 2048  # also faiss-gpu's limit, so a tuned value is valid on both


FALLBACK_SOURCE = "fallback: corpus rows mixed with other rows + noise (see index/tune.py)"


def fallback_tune_queries(
    vectors: np.ndarray,
    n: int,
    seed: int,
    source_weight: float = 0.55,
    mix_weight: float = 0.45,
    noise_weight: float = 0.45,
) -> np.ndarray:
    """(n, d) float32 unit queries (see module docstring): normalise(source_weight * row +
    mix_weight * unit(other row - corpus mean) + noise_weight * isotropic unit noise)."""
    rng = np.random.default_rng(seed + 1)
    total = vectors.shape[0]
    m = min(n, total)
    rows = np.sort(rng.choice(total, size=m, replace=False))
    others = np.sort(rng.choice(total, size=m, replace=total < m))
    base = np.asarray(vectors[rows], dtype=np.float32)
    other = np.asarray(vectors[others], dtype=np.float32)[rng.permutation(m)]
    mean = base.mean(axis=0, keepdims=True)
    u = other - mean
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    g = rng.standard_normal(base.shape).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = source_weight * base + mix_weight * u + noise_weight * g
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
    # recall with every list probed (or the deepest graph search) and the deepest re-ranking
    # pool: what the index can reach at any speed; below the target the tuning stops there
    ceiling: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "search_params": self.params.to_json(),
            "recall_at_k": self.recall,
            "k": self.k,
            "target_met": self.target_met,
            "queries": self.queries,
            "ceiling_recall_at_k": self.ceiling,
            "trials": self.trials,
        }


def probe_grid(limit: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to ``limit``: powers of two and the midpoints
    between them, so a tuned value overshoots the target by less than a doubling would."""
    out, v = [], 1
    while v <= limit:
        out.append(v)
        if v >= 2 and v + v // 2 <= limit:
            out.append(v + v // 2)
        v *= 2
    return sorted(set(out))


EF_SEARCH_GRID = tuple(probe_grid(2048)[probe_grid(2048).index(16) :])


def _cost(primary: int, k_factor: int, k: int, per_step: float, refine: int) -> float:
    """Bytes touched per query: scanned codes (``primary`` lists of ``per_step`` bytes, or
    HNSW nodes) + re-ranked vectors (the coarse step is fixed)."""
    return primary * per_step + k_factor * k * refine


LATENCY_QUERIES = 32
TUNE_BY = (
    "latency",
    "cost",
)  # how tune() picks among the (primary, k_factor) pairs reaching the target


def _search_k(search, k: int, params: SearchParams, q: np.ndarray):
    return search(q, k, params)


def interleaved_latency(
    calls: list[Callable[[np.ndarray], Any]],
    queries: np.ndarray,
    rounds: int = 3,
    per_round: int = LATENCY_QUERIES,
) -> list[float]:
    """Median single-query seconds of each call over ``rounds`` x ``per_round`` one-query
    calls, the calls taking turns round by round, so that a machine whose speed drifts (or a
    burst of other load) shifts every call's figures alike instead of favouring whichever was
    timed in a quiet moment. One warm-up query per call first."""
    n = min(per_round, queries.shape[0])
    times: list[list[float]] = [[] for _ in calls]
    if n == 0:
        return [0.0 for _ in calls]
    for call in calls:
        call(queries[:1])
    for _ in range(max(1, rounds)):
        for j, call in enumerate(calls):
            for i in range(n):
                t0 = time.perf_counter()
                call(queries[i : i + 1])
                times[j].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


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
    hnsw: bool = False,
    by: str = "latency",
) -> TuneResult:
    """Find the cheapest SearchParams reaching ``target`` recall@k (tie-aware, vs exact).

    search(queries, k, params) -> (scores, rows) runs the index. The primary knob is nprobe
    (IVF; an HNSW quantizer searches with ef = 2 * nprobe) or efSearch (HNSW over codes,
    ``hnsw`` without ``nlist``), walked over ``probe_grid`` / ``EF_SEARCH_GRID``. For each
    k_factor (shallowest first; just None without refine) find the smallest primary value
    reaching the target by bisection below the previous k_factor's answer (recall grows with
    both), among the values whose pair costs less than the best pair so far (``_cost``:
    estimated bytes touched per query); stop once re-ranking alone costs more. First of all, the ceiling: every list probed (the
    deepest graph search) with the deepest pool, the pool doubled beyond ``K_FACTORS`` while
    recall rises (``MAX_K_FACTOR``); an index below the target there is abandoned at once. Among the pairs that reach the target, the lowest
    measured single-query latency wins (``interleaved_latency``). If no pair reaches it, the best recall
    measured wins (``target_met`` False, a warning logged). ``by="cost"`` picks among the pairs
    reaching the target by ``_cost`` alone: deterministic (the same inputs give the same
    parameters on any machine and under any load), where ``"latency"`` depends on timings.
    """
    if by not in TUNE_BY:
        raise ValueError(f"tune by {by!r}: expected one of {', '.join(TUNE_BY)}")
    n = vectors.shape[0]
    exact_scores, _ = exact_search(vectors, queries, k)
    trials: list[dict[str, Any]] = []
    cache: dict[tuple[int | None, int | None], float] = {}
    knob = "nprobe" if nlist is not None else ("ef_search" if hnsw else None)

    def params_of(primary: int | None, kf: int | None) -> SearchParams:
        if knob == "ef_search":
            return SearchParams(k_factor=kf, ef_search=primary)
        return SearchParams(nprobe=primary, k_factor=kf)

    def recall_of(primary: int | None, kf: int | None) -> float:
        key = (primary, kf)
        if key not in cache:
            _, rows = search(queries, k, params_of(primary, kf))
            cache[key] = tie_aware_recall(vectors, queries, rows, exact_scores, k)
            trials.append(
                {knob or "primary": primary, "k_factor": kf, "recall": round(cache[key], 5)}
            )
            log.debug("tune %s=%s k_factor=%s recall=%.4f", knob, primary, kf, cache[key])
        return cache[key]

    ceiling: list[float] = []

    def result(key: tuple[int | None, int | None], met: bool) -> TuneResult:
        top = ceiling[0] if ceiling else None
        return TuneResult(params_of(*key), cache[key], met, queries.shape[0], k, trials, top)

    def deeper_pools(primary: int | None) -> tuple[int | None, ...]:
        """K_FACTORS, then doubled while recall at ``primary`` (the deepest search) keeps
        rising and the target is not reached: 4-bit codes of near-duplicates need pools
        deeper than any fixed list (the issue-21 corpus)."""
        if not has_refine:
            return (None,)
        kfs = list(K_FACTORS)
        r = recall_of(primary, kfs[-1])
        while r < target and kfs[-1] * 2 <= MAX_K_FACTOR and kfs[-1] * 2 * k <= n:
            r2 = recall_of(primary, kfs[-1] * 2)
            kfs.append(kfs[-1] * 2)
            if r2 < r + MIN_RISE:
                break
            r = r2
        return tuple(kfs)

    if knob is None:  # neither IVF nor HNSW: only the re-ranking depth to choose
        k_factors = deeper_pools(None)
        recall_of(None, k_factors[-1])
        ceiling.append(max(cache.values()))
        for kf in k_factors:
            if recall_of(None, kf) >= target:
                return result((None, kf), True)
        return result(max(cache, key=lambda key: cache[key]), False)

    if knob == "nprobe":
        steps = probe_grid(min(nlist, MAX_NPROBE))
        per_step = n / nlist * code_bytes
    else:
        steps = [v for v in EF_SEARCH_GRID if v <= max(16, n)]
        per_step = float(code_bytes)
    # the ceiling first: every list probed (the deepest graph search), the deepest pool; an
    # index that cannot reach the target there is abandoned at once instead of walked through
    k_factors = deeper_pools(steps[-1])
    recall_of(steps[-1], k_factors[-1])
    ceiling.append(max(v for (p, _), v in cache.items() if p == steps[-1]))
    if ceiling[0] < target:
        best = max(cache, key=lambda key: cache[key])
        log.warning(
            "recall target %.3f not reached: %.4f with every %s (%s=%s, k_factor=%s)",
            target,
            ceiling[0],
            "list probed" if knob == "nprobe" else "graph step",
            knob,
            *best,
        )
        return result(best, False)
    reached: list[tuple[float, int, int | None]] = []
    best_cost = math.inf
    hi = len(steps)  # steps[:hi] are worth trying for the next k_factor
    # shallowest re-ranking pool first: a deeper pool needs a primary value no larger, so
    # each k_factor searches below the last one's answer; recall grows with the primary value,
    # so the smallest one reaching the target is found by bisection once the largest value
    # worth trying (its pair costing less than the best pair so far) reaches it. Deeper pools
    # stop once re-ranking alone costs more than the best pair found
    for kf in sorted(k_factors, key=lambda v: v or 0):
        if _cost(0, kf or 0, k, per_step, refine_bytes) >= best_cost:
            break
        top = hi
        while top > 0 and _cost(steps[top - 1], kf or 0, k, per_step, refine_bytes) >= best_cost:
            top -= 1
        if top == 0 or recall_of(steps[top - 1], kf) < target:
            continue  # a deeper pool may reach it with fewer lists
        a, b = 0, top - 1  # steps[b] reaches the target
        while a < b:
            mid = (a + b) // 2
            if recall_of(steps[mid], kf) >= target:
                b = mid
            else:
                a = mid + 1
        cost = _cost(steps[b], kf or 0, k, per_step, refine_bytes)
        reached.append((cost, steps[b], kf))
        best_cost = min(best_cost, cost)
        hi = b + 1
    if reached:
        if by == "cost" or len(reached) == 1:
            _, primary, kf = min(reached)
        else:
            lat = interleaved_latency(
                [functools.partial(_search_k, search, k, params_of(*r[1:])) for r in reached],
                queries,
            )
            _, primary, kf = reached[int(np.argmin(lat))]
        return result((primary, kf), True)
    best = max(cache, key=lambda key: cache[key])
    log.warning(
        "recall target %.3f not reached; best recall %.4f at %s=%s k_factor=%s",
        target,
        cache[best],
        knob,
        *best,
    )
    return result(best, False)
