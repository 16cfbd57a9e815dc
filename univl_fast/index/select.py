"""Budget-driven index choice: measure the recall / speed / memory frontier of the candidates
(``univl_fast.index.candidates``) and pick the fastest one that meets the recall target within
the memory budget.

Selection strategy (so that a 1.17M x 512 build fits its time budget on 2 cores):

1. Every candidate is trained once on a sample of the WHOLE corpus (the same training set a
   full build uses; candidates with the same OPQ / coarse structure share one OPQ training and
   one k-means via ``CoarseCache``) and then filled with ``cfg.selection_sample`` corpus rows
   (all rows when the corpus is smaller): the first ``PROBE_ROWS`` first, timed, and the
   candidate abandoned when its training plus filling the whole corpus at that pace would
   exceed ``cfg.build_budget_s`` (no family is dropped by a row count). Its search knobs are
   tuned on that sample against exact search over the same rows (target + margin): first
   with every list probed and the deepest re-ranking pool (``tune.tune``'s ceiling, which
   also grows the pool while recall rises); a candidate that misses the target there is
   abandoned at once. Then single-query and batch-64 throughput are timed at the tuned point.
   At most ``cfg.selection_queries`` of the tune queries are used here (tuning is most of a
   candidate's time); the winner is re-tuned at full size on all of them. Memory at full size is measured, not modelled:
   the serialized size of the trained, empty index (centroids, OPQ, PQ tables, graphs) plus
   the measured serialized bytes per added row times the corpus size.
2. The winner (fastest within the budget that met the target) is filled with every row from
   its trained copy (no second training) and re-tuned at full size; if it then misses the
   target at its largest knobs, or its measured memory exceeds the budget, the next candidate
   in the ranking is built instead (logged), so a miss is never silent.
3. Nothing within the budget reaches the target: ``RecallTargetUnreachable`` names the
   cheapest measured configuration that does (and its memory and estimated build time), the
   corpus's difficulty (``difficulty``: per family, the recall with every list probed) and,
   when only the exact index reaches it, that index (``factory="Flat"`` builds it), unless
   ``cfg.allow_below_target`` keeps the best-recall approximate one in budget (a warning is
   logged).

Exact ``Flat`` is measured last, as the frontier's reference point; at or above
``cfg.flat_max_vectors`` rows it is never chosen unless the caller lists it (``candidates``)
or asks for it (``factory="Flat"``): an exact index is never built by surprise.

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
    ceiling: float | None = None  # recall with every list probed, deepest pool (tune.py)
    est_build_s: float = 0.0  # training + filling at full size, extrapolated
    abandoned: str | None = None  # why it was not tuned (over the build budget)
    eligible: bool = True  # False: exact Flat above flat_max_vectors (reference point only)

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
            "ceiling_recall_at_k": None if self.ceiling is None else round(self.ceiling, 5),
            "estimated_build_s": round(self.est_build_s, 3),
            **({"abandoned": self.abandoned} if self.abandoned else {}),
            **({} if self.eligible else {"reference_only": True}),
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


PROBE_ROWS = 8192  # rows added first, to time a candidate's filling before committing to it


def estimated_build_s(train_s: float, add_s: float, rows: int, n_full: int, graph: bool) -> float:
    """Training + filling ``n_full`` rows, from ``add_s`` seconds for the first ``rows``:
    linear in rows, times log(n_full) / log(rows) for a graph (an insertion searches the
    graph, whose depth grows with log n)."""
    per_row = add_s / max(1, rows)
    grow = math.log(max(n_full, 2)) / math.log(max(rows, 2)) if graph else 1.0
    return train_s + per_row * n_full * max(1.0, grow)


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
    """Train, fill with ``sample``, tune and time one candidate; memory scaled to n_full.

    After training, the first ``PROBE_ROWS`` rows are added and timed: when training plus
    filling ``n_full`` rows at that pace exceeds ``cfg.build_budget_s``, the candidate is
    abandoned there (returned with ``abandoned`` set, not tuned)."""

    t0 = time.perf_counter()
    d = sample.shape[1]
    index = train_candidate(cand.factory, d, train_sample, cfg, cache, n_full)
    train_s = time.perf_counter() - t0
    trained = faiss.serialize_index(index).tobytes()
    fixed = serialized_bytes(index)
    probe = min(PROBE_ROWS, sample.shape[0])
    add_s = add_in_chunks(index, sample[:probe], cfg.add_chunk)
    parts = parts_of(index)
    est = estimated_build_s(
        train_s, add_s, probe, n_full, parts.hnsw is not None and parts.ivf is None
    )
    per_vec = (serialized_bytes(index) - fixed) / max(1, probe)
    m = Measured(
        cand,
        bytes_full=int(fixed + per_vec * n_full),
        fixed_bytes=fixed,
        bytes_per_vector=per_vec,
        refine_bytes_per_vector=(
            float(faiss.downcast_index(parts.refine).code_size) if parts.refine else 0.0
        ),
        trained=trained,
        est_build_s=est,
    )
    if cfg.build_budget_s is not None and est > cfg.build_budget_s:
        m.abandoned = (
            f"estimated build {est:.3g} s at {n_full:,} rows (training {train_s:.3g} s + "
            f"{add_s / probe * 1e6:.1f} us per row added) > build budget {cfg.build_budget_s:.3g} s"
        )
        m.build_s = time.perf_counter() - t0
        log.info("candidate %-45s abandoned: %s", cand.factory, m.abandoned)
        return m, index
    add_in_chunks(index, sample[probe:], cfg.add_chunk)
    m.bytes_per_vector = per_vec = (serialized_bytes(index) - fixed) / sample.shape[0]
    m.bytes_full = int(fixed + per_vec * n_full)
    tuned = tune_index(index, sample, queries, cfg.k, target, by=cfg.tune_by)
    m.params, m.recall, m.target_met, m.ceiling = (
        tuned.params,
        tuned.recall,
        tuned.target_met,
        tuned.ceiling,
    )
    m.single_qps, m.batch_qps = time_search(searcher(index), queries, cfg.k, tuned.params)
    m.build_s = time.perf_counter() - t0
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


def difficulty(measured: list[Measured]) -> dict[str, float]:
    """Per family, the best recall measured with every list probed and the deepest pool (the
    ceiling): how hard the corpus is for that kind of code. Exact Flat is left out."""
    out: dict[str, float] = {}
    for m in measured:
        if m.ceiling is not None and not m.candidate.exact:
            out[m.candidate.family] = round(max(out.get(m.candidate.family, 0.0), m.ceiling), 4)
    return out


def _describe(m: Measured) -> str:
    return (
        f"{m.candidate.factory} ({m.candidate.family}, {m.params}) at {m.bytes_full:,} bytes "
        f"({_human(m.bytes_full)}), recall {m.recall:.4f}, {m.single_qps:.0f} q/s single-query "
        f"on the sample, estimated build {m.est_build_s:.0f} s"
    )


def _unreachable_message(
    measured: list[Measured], budget: str, target: float, cfg: IndexConfig, sample_note: str
) -> tuple[str, Measured | None]:
    """The error of a selection where nothing eligible in budget reaches the target: what
    would reach it (the cheapest approximate configuration out of budget, else the exact
    index when it was not allowed), and the corpus's difficulty."""
    reaching = sorted(
        (m for m in measured if m.target_met and m.eligible), key=lambda m: m.bytes_full
    )
    cheapest = reaching[0] if reaching else None
    if cheapest is not None:
        need = f"the cheapest configuration reaching it is {_describe(cheapest)}"
    else:
        top = max((m for m in measured if m.eligible), key=lambda m: m.recall, default=None)
        need = "no approximate candidate measured reaches it" + (
            f" (best: {top.candidate.factory} recall {top.recall:.4f})" if top else ""
        )
        exact = next((m for m in measured if m.candidate.exact and m.target_met), None)
        if exact is not None:
            need += (
                f"; exact Flat does, at {exact.bytes_full:,} bytes ({_human(exact.bytes_full)}) "
                f"and {exact.single_qps:.0f} q/s single-query on the sample: build it with "
                "factory='Flat' (--factory Flat)"
            )
    hard = difficulty(measured)
    if hard:
        need += "; recall with every list probed, per family: " + ", ".join(
            f"{fam} {r:.3f}" for fam, r in hard.items()
        )
    over = [m for m in measured if m.abandoned]
    if over:
        need += "; over the build budget: " + ", ".join(
            f"{m.candidate.factory} (~{m.est_build_s:.0f} s)" for m in over
        )
    message = (
        f"no index within {budget} reaches recall@{cfg.k} >= {target:.4f} ({sample_note}); {need}"
    )
    return message, cheapest


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
    if queries.shape[0] > cfg.selection_queries:
        pick = np.sort(rng.choice(queries.shape[0], size=cfg.selection_queries, replace=False))
        queries = np.ascontiguousarray(queries[pick])
    cache = CoarseCache()
    measured: list[Measured] = []
    skipped: list[Candidate] = []
    kept: dict[str, faiss.Index] = {}
    asked = bool(cfg.candidates)  # the caller listed the factories (Flat among them: asked)
    if pool is None and cfg.candidates:
        pool = [Candidate("given", f) for f in cfg.candidates]
    # the exact index is a candidate below flat_max_vectors or when listed by the caller;
    # above, the reference point only. Slow families last, the exact reference at the end
    flat_ok = asked or n < cfg.flat_max_vectors
    order = sorted(pool if pool is not None else candidates(n, d), key=lambda c: (c.exact, c.slow))
    t_start = time.perf_counter()
    for cand in order:
        if cand.skip_reason:
            skipped.append(cand)
            continue
        spent = time.perf_counter() - t_start
        if cand.slow and cfg.build_budget_s is not None and spent > cfg.build_budget_s / 2:
            reason = (
                f"not measured: the selection had used {spent:.0f} s of the "
                f"{cfg.build_budget_s:.0f} s build budget"
            )
            skipped.append(Candidate(cand.family, cand.factory, reason))
            continue
        try:
            m, index = measure(cand, n, sample, train_pool, queries, cfg, cache, target)
        except (RuntimeError, ValueError) as exc:  # a factory faiss cannot build at this size
            skipped.append(Candidate(cand.family, cand.factory, f"failed: {exc}"))
            continue
        m.within_budget = cfg.max_memory is None or m.bytes_full <= cfg.max_memory
        m.eligible = flat_ok or not cand.exact
        measured.append(m)
        if rows is None and not m.abandoned:
            kept[cand.factory] = index
        else:
            del index
    ranked = sorted(
        (m for m in measured if m.within_budget and m.target_met and m.eligible),
        key=lambda m: -m.single_qps,
    )
    budget = "no memory budget" if cfg.max_memory is None else f"<= {cfg.max_memory:,} bytes"
    if cfg.build_budget_s is not None:
        budget += f", build <= {cfg.build_budget_s:.0f} s"
    sample_note = f"measured on {s:,} of {n:,} rows" if rows is not None else f"{n:,} rows"
    if ranked:
        best = ranked[0]
        reason = (
            f"fastest single-query ({best.single_qps:.0f} q/s, {sample_note}) of "
            f"{len(ranked)} candidates reaching recall@{cfg.k} >= {target:.4f} "
            f"(target {cfg.target_recall} + margin {cfg.margin}) within {budget}"
        )
        return Selection(ranked, measured, skipped, s, reason, kept)
    message, cheapest = _unreachable_message(measured, budget, target, cfg, sample_note)
    in_budget = [m for m in measured if m.within_budget and m.eligible and not m.abandoned]
    if not cfg.allow_below_target or not in_budget:
        raise RecallTargetUnreachable(
            message,
            cheapest.to_json() if cheapest else None,
            [m.to_json() for m in measured],
            difficulty(measured),
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
