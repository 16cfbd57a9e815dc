"""Distributed index build: train once, fill copies of the trained empty index in parallel,
then keep them as shards (``sharded``) or merge them into one ordinary index dir.

The fill step is pluggable: ``fill_local`` (threads in this process) or
``ray_build.fill_ray`` (Ray tasks, one per shard). Tuning runs once, on the sharded result.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from univl_fast.index.build import (
    MANIFEST_FORMAT,
    add_in_chunks,
    new_index,
    prepare_build,
    train_index,
    tune_and_describe,
)
from univl_fast.index.introspect import memory_figures, parts_of
from univl_fast.index.params import IndexConfig, SearchParams
from univl_fast.index.search import Index
from univl_fast.index.store import MANIFEST_FILE, load_index, save_index
from univl_fast.scale.sharded import (
    LAYOUT,
    TRAINED_FILE,
    ShardedIndex,
    file_record,
    load_sharded_index,
    shard_dir_name,
)
from univl_fast.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

# fill(trained bytes, [(dir, row_start, row_stop)], vectors, ids, codes, shard manifest, chunk)
Fill = Callable[..., list[dict[str, Any]]]


def row_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous row ranges covering [0, n), sizes differing by at most one."""
    if shards < 1 or shards > n:
        raise ValueError(f"cannot cut {n} vectors into {shards} shards")
    edges = [n * i // shards for i in range(shards + 1)]
    return [(edges[i], edges[i + 1]) for i in range(shards)]


def fill_shard(
    trained: bytes,
    out_dir: str,
    vectors: np.ndarray,
    doc_ids: list[str],
    codes: np.ndarray,
    manifest: dict[str, Any],
    chunk: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """Add ``vectors`` to a copy of the trained empty index and save it as an index dir
    (runs on a worker). Returns {"files": {name: {bytes, sha256}}, "add_seconds": s}."""
    if threads:
        faiss.omp_set_num_threads(int(threads))
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    add_s = add_in_chunks(index, vectors, chunk)
    shard_manifest = {**manifest, "ntotal": int(index.ntotal)}
    shard = Index(index, list(doc_ids), np.asarray(codes, np.uint8), shard_manifest, device="cpu")
    save_index(shard, out_dir)
    return {"files": shard.manifest["files"], "add_seconds": round(add_s, 3)}


def fill_local(trained, ranges, vectors, ids, codes, manifest, chunk) -> list[dict[str, Any]]:
    """Fill every shard in this process, one thread per shard (faiss releases the GIL)."""
    threads = max(1, (os.cpu_count() or 1) // len(ranges))
    with ThreadPoolExecutor(len(ranges)) as pool:
        futures = [
            pool.submit(
                fill_shard, trained, d, vectors[a:b], ids[a:b], codes[a:b], manifest, chunk, threads
            )
            for d, a, b in ranges
        ]
        return [f.result() for f in futures]


def build_sharded_index(
    vectors: np.ndarray,
    doc_ids: list[str],
    modalities: list[str] | np.ndarray,
    out_dir: str | os.PathLike,
    shards: int,
    factory: str | None = None,
    target_recall: float = 0.95,
    tune_queries: np.ndarray | None = None,
    k: int = 10,
    engine_sha256: str | None = None,
    seed: int = 0,
    progress: bool = True,
    config: IndexConfig | None = None,
    fill: Fill | None = None,
    encoder: Any = None,
) -> ShardedIndex:
    """Train once on a sample, fill ``shards`` copies of the trained index with contiguous row
    ranges (``fill``: ``fill_local`` by default, ``ray_build.fill_ray`` on a cluster), tune
    once on the whole, and write the sharded index dir ``out_dir``. Same arguments and the same
    search results as ``build_index`` (same factory, same trained parameters)."""
    t_start = time.perf_counter()
    vectors, ids, codes, cfg, bound = prepare_build(
        vectors, doc_ids, modalities, factory, target_recall, k, seed, config, encoder
    )
    if bound:
        engine_sha256 = bound["engine_sha256"]
    n = vectors.shape[0]
    ranges = row_ranges(n, shards)
    index = new_index(cfg.factory, cfg.dim)
    train_s = train_index(index, vectors, cfg, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # the dir is not loadable while rewritten
    trained = faiss.serialize_index(index).tobytes()
    atomic_write_bytes(out / TRAINED_FILE, trained)
    shard_manifest = {
        "format": MANIFEST_FORMAT,
        "factory": cfg.factory,
        "metric": "inner_product",
        "dim": cfg.dim,
        "engine_sha256": engine_sha256,
        "embedding_space": bound.get("embedding_space"),
        "encoding": bound.get("encoding"),
        "search_params": None,
        "sharded_by": "../manifest.json",
    }
    t0 = time.perf_counter()
    jobs = [(str(out / shard_dir_name(i)), a, b) for i, (a, b) in enumerate(ranges)]
    results = (fill or fill_local)(
        trained, jobs, vectors, ids, codes, shard_manifest, cfg.add_chunk
    )
    add_s = time.perf_counter() - t0
    loaded = [load_index(d, device="cpu", verify=False) for d, _a, _b in jobs]
    sharded = ShardedIndex(loaded, [a for _d, a, _b in jobs], {"search_params": None}, index)

    def run_search(q: np.ndarray, kk: int, p: SearchParams):
        return sharded.search_arrays(q, kk, params=p)

    manifest = tune_and_describe(
        run_search,
        loaded[0].faiss_index,
        vectors,
        codes,
        tune_queries,
        cfg,
        engine_sha256,
        {"train": train_s, "add": add_s},
        progress,
        bound,
    )
    per_shard = [memory_figures(s.faiss_index) for s in loaded]
    manifest["memory"] = {
        key: sum(m[key] for m in per_shard)
        for key in per_shard[0]
        if key.endswith("_bytes") and key != "code_bytes_per_vector"
    }
    manifest["memory"]["code_bytes_per_vector"] = per_shard[0].get("code_bytes_per_vector")
    manifest["build_seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    manifest.update(
        layout=LAYOUT,
        trained_file=file_record(out / TRAINED_FILE),
        shards=[
            {
                "dir": Path(d).name,
                "rows": [a, b],
                "files": r["files"],
                "add_seconds": r["add_seconds"],
                "memory": m,
            }
            for (d, a, b), r, m in zip(jobs, results, per_shard, strict=True)
        ],
    )
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return load_sharded_index(out, manifest, verify=False)


def merge_faiss(indexes: list[faiss.Index]) -> faiss.Index:
    """One faiss index holding the rows of ``indexes`` (copies of one trained index) in order:
    the inverted lists (ids shifted), the flat codes and the re-ranking store are appended."""
    out = faiss.clone_index(indexes[0])
    top = parts_of(out)
    for other in indexes[1:]:
        copy = faiss.clone_index(other)  # faiss's merge_from empties its source
        theirs = parts_of(copy)
        offset, added = int(top.top.ntotal), int(theirs.top.ntotal)
        if top.ivf is not None:
            top.ivf.merge_from(theirs.ivf, offset)
            inner = faiss.downcast_index(top.base)
            if isinstance(inner, faiss.IndexPreTransform):
                inner.ntotal = top.ivf.ntotal
        else:
            faiss.downcast_index(top.base).merge_from(faiss.downcast_index(theirs.base), 0)
        if top.refine is not None:
            top.refine.merge_from(theirs.refine, 0)
        top.top.ntotal = offset + added
    return out


def merge_sharded(
    sharded: ShardedIndex | str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> Index:
    """The shards merged into one ``Index`` (searched exactly as the sharded index, same tuned
    parameters); written as an ordinary index dir to ``out_dir`` when given."""
    if not isinstance(sharded, ShardedIndex):
        sharded = load_sharded_index(sharded)
    merged = merge_faiss([s.faiss_index for s in sharded.shards])
    manifest = {
        key: v
        for key, v in sharded.manifest.items()
        if key not in ("layout", "shards", "trained_file", "files")
    }
    manifest["merged_from_shards"] = len(sharded.shards)
    manifest["memory"] = memory_figures(merged)
    index = Index(merged, list(sharded.doc_ids), sharded.modality_codes.copy(), manifest, "cpu")
    if out_dir is not None:
        save_index(index, out_dir)
    return index
