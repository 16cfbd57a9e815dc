"""Shared pieces of the evaluation runners (torch-free): exact top-k search, the paper's
Text / Image / Multi settings, and paper-style tables.

The checkpoint path (``univl_fast.train.evaluate``) and the engine path
(``univl_fast.evaluation.engine``) both end here, so they report the same keys the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from univl_fast.evaluation.metrics import KEYS, evaluate, is_image_id
from univl_fast.types import IMAGE, TEXT

QUERY_BATCH = 4096  # queries per faiss call: bounds the (batch, k) result buffers


def _as_f32_2d(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def exact_topk(
    queries: np.ndarray,
    docs: np.ndarray,
    k: int,
    doc_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with ``faiss.IndexFlatIP``, batched over queries.

    queries: (n, d) float32; docs: (m, d) float32; doc_rows: optional int array of row numbers
    of ``docs`` to search (a subset, e.g. only the image rows). Returns ``(scores, rows)``:
    (n, k') float32 and (n, k') int64 with k' = min(k, number of searchable docs); rows are
    row numbers of ``docs`` (original numbering even with ``doc_rows``), best first.
    """
    import faiss

    q = _as_f32_2d(queries, "queries")
    d = _as_f32_2d(docs, "docs")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]} but docs have dim {d.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows_map = None
    if doc_rows is not None:
        rows_map = np.asarray(doc_rows, dtype=np.int64).ravel()
        if rows_map.size and (rows_map.min() < 0 or rows_map.max() >= d.shape[0]):
            raise ValueError(
                f"doc_rows must lie in [0, {d.shape[0]}), got min {rows_map.min()} "
                f"max {rows_map.max()}"
            )
        d = np.ascontiguousarray(d[rows_map])
    kk = min(k, d.shape[0])
    if kk == 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], kk), np.float32), np.zeros((q.shape[0], kk), np.int64)
    index = faiss.IndexFlatIP(d.shape[1])
    index.add(d)
    scores = np.empty((q.shape[0], kk), np.float32)
    rows = np.empty((q.shape[0], kk), np.int64)
    for s in range(0, q.shape[0], QUERY_BATCH):
        scores[s : s + QUERY_BATCH], rows[s : s + QUERY_BATCH] = index.search(
            q[s : s + QUERY_BATCH], kk
        )
    if rows_map is not None:
        rows = rows_map[rows]
    return scores, rows


def make_run(
    qids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray
) -> dict[str, dict[str, float]]:
    """pytrec_eval's run dict from exact_topk's (n, k) scores and rows."""
    ids = np.asarray(doc_ids, dtype=object)
    return {
        str(qid): dict(zip(ids[r].tolist(), s.astype(np.float64).tolist(), strict=True))
        for qid, s, r in zip(qids, scores, rows, strict=True)
    }


def query_modalities(
    qrels: Mapping[str, Mapping[str, int]], modalities: Mapping[str, str]
) -> dict[str, str]:
    """A query's modality = the modality of its positives: "text", "image", or "mixed" (both)
    / "unknown" (no positive in the corpus)."""
    out = {}
    for qid, rels in qrels.items():
        mods = {modalities.get(d) for d, r in rels.items() if r >= 1} - {None}
        out[qid] = mods.pop() if len(mods) == 1 else ("mixed" if mods else "unknown")
    return out


def evaluate_embeddings(
    query_vecs: np.ndarray,
    qids: Sequence[str],
    doc_vecs: np.ndarray,
    doc_ids: Sequence[str],
    doc_modalities: Sequence[str] | Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    k: int = 100,
    by_modality: bool = False,
    per_query: bool = False,
) -> dict:
    """Exact top-k over the corpus and the paper's metrics (``univl_fast.evaluation.metrics`` keys).

    query_vecs: (n, d) float32 unit rows, one per qid; doc_vecs: (m, d) float32 unit rows, one
    per doc id; doc_modalities: "text" | "image" per doc (aligned list, or {doc_id: modality}).
    Only queries in ``qrels`` count (as in the paper; absent ones score 0). With
    ``by_modality`` the result also has blocks ``text`` (text-answerable queries against the
    text docs only), ``image`` (image-answerable queries against the images only) and
    ``multi`` (all queries, joint corpus: the top-level numbers). With ``per_query`` every
    block also has ``per_query`` ({qid: {metric: value}}) and the result has ``routing``
    (``modality_routing``: where each query's nearest text and nearest image lie).
    """
    qids = [str(q) for q in qids]
    doc_ids = [str(d) for d in doc_ids]
    if len(qids) != len(query_vecs):
        raise ValueError(f"{len(qids)} qids but {len(query_vecs)} query vectors")
    if len(doc_ids) != len(doc_vecs):
        raise ValueError(f"{len(doc_ids)} doc ids but {len(doc_vecs)} doc vectors")
    if isinstance(doc_modalities, Mapping):
        # ids missing from the map: WebQA's convention (all-digit ids are images)
        mods = [doc_modalities.get(d) or (IMAGE if is_image_id(d) else TEXT) for d in doc_ids]
    else:
        mods = [str(m) for m in doc_modalities]
        if len(mods) != len(doc_ids):
            raise ValueError(f"{len(mods)} doc modalities but {len(doc_ids)} doc ids")
    mod_map = dict(zip(doc_ids, mods, strict=True))
    qv = _as_f32_2d(query_vecs, "query_vecs")
    dv = _as_f32_2d(doc_vecs, "doc_vecs")

    def block(rows_q: np.ndarray, doc_rows: np.ndarray | None, sub_qrels: Mapping) -> dict:
        q_ids = [qids[i] for i in rows_q]
        scores, rows = exact_topk(qv[rows_q], dv, k, doc_rows)
        run = make_run(q_ids, doc_ids, scores, rows)
        return evaluate(run, sub_qrels, mod_map, per_query=per_query)

    all_rows = np.array([i for i, q in enumerate(qids) if q in qrels], dtype=np.int64)
    result = block(all_rows, None, qrels)
    if by_modality:
        qmod = query_modalities(qrels, mod_map)
        mods_arr = np.asarray(mods)
        result["multi"] = {k_: result[k_] for k_ in (*KEYS, "per_query") if k_ in result}
        for m in (TEXT, IMAGE):
            sub = {q: r for q, r in qrels.items() if qmod[q] == m}
            rows_q = np.array([i for i, q in enumerate(qids) if q in sub], dtype=np.int64)
            doc_rows = np.flatnonzero(mods_arr == m)
            result[m] = block(rows_q, doc_rows, sub) if sub else dict.fromkeys(KEYS, 0.0)
    if per_query:
        result["routing"] = modality_routing(
            qv[all_rows],
            [qids[i] for i in all_rows],
            dv,
            mods,
            query_modalities(qrels, mod_map),
        )
    return result


def _num(x: float) -> float | None:
    """A float for JSON (NaN, e.g. no doc of a modality, becomes None)."""
    return None if np.isnan(x) else float(x)


def modality_routing(
    query_vecs: np.ndarray,
    qids: Sequence[str],
    doc_vecs: np.ndarray,
    doc_modalities: Sequence[str],
    query_modality: Mapping[str, str],
) -> dict:
    """Where queries land between the two modalities (the numbers behind the paper's Figure 4).

    For each query: the cosine (inner product of unit vectors) to its nearest text doc and to
    its nearest image doc. ``query_modality``: {qid: "text" | "image" | ...}, the modality of
    the query's answer (``query_modalities``). Returns ``mean_cos_nearest_text`` /
    ``mean_cos_nearest_image`` (over all queries), ``image_queries_nearest_image`` (share of
    image-answerable queries whose nearest doc overall is an image; None without such
    queries), ``text_queries_nearest_text`` (the same for text-answerable queries and texts),
    the query counts, and ``per_query`` ({qid: {"cos_text", "cos_image", "modality"}}).
    """
    qids = [str(q) for q in qids]
    mods = np.asarray([str(m) for m in doc_modalities])
    if len(mods) != len(doc_vecs):
        raise ValueError(f"{len(mods)} doc modalities but {len(doc_vecs)} doc vectors")
    if len(qids) != len(query_vecs):
        raise ValueError(f"{len(qids)} qids but {len(query_vecs)} query vectors")
    n = len(qids)
    cos = {}
    for m in (TEXT, IMAGE):
        rows = np.flatnonzero(mods == m)
        if rows.size == 0 or n == 0:
            cos[m] = np.full(n, np.nan)
            continue
        scores, _ = exact_topk(query_vecs, doc_vecs, 1, rows)
        cos[m] = scores[:, 0].astype(np.float64)
    qmod = [query_modality.get(q, "unknown") for q in qids]
    img_q = np.array([m == IMAGE for m in qmod], dtype=bool)
    txt_q = np.array([m == TEXT for m in qmod], dtype=bool)
    nearest_image = cos[IMAGE] > cos[TEXT]

    def share(mask: np.ndarray, hit: np.ndarray) -> float | None:
        return float(hit[mask].mean()) if mask.any() else None

    def mean(x: np.ndarray) -> float | None:
        return float(np.mean(x)) if n and not np.isnan(x).any() else None

    return {
        "mean_cos_nearest_text": mean(cos[TEXT]),
        "mean_cos_nearest_image": mean(cos[IMAGE]),
        "image_queries_nearest_image": share(img_q, nearest_image),
        "text_queries_nearest_text": share(txt_q, ~nearest_image),
        "image_queries": int(img_q.sum()),
        "text_queries": int(txt_q.sum()),
        "per_query": {
            q: {"cos_text": _num(cos[TEXT][i]), "cos_image": _num(cos[IMAGE][i]), "modality": m}
            for i, (q, m) in enumerate(zip(qids, qmod, strict=True))
        },
    }


DEFAULT_TABLE_KEYS = ("MRR@10", "NDCG@10", "MRR@20", "NDCG@20", "Recall@20", "Recall@100")
RESULT_TABLE_KEYS = (*DEFAULT_TABLE_KEYS, "image_share@10", "queries")


def format_table(
    rows: Mapping[str, Mapping], keys: Sequence[str] = DEFAULT_TABLE_KEYS, name: str = "model"
) -> str:
    """A markdown table like the paper's: one row per entry of ``rows`` ({label: metrics}),
    metric values x100 with 2 decimals (``queries`` as an integer; missing keys as "-")."""
    head = f"| {name} | " + " | ".join(keys) + " |"
    sep = "|---|" + "---|" * len(keys)
    lines = [head, sep]
    for label, metrics in rows.items():
        cells = []
        for k in keys:
            v = metrics.get(k)
            if v is None:
                cells.append("-")
            elif k == "queries":
                cells.append(str(int(v)))
            else:
                cells.append(f"{100.0 * float(v):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_result(result: Mapping, label: str) -> str:
    """One evaluation result (``univl-fast eval``'s JSON) as a table: its own row, plus one row
    per paper setting (text / image / multi) when it was computed ``--by-modality``."""
    rows = {label: result}
    rows.update({f"{label} [{m}]": result[m] for m in ("text", "image", "multi") if m in result})
    return format_table(rows, keys=RESULT_TABLE_KEYS, name="setting")
