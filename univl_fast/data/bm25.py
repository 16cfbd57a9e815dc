"""BM25 over a dataset's texts: the paper's lexical baseline (torch-free, numpy only).

Image documents are represented by their captions (``plain``, or expanded: ``exp`` /
``query``), as in the paper's BM25 row (Table 1). On the synthetic benchmark this shows what
words alone can do: plain captions name the entity but never the picture's attributes, so
image queries need the expansion (or the pixels).

    from univl_fast.data.bm25 import evaluate_bm25
    evaluate_bm25(DatasetDir(path), split="test", captions="exp", by_modality=True)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from univl_fast.data.layout import DatasetDir
from univl_fast.evaluation.embeddings import format_table, make_run, query_modalities
from univl_fast.evaluation.metrics import KEYS, evaluate
from univl_fast.types import IMAGE, TEXT
from univl_fast.utils.io import atomic_write_json

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an the of in on at to is are was were be been by for from with and or as it its this "
    "that what which who whom how where when does do did there sep".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-case words minus stopwords, with a light plural stemmer (triangles -> triangle,
    crosses -> cross)."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS:
            continue
        if len(w) > 4 and w.endswith("sses"):
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


class BM25:
    """Okapi BM25 (k1, b as Anserini's defaults 0.9 / 0.4) over ``texts``.

    Postings are kept as numpy arrays sorted by term: for each term, the rows of the docs that
    hold it and its term frequency there.
    """

    def __init__(self, texts: Sequence[str], k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}
        rows, terms, tfs = [], [], []
        lengths = np.zeros(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            counts = Counter(tokenize(text))
            lengths[i] = sum(counts.values())
            for term, tf in counts.items():
                rows.append(i)
                terms.append(self.vocab.setdefault(term, len(self.vocab)))
                tfs.append(tf)
        self.n_docs = len(texts)
        t = np.asarray(terms, dtype=np.int64)
        order = np.argsort(t, kind="stable")
        self._rows = np.asarray(rows, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float64)[order]
        self._bounds = np.searchsorted(t[order], np.arange(len(self.vocab) + 1))
        df = np.diff(self._bounds).astype(np.float64)
        self._idf = np.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))
        avgdl = float(lengths.mean()) if self.n_docs else 1.0
        norm = k1 * (1.0 - b + b * lengths / max(avgdl, 1e-9))
        self._weight = tf * (k1 + 1.0) / (tf + norm[self._rows])  # per posting, idf applied later

    def scores(self, query: str) -> np.ndarray:
        """(n_docs,) float64 BM25 scores of every doc for ``query``."""
        out = np.zeros(self.n_docs, dtype=np.float64)
        for term, qtf in Counter(tokenize(query)).items():
            t = self.vocab.get(term)
            if t is None:
                continue
            a, b = self._bounds[t], self._bounds[t + 1]
            out[self._rows[a:b]] += qtf * self._idf[t] * self._weight[a:b]
        return out

    def search(
        self, queries: Sequence[str], k: int, doc_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k per query, like ``evaluation.exact_topk``: ((n, k') float32 scores, (n, k')
        int64 rows), rows restricted to ``doc_rows`` when given. Docs sharing no term with
        the query score 0 and fill the tail of the ranking."""
        allowed = None if doc_rows is None else np.asarray(doc_rows, dtype=np.int64)
        pool = self.n_docs if allowed is None else allowed.size
        kk = min(k, pool)
        s_out = np.zeros((len(queries), kk), np.float32)
        r_out = np.zeros((len(queries), kk), np.int64)
        for i, q in enumerate(queries):
            s = self.scores(q)
            if allowed is not None:
                s = s[allowed]
            top = np.argpartition(-s, kk - 1)[:kk] if kk < s.size else np.arange(s.size)
            top = top[np.argsort(-s[top], kind="stable")]
            s_out[i] = s[top]
            r_out[i] = top if allowed is None else allowed[top]
        return s_out, r_out


def evaluate_bm25(
    ds: DatasetDir,
    split: str = "test",
    captions: str = "plain",
    k: int = 100,
    by_modality: bool = False,
) -> dict:
    """The paper's metrics for BM25 over the joint corpus (text docs + image captions).

    Same keys and blocks as ``evaluation.evaluate_embeddings`` (``text`` / ``image`` /
    ``multi`` with ``by_modality``).
    """
    doc_ids, texts, mods = [], [], []
    for d in ds.text_docs():
        doc_ids.append(d.doc_id)
        texts.append(d.text)
        mods.append(TEXT)
    for im in ds.image_docs(captions):
        doc_ids.append(im.doc_id)
        texts.append(im.caption)
        mods.append(IMAGE)
    index = BM25(texts)
    mod_map = dict(zip(doc_ids, mods, strict=True))
    qrels = ds.qrels(split)
    queries = [q for q in ds.queries(split) if q.qid in qrels]

    def block(qs, doc_rows, sub_qrels) -> dict:
        scores, rows = index.search([q.text for q in qs], k, doc_rows)
        return evaluate(make_run([q.qid for q in qs], doc_ids, scores, rows), sub_qrels, mod_map)

    result = block(queries, None, qrels)
    if by_modality:
        result["multi"] = {key: result[key] for key in KEYS}
        qmod = query_modalities(qrels, mod_map)
        mods_arr = np.asarray(mods)
        for m in (TEXT, IMAGE):
            sub = {q: r for q, r in qrels.items() if qmod[q] == m}
            qs = [q for q in queries if q.qid in sub]
            result[m] = (
                block(qs, np.flatnonzero(mods_arr == m), sub) if sub else dict.fromkeys(KEYS, 0.0)
            )
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m univl_fast.data.bm25 --data DIR [--split test] [--captions exp]``"""
    p = argparse.ArgumentParser(prog="python -m univl_fast.data.bm25", description=__doc__)
    p.add_argument("--data", required=True, help="dataset dir")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--captions", default="plain", help="plain | query | exp | a JSON-lines path")
    p.add_argument("--by-modality", action="store_true", help="also Text / Image / Multi")
    p.add_argument("--json", help="write the metrics here as JSON")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    res = evaluate_bm25(
        DatasetDir(args.data), args.split, args.captions, by_modality=args.by_modality
    )
    label = f"BM25 ({args.captions} captions)"
    rows = {label: res}
    rows.update({f"{label} {m}": res[m] for m in (TEXT, IMAGE, "multi") if m in res})
    keys = ("MRR@10", "NDCG@10", "MRR@20", "NDCG@20", "Recall@20", "Recall@100",
            "image_share@10", "queries")  # fmt: skip
    print(format_table(rows, keys=keys))
    print(
        f"[bm25] {args.data} split={args.split} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr
    )
    if args.json:
        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
