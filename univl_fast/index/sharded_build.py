"""Filling a trained index as N shards and writing a sharded index dir.

``build_index(..., shards=N, out_dir=...)`` (``build.py``) trains once (or picks a candidate
by the budget-driven selection, trained on the sample), and hands the trained empty index to
``ShardFill``: copies of it are filled with contiguous row ranges, each saved as an index dir
(``fill``: ``fill_local``, threads in this process, or ``univl_fast.scale.ray_build``'s Ray
tasks), and searched together as a ``ShardedIndex`` while tuning runs once on the whole.
``merge_sharded`` turns the shards back into one ordinary index.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from univl_fast.index.files import MANIFEST_FILE, save_index
from univl_fast.index.introspect import _serialized_bytes, memory_figures, parts_of
from univl_fast.index.params import SearchParams
from univl_fast.index.reader import load_single_index, read_manifest
from univl_fast.index.search import Index
from univl_fast.index.sharded import (
    LAYOUT,
    TRAINED_FILE,
    ShardedIndex,
    file_record,
    load_sharded_index,
    shard_dir_name,
)
from univl_fast.index.steps import Filled, add_in_chunks
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


class ShardFill:
    """Fills trained indexes as ``shards`` shards under ``out`` (one work dir per candidate,
    the kept one moved into place by ``finish``)."""

    in_memory = False

    def __init__(
        self,
        out: str | os.PathLike,
        shards: int,
        vectors: np.ndarray,
        ids: list[str],
        codes: np.ndarray,
        chunk: int,
        shard_fields: dict[str, Any],
        fill: Fill | None = None,
    ):
        self.out = Path(out)
        self.ranges = row_ranges(vectors.shape[0], shards)
        self.vectors, self.ids, self.codes, self.chunk = vectors, ids, codes, chunk
        self.shard_fields = shard_fields  # format, engine_sha256, embedding_space, encoding
        self._fill = fill or fill_local
        self._tries = 0
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MANIFEST_FILE).unlink(missing_ok=True)  # not loadable while rewritten

    def fill(self, trained: faiss.Index, factory: str) -> Filled:
        work = self.out / f".fill-{self._tries}"
        self._tries += 1
        shutil.rmtree(work, ignore_errors=True)
        blob = faiss.serialize_index(trained).tobytes()
        shard_manifest = {
            **self.shard_fields,
            "factory": factory,
            "metric": "inner_product",
            "dim": int(trained.d),
            "search_params": None,
            "sharded_by": "../manifest.json",
        }
        jobs = [(str(work / shard_dir_name(i)), a, b) for i, (a, b) in enumerate(self.ranges)]
        t0 = time.perf_counter()
        results = self._fill(
            blob, jobs, self.vectors, self.ids, self.codes, shard_manifest, self.chunk
        )
        add_s = time.perf_counter() - t0
        loaded = [
            load_single_index(Path(d), read_manifest(Path(d)), None, "cpu", False)
            for d, _a, _b in jobs
        ]
        sharded = ShardedIndex(loaded, [a for _d, a, _b in jobs], {"search_params": None}, trained)

        def run_search(q: np.ndarray, k: int, p: SearchParams):
            return sharded.search_arrays(q, k, params=p)

        return Filled(
            loaded[0].faiss_index, run_search, add_s, (work, jobs, results, sharded, blob)
        )

    def size(self, filled: Filled) -> int:
        return sum(_serialized_bytes(s.faiss_index) for s in filled.state[3].shards)

    def discard(self, filled: Filled) -> None:
        shutil.rmtree(filled.state[0], ignore_errors=True)

    def finish(
        self, filled: Filled, ids: list[str], codes: np.ndarray, manifest: dict[str, Any]
    ) -> ShardedIndex:
        """Move the filled shards into place and write the sharded manifest (last)."""
        work, jobs, results, sharded, blob = filled.state
        out = self.out
        atomic_write_bytes(out / TRAINED_FILE, blob)
        per_shard = [memory_figures(s.faiss_index) for s in sharded.shards]
        manifest["memory"] = {
            key: sum(m[key] for m in per_shard)
            for key in per_shard[0]
            if key.endswith("_bytes") and key != "code_bytes_per_vector"
        }
        manifest["memory"]["code_bytes_per_vector"] = per_shard[0].get("code_bytes_per_vector")
        shards = []
        for (d, a, b), r, m in zip(jobs, results, per_shard, strict=True):
            name = Path(d).name
            shutil.rmtree(out / name, ignore_errors=True)
            os.replace(d, out / name)
            shards.append(
                {
                    "dir": name,
                    "rows": [a, b],
                    "files": r["files"],
                    "add_seconds": r["add_seconds"],
                    "memory": m,
                }
            )
        shutil.rmtree(work, ignore_errors=True)
        for stale in out.glob(".fill-*"):
            shutil.rmtree(stale, ignore_errors=True)
        manifest.update(layout=LAYOUT, trained_file=file_record(out / TRAINED_FILE), shards=shards)
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
