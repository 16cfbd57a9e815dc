"""``univl-fast eval --engine E --index I --data D``: the paper's metrics through an exported
engine and its (tuned) index, torch-free.

Writes the same JSON keys as the PyTorch evaluation (``univl-fast eval --checkpoint``), so the
two compare directly: ``MRR@10``, ``MRR@20``, ``NDCG@10``, ``NDCG@20``, ``Recall@20``,
``Recall@100``, ``image_share@10``, ``queries``; with ``--by-modality`` the same block again
under ``text`` (text-answerable queries, text docs only), ``image`` (image-answerable queries,
image docs only) and ``multi`` (all queries, the joint index), the paper's three settings.
The by-modality runs use modality-restricted searches of the one joint index.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from univl_fast.evaluation.embeddings import query_modalities
from univl_fast.evaluation.metrics import KEYS, evaluate
from univl_fast.interfaces import SearchEngine, SearchIndex
from univl_fast.search.engine import Engine
from univl_fast.types import IMAGE, TEXT

# Depth of the ranking handed to the metrics (Recall@100 needs 100).
RUN_DEPTH = 100


def _progress(iterable, total: int, desc: str):
    return tqdm(
        iterable, total=total, desc=desc, unit="batch", file=sys.stderr, disable=None, leave=False
    )


def encode_queries(engine: SearchEngine, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """texts -> (n, d) float32 unit rows, in batches with a progress bar."""
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    out = np.zeros((len(texts), engine.dim), np.float32)
    row = 0
    for chunk in _progress(chunks, len(chunks), "encode queries"):
        vecs = engine.encode_queries(chunk)
        out[row : row + len(chunk)] = vecs
        row += len(chunk)
    return out


def search_run(
    index: SearchIndex,
    qids: list[str],
    vectors: np.ndarray,
    modality: str | None = None,
    depth: int = RUN_DEPTH,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Search (n, d) float32 query vectors -> pytrec_eval run {qid: {doc_id: score}}."""
    run: dict[str, dict[str, float]] = {}
    starts = list(range(0, len(qids), batch_size))
    for s in _progress(starts, len(starts), f"search {modality or 'joint'}"):
        hits = index.search(
            np.ascontiguousarray(vectors[s : s + batch_size]), depth, modality=modality
        )
        for qid, row in zip(qids[s : s + batch_size], hits, strict=True):
            run[qid] = {h.doc_id: float(h.score) for h in row}
    return run


def evaluate_engine(
    engine: Engine,
    queries: list[Any],
    qrels: dict[str, dict[str, int]],
    by_modality: bool = False,
    batch_size: int = 64,
    depth: int = RUN_DEPTH,
    per_query: bool = False,
) -> dict[str, Any]:
    """Metrics of ``engine`` (with its index) on ``queries`` (``data.Query`` list) against
    ``qrels``, the same way ``univl_fast.evaluation.evaluate_embeddings`` scores exact search.

    Returns the eval JSON dict (``univl_fast.evaluation.metrics.KEYS``); with by_modality also the blocks
    ``text`` (text-answerable queries, text docs only), ``image`` (image-answerable queries,
    images only) and ``multi`` (all queries, joint index = the top-level numbers). A query's
    modality is that of its positives (``evaluation.query_modalities``). ``per_query``: each
    block also holds ``per_query`` ({qid: {metric: value}}).
    """
    index = engine.index
    if index is None:
        raise RuntimeError("evaluate_engine: the engine has no index loaded")
    mod_map = dict(zip(index.doc_ids, index.modalities, strict=True))
    queries = [q for q in queries if q.qid in qrels]
    qids = [q.qid for q in queries]
    vectors = encode_queries(engine, [q.text for q in queries], batch_size)
    joint = search_run(index, qids, vectors, depth=depth)
    result: dict[str, Any] = dict(evaluate(joint, qrels, mod_map, per_query=per_query))
    if by_modality:
        result["multi"] = {k: result[k] for k in (*KEYS, "per_query") if k in result}
        qmod = query_modalities(qrels, mod_map)
        for modality in (TEXT, IMAGE):
            sub_qrels = {q: r for q, r in qrels.items() if qmod[q] == modality}
            picked = [i for i, q in enumerate(qids) if q in sub_qrels]
            if not sub_qrels:
                result[modality] = dict.fromkeys(KEYS, 0.0)
                continue
            run = search_run(
                index, [qids[i] for i in picked], vectors[picked], modality=modality, depth=depth
            )
            result[modality] = dict(evaluate(run, sub_qrels, mod_map, per_query=per_query))
    return result
