"""Sharded index directory: N shards of one trained index, searched together (faiss only).

Layout (manifest last, so a half-written dir never loads)::

    trained.faiss      the trained empty index (coarse quantizer, OPQ, PQ codebooks) that
                       every shard was filled from: the shared trained parameters
    shard-00000/ ...   one ordinary index dir per shard (``univl_fast.index.store``), rows
                       [row_start, row_stop) of the whole corpus in row order
    manifest.json      "layout": "sharded", factory, dim, ntotal, tuned search params, recall,
                       and per shard its dir, row range, and the size + sha256 of its files

``load_index`` reads such a dir as a ``ShardedIndex`` (same search API as ``Index``). Its search
runs the coarse quantizer (and OPQ rotation) once per query batch and scans the same inverted
lists of every shard (what faiss's ``IndexShardsIVF`` does); with an exact re-ranking stage it
merges the shards' candidate pools by their approximate score before re-ranking, exactly as the
single index would, so at the same search parameters the merged top-k equals the unsharded
index's (up to exact score ties).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from univl_fast.index.base import SearchableIndex, empty_result
from univl_fast.index.binding import check_binding
from univl_fast.index.files import MANIFEST_FILE
from univl_fast.index.introspect import (
    IndexParts,
    default_search_params,
    faiss_search_parameters,
    parts_of,
)
from univl_fast.index.params import IndexFormatError, SearchParams, ShardTimeoutError
from univl_fast.index.reader import check_file, load_single_index, read_manifest
from univl_fast.index.search import Index
from univl_fast.utils.io import sha256_file

log = logging.getLogger(__name__)

LAYOUT = "sharded"
TRAINED_FILE = "trained.faiss"


def shard_dir_name(i: int) -> str:
    return f"shard-{i:05d}"


def is_sharded(manifest: dict[str, Any]) -> bool:
    return manifest.get("layout") == LAYOUT


@dataclass
class Candidates:
    """One shard's answer for a query batch: approximate scores and global rows (n, K), and
    for an index with re-ranking the exact scores of the same candidates (else None)."""

    scores: np.ndarray
    rows: np.ndarray
    exact: np.ndarray | None


def coarse_assign(trained: faiss.Index, q: np.ndarray, nprobe: int):
    """(transformed queries, coarse scores, list ids) from the shared trained index: the
    quantizer search every shard would otherwise repeat."""
    parts = parts_of(trained)
    base = parts.base
    xt = q
    if isinstance(base, faiss.IndexPreTransform):
        for i in range(base.chain.size()):
            xt = faiss.downcast_VectorTransform(base.chain.at(i)).apply(xt)
    nprobe = min(int(nprobe), int(parts.ivf.nlist))
    dq, iq = parts.ivf.quantizer.search(np.ascontiguousarray(xt, dtype=np.float32), nprobe)
    return np.ascontiguousarray(xt, dtype=np.float32), dq, np.ascontiguousarray(iq, np.int64)


def shard_candidates(
    shard: Index,
    row_start: int,
    q: np.ndarray,
    k: int,
    params: SearchParams,
    modality: str | None,
    coarse: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    with_exact: bool = True,
) -> Candidates:
    """Search one shard: its top ``k`` (top ``k * k_factor`` before re-ranking for a refine
    index) with global rows; ``coarse`` = ``coarse_assign`` output (IVF indexes) or None.
    with_exact: also score the candidates exactly (refine index; a remote shard does, a local
    one leaves it to ``merge_candidates``, which scores only the merged pool)."""
    parts: IndexParts = shard.parts
    sel = shard.selector(modality)
    pool = k * int(params.k_factor or 1) if parts.refine is not None else k
    pool = min(pool, shard.ntotal)
    if pool == 0:
        empty = np.empty((q.shape[0], 0))
        return Candidates(empty.astype(np.float32), empty.astype(np.int64), None)
    if parts.ivf is not None and coarse is not None:
        xt, dq, iq = coarse
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(iq.shape[1])
        if sel is not None:
            sp.sel = sel
        n = xt.shape[0]
        scores = np.empty((n, pool), dtype=np.float32)
        rows = np.empty((n, pool), dtype=np.int64)
        # the C++ call: faiss's Python wrapper of search_preassigned takes no params (selector)
        parts.ivf.search_preassigned_c(
            n,
            faiss.swig_ptr(xt),
            pool,
            faiss.swig_ptr(iq),
            faiss.swig_ptr(dq),
            faiss.swig_ptr(scores),
            faiss.swig_ptr(rows),
            False,
            sp,
        )
    else:
        fp, _keep = faiss_search_parameters(
            IndexParts(parts.base, parts.base, None, parts.ivf, 1.0), params, sel
        )
        scores, rows = parts.base.search(q, pool, params=fp)
    exact = None
    if parts.refine is not None and with_exact:
        exact = exact_scores(parts.refine, q, rows)
    glob = np.where(rows >= 0, rows + row_start, -1)
    return Candidates(scores.astype(np.float32), glob.astype(np.int64), exact)


def exact_scores(
    refine: faiss.Index, q: np.ndarray, rows: np.ndarray, chunk: int = 8192
) -> np.ndarray:
    """Inner products of queries ``q`` (n, d) with the re-ranking store's rows ``rows`` (n, m)
    (local ids; -1 -> -inf), decoded ``chunk`` rows at a time."""
    out = np.full(rows.shape, -np.inf, dtype=np.float32)
    qi, col = np.nonzero(rows >= 0)
    for s in range(0, qi.size, chunk):
        a, c = qi[s : s + chunk], col[s : s + chunk]
        vecs = refine.reconstruct_batch(rows[a, c])
        out[a, c] = np.einsum("ij,ij->i", vecs, q[a])
    return out


def merge_candidates(
    parts: list[Candidates],
    k: int,
    pool: int,
    rescore: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over shards: by score; for re-ranked shards, the best ``pool`` candidates by
    approximate score first (the single index's candidate pool), then by exact score (the
    shards' own, or ``rescore(global rows (n, pool))`` when they sent none)."""
    parts = [p for p in parts if p.rows.shape[1]]
    n = parts[0].rows.shape[0] if parts else 0
    if not parts:
        return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    rows = np.concatenate([p.rows for p in parts], axis=1)
    scores = np.where(rows >= 0, scores, -np.inf)
    # stable order: score, then row (faiss breaks ties by insertion order = row order)
    order = _order(scores, rows)
    if parts[0].exact is None and rescore is None:
        take = order[:, :k]
        return np.take_along_axis(scores, take, 1), np.take_along_axis(rows, take, 1)
    top = order[:, :pool]
    cand_rows = np.take_along_axis(rows, top, 1)
    if parts[0].exact is not None:
        exact = np.concatenate([p.exact for p in parts], axis=1)
        cand_exact = np.where(cand_rows >= 0, np.take_along_axis(exact, top, 1), -np.inf)
    else:
        cand_exact = rescore(cand_rows)
    order2 = _order(cand_exact, cand_rows)[:, :k]
    return np.take_along_axis(cand_exact, order2, 1), np.take_along_axis(cand_rows, order2, 1)


def _order(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per row of the batch: column order by descending score, ties by ascending row (-1
    rows, i.e. empty slots, last)."""
    key_rows = np.where(rows >= 0, rows, np.iinfo(np.int64).max)
    return np.lexsort((key_rows, -scores), axis=-1)


class ShardedSearch(SearchableIndex):
    """What every sharded index shares: row-order doc ids and modalities of all shards, the
    tuned defaults, and the array search over candidates gathered from the shards
    (``_gather``, by the subclass: local threads or Ray actors), merged."""

    def __init__(
        self,
        doc_ids: list[str],
        modality_codes: np.ndarray,
        manifest: dict[str, Any],
        trained: faiss.Index,
    ):
        self.trained = trained
        self._parts = parts_of(trained)
        tuned = SearchParams.from_json(manifest.get("search_params"))
        super().__init__(
            doc_ids, modality_codes, manifest, tuned.merged_over(default_search_params(self._parts))
        )

    @property
    def dim(self) -> int:
        return int(self.trained.d)

    def _gather(self, q, k, params, modality, coarse) -> tuple[list[Candidates], list[str]]:
        """Every shard's candidates, and the shards that did not answer (with why)."""
        raise NotImplementedError

    def _rescore(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact scores of global ``rows`` (n, m) for queries ``q`` (refine indexes whose
        shards sent candidates without them)."""
        raise NotImplementedError

    def search_partial(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        modality: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(scores, global rows, missing) where ``missing`` names each shard that did not
        answer (empty: complete results; otherwise the top-k of the shards that did)."""
        q, k_eff, p = self.prepare(queries, k, params, modality)
        if q.shape[0] == 0 or k_eff == 0:
            return (*empty_result(q.shape[0], k_eff), [])
        return self._merged(q, k_eff, p, modality)

    def _merged(
        self, q: np.ndarray, k: int, p: SearchParams, modality: str | None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        coarse = None
        if self._parts.ivf is not None:
            coarse = coarse_assign(self.trained, q, int(p.nprobe or self._parts.ivf.nprobe))
        pool = k * int(p.k_factor or 1) if self._parts.refine is not None else k
        found, missing = self._gather(q, k, p, modality, coarse)
        if not found:
            raise ShardTimeoutError(f"no shard answered: {'; '.join(missing)}")
        rescore = None
        if self._parts.refine is not None and found[0].exact is None:
            rescore = functools.partial(self._rescore, q)
        scores, rows = merge_candidates(found, k, pool, rescore)
        return scores, rows, missing

    def _search_arrays(
        self, q: np.ndarray, k: int, params: SearchParams, modality: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard; ``ShardTimeoutError`` when a shard did not answer."""
        scores, rows, missing = self._merged(q, k, params, modality)
        if missing:
            raise ShardTimeoutError(
                f"{len(missing)} shard(s) did not answer: {'; '.join(missing)} "
                "(search_partial returns the other shards' results)"
            )
        return scores, rows


class ShardedIndex(ShardedSearch):
    """N ``Index`` shards of one trained index in this process, searched as one with the
    ``Index`` search API (one thread per shard; faiss releases the GIL).

    Attributes: ``ntotal``, ``dim``, ``manifest``, ``doc_ids`` / ``modalities`` /
    ``modality_codes`` (all rows, in row order), ``shards``, ``row_starts``, ``trained``.
    """

    def __init__(
        self,
        shards: list[Index],
        row_starts: list[int],
        manifest: dict[str, Any],
        trained: faiss.Index,
        threads: int | None = None,
    ):
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        self.shards = shards
        self.row_starts = [int(r) for r in row_starts]
        super().__init__(
            [d for s in shards for d in s.doc_ids],
            np.concatenate([s.modality_codes for s in shards]),
            manifest,
            trained,
        )
        self._pool = ThreadPoolExecutor(max(1, min(len(shards), threads or os.cpu_count() or 1)))

    def _gather(self, q, k, params, modality, coarse):
        futures = [
            self._pool.submit(shard_candidates, s, r, q, k, params, modality, coarse, False)
            for s, r in zip(self.shards, self.row_starts, strict=True)
        ]
        return [f.result() for f in futures], []

    def _rescore(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.full(rows.shape, -np.inf, dtype=np.float32)

        def one(shard: Index, start: int) -> None:
            mine = (rows >= start) & (rows < start + shard.ntotal)
            if mine.any():
                local = np.where(mine, rows - start, -1)
                got = exact_scores(shard.parts.refine, q, local)
                out[mine] = got[mine]

        for f in [
            self._pool.submit(one, s, r) for s, r in zip(self.shards, self.row_starts, strict=True)
        ]:
            f.result()
        return out

    def __repr__(self) -> str:
        return (
            f"ShardedIndex({self.manifest.get('factory')!r}, shards={len(self.shards)}, "
            f"ntotal={self.ntotal}, params={self.default_params})"
        )


def check_sharded_files(root: Path, manifest: dict[str, Any], verify: bool) -> None:
    """Every shard dir and the trained file are present and match the manifest's records."""
    check_file(root / TRAINED_FILE, manifest.get("trained_file"), verify)
    for i, sh in enumerate(manifest.get("shards", [])):
        if sh.get("dir") != shard_dir_name(i):
            raise IndexFormatError(f"{root / MANIFEST_FILE}: shard {i} is {sh.get('dir')!r}")
        for name, rec in sh.get("files", {}).items():
            check_file(root / sh["dir"] / name, rec, verify)


def load_sharded_index(
    directory: str | os.PathLike,
    manifest: dict[str, Any] | None = None,
    engine_sha256: str | None = None,
    verify: bool = True,
    *,
    encoder: Any = None,
) -> ShardedIndex:
    """Read a sharded index dir (``load_index`` calls this when the manifest says sharded)."""
    root = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(root)
    if not is_sharded(manifest):
        raise IndexFormatError(f"{root}: not a sharded index directory")
    mismatch = check_binding(root, manifest, encoder, engine_sha256)
    check_sharded_files(root, manifest, verify)
    shards, starts = [], []
    expect = 0
    for sh in manifest["shards"]:
        start, stop = (int(x) for x in sh["rows"])
        if start != expect:
            raise IndexFormatError(f"{root}: shard {sh['dir']} starts at row {start}, not {expect}")
        sub = root / sh["dir"]
        idx = load_single_index(sub, read_manifest(sub), None, "cpu", False)  # bound above
        if idx.ntotal != stop - start:
            raise IndexFormatError(
                f"{root / sh['dir']}: {idx.ntotal} rows, manifest says {stop - start}"
            )
        shards.append(idx)
        starts.append(start)
        expect = stop
    if expect != int(manifest["ntotal"]):
        raise IndexFormatError(f"{root}: shards hold {expect} rows, manifest {manifest['ntotal']}")
    trained = faiss.read_index(str(root / TRAINED_FILE))
    index = ShardedIndex(shards, starts, manifest, trained)
    index.encoding_mismatch = mismatch
    if mismatch:
        log.warning("%s: %s", root, mismatch)
    return index


def file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
