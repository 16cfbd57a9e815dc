"""What a faiss index is made of: IVF part, PQ code size, re-ranking store, memory figures,
and the faiss ``SearchParameters`` tree that carries a ``SearchParams`` into one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss

from univl_fast.index.params import SearchParams


@dataclass
class IndexParts:
    """The pieces of a (possibly wrapped) faiss index that search and tuning care about."""

    top: faiss.Index  # the index searched
    base: faiss.Index  # what produces candidates (top itself unless refine)
    refine: faiss.Index | None  # re-ranking store of an IndexRefine, else None
    ivf: faiss.IndexIVF | None  # the IVF inside base (through OPQ pre-transforms), else None
    default_k_factor: float  # the index's own k_factor (refine only)
    hnsw: faiss.IndexHNSW | None = None  # the HNSW graph searched: base itself, or IVF quantizer

    @property
    def hnsw_is_quantizer(self) -> bool:
        return self.hnsw is not None and self.ivf is not None

    @property
    def is_flat(self) -> bool:
        return self.refine is None and self.ivf is None and isinstance(self.top, faiss.IndexFlat)


def parts_of(index: faiss.Index) -> IndexParts:
    top = faiss.downcast_index(index)
    refine = None
    base = top
    k_factor = 1.0
    if isinstance(top, faiss.IndexRefine):
        base = faiss.downcast_index(top.base_index)
        refine = faiss.downcast_index(top.refine_index)
        k_factor = float(top.k_factor)
    try:
        ivf = faiss.extract_index_ivf(base)
    except RuntimeError:
        ivf = None
    inner = faiss.downcast_index(ivf.quantizer) if ivf is not None else base
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    hnsw = inner if isinstance(inner, faiss.IndexHNSW) else None
    return IndexParts(
        top=top, base=base, refine=refine, ivf=ivf, default_k_factor=k_factor, hnsw=hnsw
    )


def default_search_params(parts: IndexParts) -> SearchParams:
    """The knobs the index would use on its own (before tuning). An IVF's HNSW quantizer
    gets no ef_search here: left None, it follows ``quantizer_ef``'s 2 * nprobe rule, as
    during tuning (the graph's stored efSearch, 16, would cut the lists probed)."""
    return SearchParams(
        nprobe=int(parts.ivf.nprobe) if parts.ivf is not None else None,
        k_factor=int(parts.default_k_factor) if parts.refine is not None else None,
        ef_search=(
            int(parts.hnsw.hnsw.efSearch) if parts.hnsw is not None and parts.ivf is None else None
        ),
    )


def quantizer_ef(params: SearchParams, parts: IndexParts) -> int:
    """efSearch for an IVF's HNSW quantizer: the given value, else 2 * nprobe (>= 16)."""
    if params.ef_search is not None:
        return int(params.ef_search)
    nprobe = int(params.nprobe if params.nprobe is not None else parts.ivf.nprobe)
    return max(16, 2 * nprobe)


def faiss_search_parameters(
    parts: IndexParts, params: SearchParams, sel: faiss.IDSelector | None
) -> tuple[faiss.SearchParameters | None, list[Any]]:
    """faiss parameter tree for one call, and the objects it points to (keep them alive)."""
    keep: list[Any] = [sel]
    base: faiss.SearchParameters | None = None
    if parts.ivf is not None:
        base = faiss.SearchParametersIVF()
        base.nprobe = int(params.nprobe if params.nprobe is not None else parts.ivf.nprobe)
        if sel is not None:
            base.sel = sel
        if parts.hnsw is not None:
            qp = faiss.SearchParametersHNSW()
            qp.efSearch = quantizer_ef(params, parts)
            base.quantizer_params = qp
            keep.append(qp)
    elif parts.hnsw is not None:
        base = faiss.SearchParametersHNSW()
        base.efSearch = int(
            params.ef_search if params.ef_search is not None else parts.hnsw.hnsw.efSearch
        )
        if sel is not None:
            base.sel = sel
    elif sel is not None:
        base = faiss.SearchParameters()
        base.sel = sel
    keep.append(base)
    if parts.refine is None:
        return base, keep
    top = faiss.IndexRefineSearchParameters()
    kf = params.k_factor if params.k_factor is not None else parts.default_k_factor
    top.k_factor = float(kf)
    if base is not None:
        top.base_index_params = base
    keep.append(top)
    return top, keep


def searcher(index: faiss.Index):
    """run(queries, k, SearchParams) -> (scores, rows) over the whole of ``index`` (what
    tuning and timing call)."""
    parts = parts_of(index)
    n = int(index.ntotal)

    def run(q, k: int, p: SearchParams):
        fp, _keep = faiss_search_parameters(parts, p, None)
        return index.search(q, min(k, n), params=fp)

    return run


def _code_size(index: faiss.Index) -> int:
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexHNSW):  # no standalone codec: its vectors live in storage
        return _code_size(idx.storage)
    if hasattr(idx, "code_size"):
        return int(idx.code_size)
    return int(idx.sa_code_size())


def memory_figures(index: faiss.Index) -> dict[str, Any]:
    """Bytes held by the index, split into compressed codes (+ ids), coarse/transform
    parameters, and the re-ranking store; plus what an exact float32 Flat would take."""
    parts = parts_of(index)
    n, d = int(parts.top.ntotal), int(parts.top.d)
    flat = n * d * 4
    out: dict[str, Any] = {"flat_float32_bytes": flat}
    if parts.ivf is not None:
        ivf = parts.ivf
        codes = n * (int(ivf.code_size) + 8)  # codes + 8-byte ids in the inverted lists
        coarse = int(ivf.nlist) * int(ivf.d) * 4
        transforms = 0
        base = parts.base
        if isinstance(base, faiss.IndexPreTransform):
            for i in range(base.chain.size()):
                vt = faiss.downcast_VectorTransform(base.chain.at(i))
                transforms += int(vt.d_in) * int(vt.d_out) * 4
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        pq_tables = int(pq.M) * int(pq.ksub) * int(pq.dsub) * 4 if pq is not None else 0
        out.update(
            codes_bytes=codes,
            code_bytes_per_vector=int(ivf.code_size) + 8,
            coarse_and_transform_bytes=coarse + transforms + pq_tables,
        )
    else:
        codes = n * _code_size(parts.base)
        out.update(codes_bytes=codes, code_bytes_per_vector=_code_size(parts.base))
    if parts.hnsw is not None and parts.ivf is None:
        graph = _serialized_bytes(parts.hnsw) - codes
        out.update(graph_bytes=graph, coarse_and_transform_bytes=graph)
    elif parts.hnsw is not None:  # IVF with an HNSW quantizer: centroids + graph links
        out["coarse_and_transform_bytes"] += (
            _serialized_bytes(parts.hnsw) - int(parts.ivf.nlist) * int(parts.ivf.d) * 4
        )
    out["codes_fraction_of_flat"] = (codes / flat) if flat else 0.0
    out["refine_bytes"] = n * _code_size(parts.refine) if parts.refine is not None else 0
    out["serialized_bytes"] = _serialized_bytes(parts.top)
    out["codes_and_coarse_fraction_of_flat"] = (
        (codes + out.get("coarse_and_transform_bytes", 0)) / flat if flat else 0.0
    )
    return out


def _serialized_bytes(index: faiss.Index) -> int:
    """What faiss writes for ``index`` (the measured size of every structure it holds),
    counted as it streams out rather than held in memory."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return total
