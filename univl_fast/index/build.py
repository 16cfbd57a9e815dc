"""``build_index``: vectors + ids + modalities -> trained, filled, tuned ``Index``."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from univl_fast.index import binding
from univl_fast.index import factory as factory_mod
from univl_fast.index import tune as tune_mod
from univl_fast.index.base import MODALITY_NAMES, SearchableIndex, encode_modalities
from univl_fast.index.introspect import _serialized_bytes, memory_figures, parts_of, searcher
from univl_fast.index.params import IndexConfig, SearchParams
from univl_fast.index.search import Index
from univl_fast.index.sharded_build import Fill, ShardFill
from univl_fast.index.steps import Filled, add_in_chunks, new_index, set_training_costs

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
UNIT_NORM_TOLERANCE = 1e-3


def check_vectors(vectors: Any, chunk: int = 262_144) -> np.ndarray:
    """(n, d) float32 unit rows, finite; raises naming the first bad row. Keeps memmaps."""
    if not isinstance(vectors, np.ndarray):
        vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (n, d) array, got shape {vectors.shape}")
    if vectors.shape[1] < 1:
        raise ValueError("vectors have dimension 0")
    if vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    for start in range(0, vectors.shape[0], chunk):
        block = np.asarray(vectors[start : start + chunk])
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise ValueError(f"vectors[{start + int(np.flatnonzero(~finite)[0])}] has NaN or inf")
        norms = np.linalg.norm(block, axis=1)
        bad = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"vectors[{start + i}] has norm {norms[i]:.6f}: rows must be unit length "
                "(cosine = inner product)"
            )
    return vectors


def check_doc_ids(doc_ids: list[str], n: int) -> list[str]:
    if len(doc_ids) != n:
        raise ValueError(f"{len(doc_ids)} doc ids for {n} vectors")
    ids = [str(x) for x in doc_ids]
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if not x or "\n" in x or "\r" in x:
            raise ValueError(f"doc_ids[{i}] = {x!r}: ids must be non-empty and on one line")
        if x in seen:
            raise ValueError(f"doc_ids[{i}] = {x!r} is a duplicate")
        seen.add(x)
    return ids


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="vec", file=sys.stderr, disable=not enabled)


def train_index(
    index: faiss.Index, vectors: np.ndarray, cfg: IndexConfig, progress: bool = True
) -> float:
    """Train ``index`` (coarse quantizer, OPQ, PQ codebooks) on a sample of ``vectors`` drawn
    with ``cfg.seed``; returns the seconds it took (0 when nothing needs training)."""
    t0 = time.perf_counter()
    if index.is_trained:
        return 0.0
    n = vectors.shape[0]
    parts = parts_of(index)
    rng = np.random.default_rng(cfg.seed)
    nlist = int(parts.ivf.nlist) if parts.ivf is not None else 1
    if parts.ivf is not None:
        parts.ivf.cp.seed = cfg.seed
        parts.ivf.cp.niter = int(cfg.kmeans_iterations)
        if nlist * factory_mod.MIN_POINTS_PER_CENTROID > n:
            raise ValueError(
                f"factory {cfg.factory!r}: {nlist} lists need >= "
                f"{nlist * factory_mod.MIN_POINTS_PER_CENTROID} training vectors, corpus has {n}"
            )
    set_training_costs(index, cfg)
    n_train = factory_mod.training_size(n, nlist, cfg.train_points_per_centroid)
    rows = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else None
    sample = np.ascontiguousarray(vectors[rows] if rows is not None else vectors[:])
    log.log(
        logging.INFO if progress else logging.DEBUG,
        "training %s on %d vectors ...",
        cfg.factory,
        sample.shape[0],
    )
    index.train(sample)
    return time.perf_counter() - t0


def split_queries(
    vectors: np.ndarray, tune_queries: np.ndarray | None, cfg: IndexConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(tune split, held-out split) of the tune queries (``cfg.held_out_fraction`` held out,
    seeded); without queries, of ``tune.fallback_tune_queries`` (labelled in ``cfg``)."""
    d = vectors.shape[1]
    rng = np.random.default_rng(cfg.seed)
    if tune_queries is None:
        cfg.tune_queries_source = tune_mod.FALLBACK_SOURCE
        queries = tune_mod.fallback_tune_queries(vectors, cfg.max_tune_queries, cfg.seed)
    else:
        cfg.tune_queries_source = "given"
        queries = np.ascontiguousarray(tune_queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != d:
            raise ValueError(f"tune_queries must be (m, {d}), got shape {queries.shape}")
        if queries.shape[0] > cfg.max_tune_queries:
            pick = np.sort(rng.choice(queries.shape[0], cfg.max_tune_queries, replace=False))
            queries = queries[pick]
    n_held = int(round(queries.shape[0] * cfg.held_out_fraction))
    if n_held < 1 or n_held >= queries.shape[0]:
        return queries, queries[:0]
    order = rng.permutation(queries.shape[0])
    return (
        np.ascontiguousarray(queries[np.sort(order[n_held:])]),
        np.ascontiguousarray(queries[np.sort(order[:n_held])]),
    )


def tune_and_describe(
    run_search: Callable[[np.ndarray, int, SearchParams], tuple[np.ndarray, np.ndarray]],
    index: faiss.Index,
    vectors: np.ndarray,
    codes: np.ndarray,
    tune_queries: np.ndarray | None,
    cfg: IndexConfig,
    engine_sha256: str | None,
    seconds: dict[str, float],
    progress: bool = True,
    bound: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tune the search knobs of a filled index to ``cfg.target_recall`` and return its manifest.

    run_search(queries, k, params) -> (scores, rows) searches the whole index (one faiss index,
    or every shard of a sharded one); ``index`` is the one (or one representative shard) whose
    parts and per-vector memory describe it, ``vectors`` all of its rows in row order.
    """
    n, d = vectors.shape
    k, target_recall = cfg.k, cfg.target_recall
    aim = min(1.0, target_recall + cfg.margin)
    parts = parts_of(index)
    t0 = time.perf_counter()
    queries, held = split_queries(vectors, tune_queries, cfg)
    mem = memory_figures(index)
    if parts.ivf is None and parts.refine is None and parts.hnsw is None:
        # exact (Flat or a non-IVF code): recall is measured, nothing to tune
        params = SearchParams()
        _, rows_ = run_search(queries, k, params)
        exact_scores, _ = tune_mod.exact_search(vectors, queries, k)
        recall = tune_mod.tie_aware_recall(vectors, queries, rows_, exact_scores, k)
        tuning = tune_mod.TuneResult(params, recall, recall >= aim, len(queries), k)
    else:
        if progress:
            log.info("tuning on %d queries for recall@%d >= %.4f", len(queries), k, aim)
        refine_code = (mem["refine_bytes"] // max(1, int(index.ntotal))) if parts.refine else 0
        code = mem["code_bytes_per_vector"]
        if parts.ivf is None:  # HNSW: code + graph links per node
            code += mem.get("graph_bytes", 0) / max(1, int(index.ntotal))
        tuning = tune_mod.tune(
            run_search,
            vectors,
            queries,
            k,
            aim,
            int(parts.ivf.nlist) if parts.ivf is not None else None,
            parts.refine is not None,
            code,
            int(refine_code),
            hnsw=parts.hnsw is not None,
            by=cfg.tune_by,
        )
    held_recall = None
    if held.shape[0]:
        _, rows_h = run_search(held, k, tuning.params)
        ex_h, _ = tune_mod.exact_search(vectors, held, k)
        held_recall = tune_mod.tie_aware_recall(vectors, held, rows_h, ex_h, k)
        if held_recall < target_recall:
            log.warning(
                "held-out recall@%d %.4f < target %s (tune split %.4f, %d held-out queries)",
                k,
                held_recall,
                target_recall,
                tuning.recall,
                held.shape[0],
            )
    seconds = {**seconds, "tune": time.perf_counter() - t0}
    counts = {name: int((codes == c).sum()) for c, name in enumerate(MODALITY_NAMES)}
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "factory": cfg.factory,
        "metric": "inner_product",
        "dim": d,
        "ntotal": n,
        "modality_counts": counts,
        "nlist": int(parts.ivf.nlist) if parts.ivf is not None else None,
        "search_params": tuning.params.to_json(),
        "tuning": {
            "target_recall": target_recall,
            "margin": cfg.margin,
            "tuned_for": aim,
            **tuning.to_json(),
            "held_out_recall_at_k": held_recall,
            "held_out_queries": int(held.shape[0]),
            "queries_source": cfg.tune_queries_source,
        },
        "memory": mem,
        "build_seconds": {name: round(v, 3) for name, v in seconds.items()},
        "faiss_version": faiss.__version__,
        "engine_sha256": engine_sha256,
        "embedding_space": None,
        "encoding": None,
        "config": cfg.to_json(),
    }
    if bound:
        manifest.update(bound)
    if progress:
        log.info(
            "index %s: %d vectors, params %s, recall@%d %.4f on the tune split, held-out "
            "%s (target %s + margin %s)",
            cfg.factory,
            n,
            tuning.params,
            k,
            tuning.recall,
            "n/a" if held_recall is None else f"{held_recall:.4f}",
            target_recall,
            cfg.margin,
        )
    return manifest


def prepare_build(
    vectors: np.ndarray,
    doc_ids: list[str],
    modalities: list[str] | np.ndarray,
    factory: str | None,
    target_recall: float,
    k: int,
    seed: int,
    config: IndexConfig | None,
    encoder: Any = None,
) -> tuple[np.ndarray, list[str], np.ndarray, IndexConfig, dict[str, Any]]:
    """Checked (vectors, ids, modality codes), the build config (factory chosen by size) and
    what binds the index to ``encoder`` (``binding.encoder_fields``; {} without one)."""
    vectors = check_vectors(vectors)
    n, d = vectors.shape
    if n == 0:
        raise ValueError("cannot build an index over 0 vectors")
    ids = check_doc_ids(doc_ids, n)
    bound = binding.encoder_fields(encoder) if encoder is not None else {}
    space = bound.get("embedding_space")
    if space and int(space["dim"]) != d:
        raise ValueError(f"vectors are {d}-d, the encoder's embedding space {space['dim']}-d")
    codes = encode_modalities(modalities)
    if codes.shape[0] != n:
        raise ValueError(f"{codes.shape[0]} modalities for {n} vectors")
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    factory = factory or factory_mod.default_factory(n, d)
    cfg = config or IndexConfig(factory=factory, dim=d)
    cfg.factory, cfg.dim, cfg.target_recall, cfg.k, cfg.seed = factory, d, target_recall, k, seed
    return vectors, ids, codes, cfg, bound


class SingleFill:
    """Fills a trained index in place: the unsharded build."""

    in_memory = True

    def __init__(self, vectors: np.ndarray, chunk: int, progress: bool, device: str):
        self.vectors, self.chunk, self.progress, self.device = vectors, chunk, progress, device

    def fill(self, trained: faiss.Index, factory: str) -> Filled:
        with _progress(self.vectors.shape[0], f"adding ({factory})", self.progress) as bar:
            add_s = add_in_chunks(trained, self.vectors, self.chunk, bar=bar)
        return Filled(trained, searcher(trained), add_s)

    def size(self, filled: Filled) -> int:
        return _serialized_bytes(filled.index)

    def discard(self, filled: Filled) -> None:
        pass

    def finish(
        self, filled: Filled, ids: list[str], codes: np.ndarray, manifest: dict[str, Any]
    ) -> Index:
        return Index(filled.index, ids, codes, manifest, device=self.device)


def build_index(
    vectors: np.ndarray,
    doc_ids: list[str],
    modalities: list[str] | np.ndarray,
    factory: str | None = None,
    target_recall: float = 0.95,
    tune_queries: np.ndarray | None = None,
    k: int = 10,
    engine_sha256: str | None = None,
    seed: int = 0,
    progress: bool = True,
    config: IndexConfig | None = None,
    device: str = "auto",
    encoder: Any = None,
    max_memory: int | str | None = None,
    allow_below_target: bool | None = None,
    margin: float | None = None,
    shards: int = 1,
    out_dir: str | os.PathLike | None = None,
    fill: Fill | None = None,
) -> SearchableIndex:
    """Build, fill and tune an inner-product index.

    vectors: (n, d) float32 unit rows (a memory-mapped array works and is read in chunks).
    doc_ids: n unique strings; modalities: n of "text" | "image" (or (n,) uint8 codes).
    factory: faiss index_factory string: built as given. None: exact ``Flat`` below
    ``IndexConfig.flat_max_vectors`` (``factory.FLAT_MAX_VECTORS``) rows when it fits
    ``max_memory``; otherwise the fastest candidate (``univl_fast.index.candidates``) reaching
    ``target_recall`` + ``margin`` on the tune split within ``max_memory`` bytes (int, or a
    size such as "4GB"; None: no limit) and the build budget, measured as
    ``univl_fast.index.select`` describes. Above ``flat_max_vectors`` exact ``Flat`` is only
    the frontier's reference point, never built by surprise: ``RecallTargetUnreachable`` when
    no approximate candidate reaches the target (naming the cheapest that would, the corpus's
    difficulty and the exact option), unless ``allow_below_target`` (best approximate, logged
    as a warning).
    tune_queries: (m, d) float32 queries; a share (``IndexConfig.held_out_fraction``) is held
    out of tuning and its recall reported; None -> ``tune.fallback_tune_queries``.
    encoder: the ``univl_fast.runtime.Encoder`` that encoded ``vectors``: the manifest then
    records its embedding space, encoding (precision, backend, text runtime) and engine
    manifest sha256 (``univl_fast.index.binding``); ``engine_sha256`` alone binds the index
    to one engine manifest's bytes (the older binding).
    Returns an ``Index`` whose manifest records factory, tuned params, measured recall@k vs
    exact (tune and held-out splits), memory, build times, the measured frontier
    (``"selection"``, when chosen by budget) and what binds it to its engine.
    shards: N > 1 builds the same index as N shards of one trained index (the same choice of
    index, trained once, each shard filled with contiguous rows, tuned once on the whole) and
    writes it as a sharded index dir to ``out_dir`` (required then); ``fill`` fills the
    shards (``sharded_build.fill_local``, threads, by default; ``scale.ray_build`` on Ray).
    Returns a ``ShardedIndex`` then.
    """
    from univl_fast.index.select import parse_size

    t_start = time.perf_counter()
    auto = factory is None
    vectors, ids, codes, cfg, bound = prepare_build(
        vectors, doc_ids, modalities, factory or "Flat", target_recall, k, seed, config, encoder
    )
    if max_memory is not None:
        cfg.max_memory = parse_size(max_memory)
    if allow_below_target is not None:
        cfg.allow_below_target = bool(allow_below_target)
    if margin is not None:
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        cfg.margin = float(margin)
    n, d = vectors.shape
    if bound:
        engine_sha256 = bound["engine_sha256"]
    filler = _filler(
        vectors, ids, codes, cfg, bound, engine_sha256, progress, device, shards, out_dir, fill
    )
    flat_fits = cfg.max_memory is None or n * d * 4 <= cfg.max_memory
    if auto and not (n < cfg.flat_max_vectors and flat_fits):
        return _build_selected(
            vectors, ids, codes, cfg, tune_queries, engine_sha256, bound, progress, filler, t_start
        )
    index = new_index(cfg.factory, cfg.dim)
    train_s = train_index(index, vectors, cfg, progress)
    filled = filler.fill(index, cfg.factory)
    manifest = tune_and_describe(
        filled.search,
        filled.index,
        vectors,
        codes,
        tune_queries,
        cfg,
        engine_sha256,
        {"train": train_s, "add": filled.add_seconds},
        progress,
        bound,
    )
    manifest["build_seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    return filler.finish(filled, ids, codes, manifest)


def _filler(
    vectors: np.ndarray,
    ids: list[str],
    codes: np.ndarray,
    cfg: IndexConfig,
    bound: dict[str, Any],
    engine_sha256: str | None,
    progress: bool,
    device: str,
    shards: int,
    out_dir: str | os.PathLike | None,
    fill: Fill | None,
) -> SingleFill | ShardFill:
    """How a trained index gets its rows: in place, or as ``shards`` shards under ``out_dir``."""
    if int(shards) < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if shards == 1:
        return SingleFill(vectors, cfg.add_chunk, progress, device)
    if out_dir is None:
        raise ValueError(
            "build_index(shards=N): a sharded index is written as it is built: give out_dir"
        )
    fields = {
        "format": MANIFEST_FORMAT,
        "engine_sha256": engine_sha256,
        "embedding_space": bound.get("embedding_space"),
        "encoding": bound.get("encoding"),
    }
    return ShardFill(out_dir, int(shards), vectors, ids, codes, cfg.add_chunk, fields, fill)


def build_sharded_index(
    vectors: np.ndarray,
    doc_ids: list[str],
    modalities: list[str] | np.ndarray,
    out_dir: str | os.PathLike,
    shards: int,
    **build_args: Any,
) -> SearchableIndex:
    """``build_index(vectors, doc_ids, modalities, shards=shards, out_dir=out_dir, ...)``."""
    return build_index(
        vectors, doc_ids, modalities, shards=shards, out_dir=out_dir, device="cpu", **build_args
    )


def training_pool(vectors: np.ndarray, cfg: IndexConfig) -> np.ndarray:
    """Seeded random rows for training, in random order: a candidate with nlist lists trains
    on the first ``training_size(n, nlist)`` of them, so candidates sharing a coarse
    structure train on the same points (``select.CoarseCache``)."""
    from univl_fast.index.candidates import coarse_nlist

    n = vectors.shape[0]
    size = factory_mod.training_size(n, 2 * coarse_nlist(n), cfg.train_points_per_centroid)
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    pool = np.asarray(vectors[rows], dtype=np.float32)
    return np.ascontiguousarray(pool[rng.permutation(pool.shape[0])])


def _finalists(sel: Any, cfg: IndexConfig) -> list[Any]:
    """The ranked candidates within ``cfg.finalist_band`` of the fastest's sample speed (at
    most ``cfg.finalists``): each is filled and tuned at full size and the fastest there wins.
    None when the sample was the whole corpus (its timings were already at full size)."""
    if not sel.ranked or sel.indexes or cfg.finalists < 2:
        return []
    floor = (1.0 - cfg.finalist_band) * sel.ranked[0].single_qps
    return [m for m in sel.ranked[: cfg.finalists] if m.single_qps >= floor]


def _faster_at_full_size(
    a: tuple[Filled, dict[str, Any], int, float],
    b: tuple[Filled, dict[str, Any], int, float],
    queries: np.ndarray,
    cfg: IndexConfig,
) -> tuple[tuple[Filled, dict[str, Any], int, float], dict[str, Any]]:
    """The finalist with the lower median single-query latency at its tuned parameters
    (interleaved rounds on the held-out tune queries), and a note of both timings."""
    lat = tune_mod.interleaved_latency(
        [
            functools.partial(x[0].search, k=cfg.k, p=SearchParams.from_json(x[1]["search_params"]))
            for x in (a, b)
        ],
        queries,
        rounds=5,
        per_round=40,
    )
    win, lose = (a, b) if lat[0] <= lat[1] else (b, a)
    ms = dict(
        zip((a[1]["factory"], b[1]["factory"]), (round(v * 1e3, 4) for v in lat), strict=True)
    )
    note = {"faster": win[1]["factory"], "slower": lose[1]["factory"], "single_query_ms": ms}
    log.info("finalists at full size: %s", note)
    return win, note


def _why(sel: Any, finals: list[dict[str, Any]], cfg: IndexConfig) -> str:
    """The selection's reason, plus what the finalists at full size changed."""
    if not finals:
        return sel.reason
    first = sel.ranked[0].candidate.factory
    kept = finals[-1]["faster"]
    timed = "; ".join(
        ", ".join(f"{k} {v:.3f} ms" for k, v in f["single_query_ms"].items()) for f in finals
    )
    return (
        f"on the sample: {first} was the {sel.reason}; {len(finals) + 1} finalists within "
        f"{cfg.finalist_band:.0%} of it were filled and tuned at full size and timed there "
        f"({timed}): {kept} kept"
    )


def _build_selected(
    vectors: np.ndarray,
    ids: list[str],
    codes: np.ndarray,
    cfg: IndexConfig,
    tune_queries: np.ndarray | None,
    engine_sha256: str | None,
    bound: dict[str, Any],
    progress: bool,
    filler: SingleFill | ShardFill,
    t_start: float,
) -> SearchableIndex:
    """Measure the candidates, then fill and tune the winner at full size (select.py)."""
    from univl_fast.index import select as select_mod
    from univl_fast.index.params import RecallTargetUnreachable

    queries, _held = split_queries(vectors, tune_queries, cfg)
    pool = training_pool(vectors, cfg)
    t0 = time.perf_counter()
    sel = select_mod.select(vectors, queries, cfg, pool)
    select_s = time.perf_counter() - t0
    tried: list[str] = []
    finalists = _finalists(sel, cfg)
    held_q = _held if _held.size else queries
    best: tuple[Filled, dict[str, Any], int, float] | None = None  # filled, manifest, ...
    finals: list[dict[str, Any]] = []
    remaining = [f.candidate.factory for f in finalists]
    for m in sel.ranked:
        factory = m.candidate.factory
        if best is not None and factory not in remaining:
            break  # a candidate held at full size; the rest were slower on the sample
        if factory in remaining:
            remaining.remove(factory)
        cfg.factory = factory
        t1 = time.perf_counter()
        if factory in sel.indexes and filler.in_memory:  # the sample was the whole corpus
            index = sel.indexes[factory]
            filled = Filled(index, searcher(index), 0.0)
        else:
            filled = filler.fill(
                faiss.deserialize_index(np.frombuffer(m.trained, np.uint8)), factory
            )
        size = filler.size(filled)
        if cfg.max_memory is not None and size > cfg.max_memory:
            tried.append(f"{factory}: {size:,} bytes at full size > budget")
            log.warning("%s measures %d bytes at full size, over the budget: next", factory, size)
            filler.discard(filled)
            continue
        manifest = tune_and_describe(
            filled.search,
            filled.index,
            vectors,
            codes,
            tune_queries,
            cfg,
            engine_sha256,
            {"select": select_s, "add": filled.add_seconds},
            progress,
            bound,
        )
        met = manifest["tuning"]["target_met"]
        if not met and not cfg.allow_below_target:
            tried.append(f"{factory}: recall {manifest['tuning']['recall_at_k']:.4f} at full size")
            log.warning("%s misses the target at full size: trying the next candidate", factory)
            filler.discard(filled)
            continue
        if best is None:
            best = (filled, manifest, size, t1)
        else:
            pair = (best, (filled, manifest, size, t1))
            best, note = _faster_at_full_size(*pair, held_q, cfg)
            filler.discard(pair[1][0] if best is pair[0] else pair[0][0])
            finals.append(note)
            tried.append(f"{note['slower']}: slower at full size than {note['faster']}")
    if best is None:
        raise RecallTargetUnreachable(
            f"no candidate reaching recall@{cfg.k} >= {cfg.target_recall + cfg.margin:.4f} on the "
            f"selection sample held it at full size within the budget: {'; '.join(tried)}",
            None,
            sel.frontier_json(),
            select_mod.difficulty(sel.frontier),
        )
    filled, manifest, size, t1 = best
    cfg.factory = manifest["factory"]
    p = SearchParams.from_json(manifest["search_params"])
    single, batch = select_mod.time_search(filled.search, held_q, cfg.k, p)
    chosen = {
        "factory": cfg.factory,
        "search_params": manifest["search_params"],
        "recall_at_k": manifest["tuning"]["recall_at_k"],
        "held_out_recall_at_k": manifest["tuning"]["held_out_recall_at_k"],
        "single_query_qps": round(single, 1),
        "batch64_qps": round(batch, 1),
        "bytes": size,
        "seconds": round(time.perf_counter() - t1, 2),
    }
    manifest["selection"] = {
        "target_recall": cfg.target_recall,
        "margin": cfg.margin,
        "max_memory": cfg.max_memory,
        "sample_rows": sel.sample_rows,
        "frontier": sel.frontier_json(),
        "difficulty": select_mod.difficulty(sel.frontier),
        "chosen": chosen,
        "why": _why(sel, finals, cfg),
        "passed_over_at_full_size": tried,
        "finalists_at_full_size": finals,
    }
    manifest["build_seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    log.log(
        logging.INFO if progress else logging.DEBUG,
        "chosen point on the frontier: %s %s recall@%d %.4f (held-out %s), %.0f q/s single, "
        "%.0f q/s batch-64, %d bytes; %s",
        cfg.factory,
        p,
        cfg.k,
        chosen["recall_at_k"],
        chosen["held_out_recall_at_k"],
        single,
        batch,
        size,
        manifest["selection"]["why"],
    )
    return filler.finish(filled, ids, codes, manifest)
