"""The paper's retrieval metrics in numpy (torch-free), agreeing with trec_eval.

``evaluate(run, qrels)`` takes pytrec_eval's formats -- ``run = {qid: {doc_id: score}}``,
``qrels = {qid: {doc_id: relevance}}`` -- and returns fractions in [0, 1]:

- ``MRR@10``, ``MRR@20``: MS MARCO: 1 / rank of the first relevant doc within the cutoff, else 0.
- ``NDCG@10``, ``NDCG@20``: trec_eval's ``ndcg_cut_k`` (gain = relevance, discount
  log2(rank + 1), ideal ranking from the qrels).
- ``Recall@20``, ``Recall@100``: trec_eval's ``recall_k``: relevant docs in the top k over all
  relevant docs of the query (fractional with several positives).
- ``image_share@10``: share of image docs among each query's top 10 (over the docs actually
  ranked there, at most 10), averaged over the queries of the run that have a ranking.
- ``queries``: how many queries the metrics above average over.

Conventions (the paper's, checked against pytrec_eval in tests/test_metrics.py):

- Ranking follows trec_eval: score descending, ties broken by doc id descending (byte order).
- A doc is relevant when its qrels relevance is >= 1.
- Every metric except ``image_share@10`` averages over **all queries in qrels**: a query absent
  from the run (or with no relevant doc) counts 0. pytrec_eval itself drops queries absent from
  the run, so its mean is over fewer queries. Run queries absent from qrels are ignored.
- Doc modality: from ``modalities`` ({doc_id: "text" | "image"}) when given; otherwise WebQA's
  convention: an all-digits doc id is an image (8-digit image ids), anything else a text
  snippet (``<guid>_<n>``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MRR_CUTS = (10, 20)
NDCG_CUTS = (10, 20)
RECALL_CUTS = (20, 100)
SHARE_CUT = 10
KEYS = (
    "MRR@10",
    "MRR@20",
    "NDCG@10",
    "NDCG@20",
    "Recall@20",
    "Recall@100",
    "image_share@10",
    "queries",
)
_DEPTH = max(*MRR_CUTS, *NDCG_CUTS, *RECALL_CUTS, SHARE_CUT)
_DISCOUNT = 1.0 / np.log2(np.arange(2, _DEPTH + 2, dtype=np.float64))  # rank 1..depth


def rank_docs(scores: Mapping[str, float], depth: int | None = None) -> list[str]:
    """Doc ids in trec_eval's order: score descending, ties by doc id descending.

    ``depth`` keeps only the first ``depth`` ids. Raises ValueError on a NaN score.
    """
    if not scores:
        return []
    ids = np.array(list(scores.keys()), dtype=str)
    sc = np.fromiter(scores.values(), dtype=np.float64, count=len(ids))
    if np.isnan(sc).any():
        bad = ids[np.isnan(sc)][:3].tolist()
        raise ValueError(f"NaN score for doc(s) {bad}")
    by_id_desc = np.argsort(ids, kind="stable")[::-1]
    order = by_id_desc[np.argsort(-sc[by_id_desc], kind="stable")]
    if depth is not None:
        order = order[:depth]
    return ids[order].tolist()


def is_image_id(doc_id: str) -> bool:
    """WebQA's convention when no modality map is given: image ids are all digits."""
    return doc_id.isdigit()


class _FlatRun:
    """Every (query, doc, score) of a run, each query's docs sorted in trec_eval's order.

    Usually the run is a (queries x depth) block, so the scores go into one padded matrix
    sorted row-wise (small sorts, ~20x faster than one big lexsort); very uneven runs use one
    lexsort over all pairs instead. Only runs of tied scores are then re-ordered by doc id
    (descending) in Python, so ties cost nothing when absent. ``segment(i)`` gives query i's
    negated scores in ranking order (ascending) and the flat positions of its docs.
    """

    def __init__(self, run: Mapping[str, Mapping[str, float]], qids: list[str]):
        self.qids = qids
        self.docs: list[Mapping[str, float]] = [run.get(q) or {} for q in qids]
        lengths = np.fromiter((len(d) for d in self.docs), dtype=np.int64, count=len(qids))
        self.ids: list[str] = []
        parts = []
        for d in self.docs:
            if d:
                self.ids.extend(d.keys())
                parts.append(np.fromiter(d.values(), dtype=np.float64, count=len(d)))
        sc = np.concatenate(parts) if parts else np.zeros(0, np.float64)
        self.lengths = lengths
        self.ends = np.cumsum(lengths)
        self.starts = self.ends - lengths
        if np.isnan(sc).any():
            bad = int(np.flatnonzero(np.isnan(sc))[0])
            qi = int(np.searchsorted(self.ends, bad, side="right"))
            raise ValueError(f"NaN score in the run for query {qids[qi]!r}, doc {self.ids[bad]!r}")
        width = int(lengths.max()) if len(qids) else 0
        if len(qids) * width <= 4 * sc.size + 1024:
            # padded matrix: +inf pads sort last; row i holds query i
            valid = np.arange(width) < lengths[:, None]
            neg = np.full((len(qids), width), np.inf)
            neg[valid] = -sc
            perm = np.argsort(neg, axis=1, kind="stable")
            self.neg = np.take_along_axis(neg, perm, axis=1)
            self.order = self.starts[:, None] + perm  # flat positions (pads: past the row end)
            tie = (self.neg[:, 1:] == self.neg[:, :-1]) & valid[:, 1:]
            for i in np.flatnonzero(tie.any(axis=1)).tolist():
                self._break_ties(self.order[i], tie[i])
        else:
            qidx = np.repeat(np.arange(len(qids), dtype=np.int64), lengths)
            order = np.lexsort((-sc, qidx))
            neg = -sc[order]
            tie = (neg[1:] == neg[:-1]) & (qidx[order][1:] == qidx[order][:-1])
            self._break_ties(order, tie)
            self.neg, self.order = neg, order

    def _break_ties(self, order: np.ndarray, tie: np.ndarray) -> None:
        """Re-order, in place, each run of tied scores (tie[j]: j+1 ties with j) by id desc."""
        if not tie.any():
            return
        edges = np.flatnonzero(np.diff(np.concatenate(([0], tie.view(np.int8), [0]))))
        for a, b in zip(edges[0::2], edges[1::2] + 1, strict=True):
            seg = order[a:b].tolist()
            seg.sort(key=self.ids.__getitem__, reverse=True)
            order[a:b] = seg

    def segment(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.lengths[i])
        if self.neg.ndim == 2:
            return self.neg[i, :n], self.order[i, :n]
        a = int(self.starts[i])
        return self.neg[a : a + n], self.order[a : a + n]

    def top(self, i: int, k: int) -> list[str]:
        """Query i's first k doc ids in ranking order."""
        _, order = self.segment(i)
        return [self.ids[j] for j in order[:k].tolist()]

    def ranks(self, i: int, doc_ids: list[str]) -> list[int]:
        """1-based ranks of ``doc_ids`` (all present in query i's run) in trec_eval's order."""
        d = self.docs[i]
        neg = -np.fromiter((d[x] for x in doc_ids), dtype=np.float64, count=len(doc_ids))
        seg, order = self.segment(i)
        lo = np.searchsorted(seg, neg, side="left")
        hi = np.searchsorted(seg, neg, side="right")
        out = (lo + 1).tolist()
        for j in np.flatnonzero(hi - lo > 1).tolist():  # tied score: ids above it come first
            tied = (self.ids[t] for t in order[int(lo[j]) : int(hi[j])].tolist())
            out[j] += sum(1 for t in tied if t > doc_ids[j])
        return out


def _query_metrics(ranks: list[int], rels: Mapping[str, int], gains: list[float]) -> list[float]:
    """MRR@10, MRR@20, NDCG@10, NDCG@20, Recall@20, Recall@100 of one query.

    ranks: 1-based ranks of the query's relevant docs that the run retrieved; gains: their
    relevance values (same order).
    """
    pos = sorted((v for v in rels.values() if v >= 1), reverse=True)
    n_rel = len(pos)
    if n_rel == 0:
        return [0.0] * 6
    first = min(ranks) if ranks else _DEPTH + 1
    out = [1.0 / first if first <= k else 0.0 for k in MRR_CUTS]
    for k in NDCG_CUTS:
        dcg = sum(g * _DISCOUNT[r - 1] for r, g in zip(ranks, gains, strict=True) if r <= k)
        idcg = float(np.dot(pos[:k], _DISCOUNT[: min(k, n_rel)]))
        out.append(float(dcg) / idcg if idcg > 0 else 0.0)
    out += [sum(1 for r in ranks if r <= k) / n_rel for k in RECALL_CUTS]
    return out


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    modalities: Mapping[str, str] | None = None,
    per_query: bool = False,
) -> dict:
    """The eval JSON keys (see module docstring) for ``run`` against ``qrels``.

    run: {qid: {doc_id: score}} (any depth; only the top 100 matter). qrels: {qid: {doc_id:
    relevance}}. modalities: {doc_id: "text" | "image"} for ``image_share@10``. With
    ``per_query=True`` the result also holds ``per_query``: {qid: {metric: value}}.
    """
    names = KEYS[:6]
    qids = list(qrels)
    extra = [q for q in run if q not in qrels]  # only for image_share@10
    flat = _FlatRun(run, qids + extra)
    m = np.zeros((len(qids), 6), dtype=np.float64)
    for i, q in enumerate(qids):
        rels, docs = qrels[q], flat.docs[i]
        found = [d for d, v in rels.items() if v >= 1 and d in docs]
        ranks = flat.ranks(i, found) if found else []
        m[i] = _query_metrics(ranks, rels, [float(rels[d]) for d in found])
    n = len(qids)
    result: dict = {k: (float(m[:, i].mean()) if n else 0.0) for i, k in enumerate(names)}

    share: dict[str, float] = {}
    for i, q in enumerate(qids + extra):
        top = flat.top(i, SHARE_CUT)
        if not top:
            continue
        if modalities is None:
            n_img = sum(1 for d in top if is_image_id(d))
        else:
            n_img = sum(1 for d in top if modalities.get(d) == "image")
        share[q] = n_img / len(top)
    result["image_share@10"] = float(np.mean(list(share.values()))) if share else 0.0
    result["queries"] = n
    if per_query:
        per = {q: dict(zip(names, m[i].tolist(), strict=True)) for i, q in enumerate(qids)}
        for q in qids:
            if q in share:
                per[q]["image_share@10"] = share[q]
        result["per_query"] = per
    return result
