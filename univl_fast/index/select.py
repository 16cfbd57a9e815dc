"""Budget-driven index choice: measure the recall / speed / memory frontier of the candidates
(``univl_fast.index.candidates``) and pick the fastest one that meets the recall target within
the memory budget.

Selection strategy (so that a 1.17M x 512 build fits its time budget on 2 cores):

1. Every candidate is trained once on a sample of the WHOLE corpus (the same training set a
   full build uses; candidates with the same OPQ / coarse structure share one OPQ training and
   one k-means via ``CoarseCache``) and then filled with ``cfg.selection_sample`` corpus rows
   (all rows when the corpus is smaller). Its search knobs are tuned on that sample against
   exact search over the same rows (target + margin), then single-query and batch-64
   throughput are timed at the tuned point. Memory at full size is measured, not modelled:
   the serialized size of the trained, empty index (centroids, OPQ, PQ tables, graphs) plus
   the measured serialized bytes per added row times the corpus size.
2. The winner (fastest within the budget that met the target) is filled with every row from
   its trained copy (no second training) and re-tuned at full size; if it then misses the
   target at its largest knobs, or its measured memory exceeds the budget, the next candidate
   in the ranking is built instead (logged), so a miss is never silent.
3. Nothing within the budget reaches the target: ``RecallTargetUnreachable`` names the
   cheapest measured configuration that does (and its memory), unless
   ``cfg.allow_below_target`` keeps the best-recall one in budget (a warning is logged).

The frontier measured in step 1 (per candidate: params, recall, q/s, bytes) and the reason for
the choice are returned for the manifest.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from univl_fast.index import tune as tune_mod
from univl_fast.index.candidates import Candidate, candidates
from univl_fast.index.introspect import parts_of, searcher
from univl_fast.index.params import IndexConfig, RecallTargetUnreachable, SearchParams
from univl_fast.index.steps import add_in_chunks, new_index, set_training_costs

log = logging.getLogger(__name__)

SINGLE_QUERY_TIMINGS = 200
BATCH = 64

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40})


def parse_size(text: str | int | None) -> int | None:
    """'4GB' / '512MiB' / '1.5g' / '1000000' -> bytes (None stays None); raises ValueError
    naming the input when it is not a positive size."""
    if text is None or isinstance(text, int):
        if isinstance(text, int) and text <= 0:
            raise ValueError(f"memory size must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(
            f"invalid memory size {text!r}: expected a number with an optional unit "
            "(B, KB, MB, GB, TB or KiB, MiB, GiB, TiB), e.g. 4GB"
        )
    value = float(m.group(1)) * _UNITS[unit]
    if value < 1:
        raise ValueError(f"invalid memory size {text!r}: must be at least 1 byte")
    return int(value)


def serialized_bytes(index: faiss.Index) -> int:
    from univl_fast.index.introspect import _serialized_bytes

    return _serialized_bytes(index)


class CoarseCache:
    """Trained OPQ matrices and coarse centroids, shared by candidates built on the same
    training sample: ``OPQ64,IVF2048,PQ64x4fs`` and ``OPQ64,IVF2048,PQ64`` train one OPQ
    rotation and one k-means, and every plain ``IVF2048,...`` one k-means."""

    def __init__(self) -> None:
        self._opq: dict[str, np.ndarray] = {}
        self._centroids: dict[tuple[str, int], np.ndarray] = {}

    @staticmethod
    def _opq_key(factory: str) -> str:
        first = factory.split(",")[0]
        return first if first.startswith("OPQ") else ""

    def prefill(self, index: faiss.Index, factory: str) -> None:
        parts = parts_of(index)
        key = self._opq_key(factory)
        if key and key in self._opq:
            vt = faiss.downcast_VectorTransform(faiss.downcast_index(parts.base).chain.at(0))
            faiss.copy_array_to_vector(self._opq[key].ravel(), vt.A)
            vt.is_trained = True
        if parts.ivf is not None and (key, int(parts.ivf.nlist)) in self._centroids:
            parts.ivf.quantizer.add(self._centroids[(key, int(parts.ivf.nlist))])

    def remember(self, index: faiss.Index, factory: str) -> None:
        parts = parts_of(index)
        key = self._opq_key(factory)
        if key and key not in self._opq:
            vt = faiss.downcast_VectorTransform(faiss.downcast_index(parts.base).chain.at(0))
            self._opq[key] = faiss.vector_to_array(vt.A).copy()
        if parts.ivf is not None:
            q = parts.ivf.quantizer
            self._centroids.setdefault(
                (key, int(parts.ivf.nlist)), q.reconstruct_n(0, int(q.ntotal))
            )


@dataclass
class Measured:
    """One candidate on the frontier (selection sample)."""

    candidate: Candidate
    params: SearchParams | None = None
    recall: float = 0.0
    target_met: bool = False
    single_qps: float = 0.0
    batch_qps: float = 0.0
    bytes_full: int = 0
    fixed_bytes: int = 0
    bytes_per_vector: float = 0.0
    refine_bytes_per_vector: float = 0.0
    build_s: float = 0.0
    trained: bytes | None = field(default=None, repr=False)
    within_budget: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.candidate.to_json(),
            "search_params": self.params.to_json() if self.params else None,
            "recall_at_k": round(self.recall, 5),
            "target_met": self.target_met,
            "single_query_qps": round(self.single_qps, 1),
            "batch64_qps": round(self.batch_qps, 1),
            "bytes": int(self.bytes_full),
            "bytes_per_vector": round(self.bytes_per_vector, 2),
            "refine_bytes_per_vector": round(self.refine_bytes_per_vector, 2),
            "fixed_bytes": int(self.fixed_bytes),
            "within_budget": self.within_budget,
            "seconds": round(self.build_s, 2),
        }


def time_search(run, queries: np.ndarray, k: int, p: SearchParams) -> tuple[float, float]:
    """(single-query q/s, batch-64 q/s): 1 / the median latency of up to
    SINGLE_QUERY_TIMINGS one-query calls, and 64 / the fastest of up to 4 batch-64 calls
    (medians and minima, so a busy machine's spikes do not reorder the candidates)."""
    single = queries[:SINGLE_QUERY_TIMINGS]
    run(single[:1], k, p)  # warm-up
    lat = []
    for i in range(single.shape[0]):
        t0 = time.perf_counter()
        run(single[i : i + 1], k, p)
        lat.append(time.perf_counter() - t0)
    reps = max(1, min(4, queries.shape[0] // BATCH))
    batch = np.ascontiguousarray(np.resize(queries, (max(BATCH, reps * BATCH), queries.shape[1])))
    best = math.inf
    for r in range(reps):
        t0 = time.perf_counter()
        run(batch[r * BATCH : (r + 1) * BATCH], k, p)
        best = min(best, time.perf_counter() - t0)
    return 1.0 / max(float(np.median(lat)), 1e-9), BATCH / max(best, 1e-9)


def tune_index(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    target: float,
    by: str = "latency",
) -> tune_mod.TuneResult:
    """Tune the knobs of a filled index (rows = ``vectors``) to ``target`` recall@k."""
    parts = parts_of(index)
    run = searcher(index)
    if parts.ivf is None and parts.refine is None and parts.hnsw is None:
        _, rows = run(queries, k, SearchParams())
        exact, _ = tune_mod.exact_search(vectors, queries, k)
        r = tune_mod.tie_aware_recall(vectors, queries, rows, exact, k)
        return tune_mod.TuneResult(SearchParams(), r, r >= target, len(queries), k)
    n = max(1, int(index.ntotal))
    if parts.ivf is not None:
        code = int(parts.ivf.code_size) + 8
    else:
        code = serialized_bytes(parts.base) / n  # code + graph links per node
    refine = int(faiss.downcast_index(parts.refine).code_size) if parts.refine else 0
    return tune_mod.tune(
        run,
        vectors,
        queries,
        k,
        target,
        int(parts.ivf.nlist) if parts.ivf is not None else None,
        parts.refine is not None,
        code,
        refine,
        hnsw=parts.hnsw is not None,
        by=by,
    )


def train_candidate(
    factory: str,
    d: int,
    train_sample: np.ndarray,
    cfg: IndexConfig,
    cache: CoarseCache,
    n_full: int,
) -> faiss.Index:
    from univl_fast.index.factory import training_size

    index = new_index(factory, d)
    parts = parts_of(index)
    size = train_sample.shape[0]
    if parts.ivf is not None:
        parts.ivf.cp.seed = cfg.seed
        parts.ivf.cp.niter = int(cfg.kmeans_iterations)
        size = training_size(n_full, int(parts.ivf.nlist), cfg.train_points_per_centroid)
    set_training_costs(index, cfg)
    cache.prefill(index, factory)
    index.train(np.ascontiguousarray(train_sample[:size]))
    cache.remember(index, factory)
    return index


def measure(
    cand: Candidate,
    n_full: int,
    sample: np.ndarray,
    train_sample: np.ndarray,
    queries: np.ndarray,
    cfg: IndexConfig,
    cache: CoarseCache,
    target: float,
) -> tuple[Measured, faiss.Index]:
    """Train, fill with ``sample``, tune and time one candidate; memory scaled to n_full."""

    t0 = time.perf_counter()
    d = sample.shape[1]
    index = train_candidate(cand.factory, d, train_sample, cfg, cache, n_full)
    trained = faiss.serialize_index(index).tobytes()
    fixed = serialized_bytes(index)
    add_in_chunks(index, sample, cfg.add_chunk)
    per_vec = (serialized_bytes(index) - fixed) / sample.shape[0]
    tuned = tune_index(index, sample, queries, cfg.k, target, by=cfg.tune_by)
    single, batch = time_search(searcher(index), queries, cfg.k, tuned.params)
    parts = parts_of(index)
    m = Measured(
        cand,
        params=tuned.params,
        recall=tuned.recall,
        target_met=tuned.target_met,
        single_qps=single,
        batch_qps=batch,
        bytes_full=int(fixed + per_vec * n_full),
        fixed_bytes=fixed,
        bytes_per_vector=per_vec,
        refine_bytes_per_vector=(
            float(faiss.downcast_index(parts.refine).code_size) if parts.refine else 0.0
        ),
        build_s=time.perf_counter() - t0,
        trained=trained,
    )
    log.info(
        "candidate %-45s recall@%d %.4f %s q/s %8.1f  %.0f B/vector  (%s)",
        cand.factory,
        cfg.k,
        m.recall,
        "ok " if m.target_met else "low",
        m.single_qps,
        per_vec,
        tuned.params,
    )
    return m, index


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (recall, q/s) points no other point beats on both (ties kept)."""
    keep = []
    for i, (r, q) in enumerate(points):
        if not any(
            (r2 >= r and q2 >= q) and (r2 > r or q2 > q)
            for j, (r2, q2) in enumerate(points)
            if j != i
        ):
            keep.append(i)
    return keep


@dataclass
class Selection:
    ranked: list[Measured]  # in budget and meeting the target, fastest first
    frontier: list[Measured]
    skipped: list[Candidate]
    sample_rows: int
    reason: str
    indexes: dict[str, faiss.Index]  # candidate factory -> its filled sample index

    def frontier_json(self) -> list[dict[str, Any]]:
        rows = [m.to_json() for m in self.frontier]
        on = set(pareto([(m.recall, m.single_qps) for m in self.frontier]))
        for i, row in enumerate(rows):
            row["pareto"] = i in on
        return rows + [c.to_json() for c in self.skipped]


def select(
    vectors: np.ndarray,
    queries: np.ndarray,
    cfg: IndexConfig,
    train_pool: np.ndarray,
    pool: list[Candidate] | None = None,
) -> Selection:
    """Measure every candidate on the selection sample and rank them (module docstring)."""
    n, d = vectors.shape
    target = min(1.0, cfg.target_recall + cfg.margin)
    rng = np.random.default_rng(cfg.seed + 2)
    s = min(n, int(cfg.selection_sample))
    rows = None if s >= n else np.sort(rng.choice(n, size=s, replace=False))
    sample = np.ascontiguousarray(vectors[rows] if rows is not None else vectors[:])
    cache = CoarseCache()
    measured: list[Measured] = []
    skipped: list[Candidate] = []
    kept: dict[str, faiss.Index] = {}
    if pool is None and cfg.candidates:
        pool = [Candidate("given", f) for f in cfg.candidates]
    for cand in pool if pool is not None else candidates(n, d):
        if cand.skip_reason:
            skipped.append(cand)
            continue
        try:
            m, index = measure(cand, n, sample, train_pool, queries, cfg, cache, target)
        except (RuntimeError, ValueError) as exc:  # a factory faiss cannot build at this size
            skipped.append(Candidate(cand.family, cand.factory, f"failed: {exc}"))
            continue
        m.within_budget = cfg.max_memory is None or m.bytes_full <= cfg.max_memory
        measured.append(m)
        if rows is None:
            kept[cand.factory] = index
        else:
            del index
    ranked = sorted(
        (m for m in measured if m.within_budget and m.target_met), key=lambda m: -m.single_qps
    )
    budget = "no memory budget" if cfg.max_memory is None else f"<= {cfg.max_memory:,} bytes"
    sample_note = f"measured on {s:,} of {n:,} rows" if rows is not None else f"{n:,} rows"
    if ranked:
        best = ranked[0]
        reason = (
            f"fastest single-query ({best.single_qps:.0f} q/s, {sample_note}) of "
            f"{len(ranked)} candidates reaching recall@{cfg.k} >= {target:.4f} "
            f"(target {cfg.target_recall} + margin {cfg.margin}) within {budget}"
        )
        return Selection(ranked, measured, skipped, s, reason, kept)
    reaching = sorted((m for m in measured if m.target_met), key=lambda m: m.bytes_full)
    cheapest = reaching[0] if reaching else None
    if cheapest is not None:
        need = (
            f"the cheapest configuration reaching it is {cheapest.candidate.factory} "
            f"({cheapest.params}) at {cheapest.bytes_full:,} bytes "
            f"({_human(cheapest.bytes_full)}), recall {cheapest.recall:.4f}"
        )
    else:
        top = max(measured, key=lambda m: m.recall, default=None)
        need = "no candidate measured reaches it" + (
            f" (best: {top.candidate.factory} recall {top.recall:.4f})" if top else ""
        )
    message = (
        f"no index within {budget} reaches recall@{cfg.k} >= {target:.4f} ({sample_note}); {need}"
    )
    in_budget = [m for m in measured if m.within_budget]
    if not cfg.allow_below_target or not in_budget:
        raise RecallTargetUnreachable(
            message, cheapest.to_json() if cheapest else None, [m.to_json() for m in measured]
        )
    best = max(in_budget, key=lambda m: (m.recall, m.single_qps))
    log.warning("%s; allow_below_target: keeping %s", message, best.candidate.factory)
    reason = f"BELOW TARGET (allow_below_target): best recall in budget; {message}"
    return Selection([best], measured, skipped, s, reason, kept)


def _human(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1000
    return f"{b:.1f} TB"  # pragma: no cover
