"""univl_fast.evaluation.embeddings: exact top-k against numpy, the paper's three settings, tables."""

from __future__ import annotations

import numpy as np
import pytest

import univl_fast.evaluation.embeddings as ev
from univl_fast.evaluation.embeddings import (
    evaluate_embeddings,
    exact_topk,
    format_table,
    make_run,
    query_modalities,
)
from univl_fast.evaluation.metrics import KEYS, evaluate


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_topk(q, d, k):
    s = q.astype(np.float64) @ d.astype(np.float64).T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, axis=1), rows


@pytest.mark.parametrize("n, m, dim, k", [(1, 1, 1, 1), (37, 501, 59, 10), (5, 30, 97, 100)])
def test_exact_topk_matches_numpy(n, m, dim, k):
    rng = np.random.default_rng(n + m + dim)
    q, d = _unit(rng, n, dim), _unit(rng, m, dim)
    scores, rows = exact_topk(q, d, k)
    kk = min(k, m)
    assert scores.shape == rows.shape == (n, kk)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    ref_s, ref_rows = _numpy_topk(q, d, kk)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    # rows agree wherever scores are not (near-)tied
    same = rows == ref_rows
    assert same.mean() > 0.99
    np.testing.assert_allclose(np.take_along_axis(q @ d.T, rows, axis=1), scores, atol=1e-5)


def test_exact_topk_subset_returns_original_rows():
    rng = np.random.default_rng(1)
    q, d = _unit(rng, 20, 16), _unit(rng, 200, 16)
    subset = np.arange(3, 200, 7)
    scores, rows = exact_topk(q, d, 5, doc_rows=subset)
    assert np.isin(rows, subset).all()
    ref_s, ref_local = _numpy_topk(q, d[subset], 5)
    np.testing.assert_array_equal(rows, subset[ref_local])
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_exact_topk_batches_queries(monkeypatch):
    rng = np.random.default_rng(2)
    q, d = _unit(rng, 50, 8), _unit(rng, 40, 8)
    full = exact_topk(q, d, 7)
    monkeypatch.setattr(ev, "QUERY_BATCH", 6)
    batched = exact_topk(q, d, 7)
    np.testing.assert_array_equal(full[1], batched[1])


def test_exact_topk_bad_input():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="dim 8 but docs have dim 9"):
        exact_topk(_unit(rng, 2, 8), _unit(rng, 3, 9), 1)
    with pytest.raises(ValueError, match="2-D"):
        exact_topk(np.zeros(8, np.float32), _unit(rng, 3, 8), 1)
    with pytest.raises(ValueError, match="doc_rows"):
        exact_topk(_unit(rng, 2, 8), _unit(rng, 3, 8), 1, doc_rows=np.array([5]))
    s, r = exact_topk(np.zeros((0, 8), np.float32), _unit(rng, 3, 8), 2)
    assert s.shape == (0, 2)


def _corpus():
    """4 text docs, 4 image docs (ids as WebQA), and 4 queries with known answers."""
    rng = np.random.default_rng(4)
    doc_ids = ["t_0", "t_1", "t_2", "t_3", "10000000", "10000001", "10000002", "10000003"]
    mods = ["text"] * 4 + ["image"] * 4
    docs = _unit(rng, 8, 32)
    qids = ["qt0", "qt1", "qi0", "qi1", "q_extra"]
    queries = np.stack([docs[0], docs[1], docs[4], docs[5], docs[2]]).copy()
    # qi1 is closest to a text doc, then to its image: rank 2 jointly, rank 1 among images
    queries[3] = docs[5] + 1.2 * docs[3]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    qrels = {"qt0": {"t_0": 1}, "qt1": {"t_1": 1}, "qi0": {"10000000": 1}, "qi1": {"10000001": 1}}
    return queries, qids, docs, doc_ids, mods, qrels


def test_evaluate_embeddings_and_settings():
    queries, qids, docs, doc_ids, mods, qrels = _corpus()
    res = evaluate_embeddings(queries, qids, docs, doc_ids, mods, qrels, k=100, by_modality=True)
    assert res["queries"] == 4  # q_extra has no qrels: not counted
    assert res["MRR@10"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert res["multi"]["MRR@10"] == res["MRR@10"]
    assert res["image"]["MRR@10"] == pytest.approx(1.0) and res["image"]["queries"] == 2
    assert res["text"]["MRR@10"] == pytest.approx(1.0) and res["text"]["queries"] == 2
    assert res["image"]["image_share@10"] == 1.0 and res["text"]["image_share@10"] == 0.0
    # the same through a dict of modalities
    res2 = evaluate_embeddings(
        queries, qids, docs, doc_ids, dict(zip(doc_ids, mods, strict=True)), qrels
    )
    assert res2["MRR@10"] == res["MRR@10"] and "text" not in res2


def test_evaluate_embeddings_per_query_and_routing():
    queries, qids, docs, doc_ids, mods, qrels = _corpus()
    res = evaluate_embeddings(
        queries, qids, docs, doc_ids, mods, qrels, by_modality=True, per_query=True
    )
    per = res["per_query"]
    assert sorted(per) == sorted(qrels)  # q_extra has no qrels
    assert per["qi1"]["MRR@10"] == pytest.approx(0.5) and per["qt0"]["MRR@10"] == 1.0
    assert res["multi"]["per_query"] == per
    assert res["image"]["per_query"]["qi1"]["MRR@10"] == 1.0  # rank 1 among the images only
    assert sorted(res["text"]["per_query"]) == ["qt0", "qt1"]
    for block in (res, res["text"], res["image"]):
        for key in ("MRR@10", "NDCG@10", "Recall@20"):
            vals = [v[key] for v in block["per_query"].values()]
            assert np.mean(vals) == pytest.approx(block[key])
    r = res["routing"]
    sims = queries.astype(np.float64) @ docs.astype(np.float64).T
    for i, q in enumerate(qids[:4]):
        assert r["per_query"][q]["cos_text"] == pytest.approx(sims[i, :4].max(), abs=1e-5)
        assert r["per_query"][q]["cos_image"] == pytest.approx(sims[i, 4:].max(), abs=1e-5)
    assert r["mean_cos_nearest_text"] == pytest.approx(sims[:4, :4].max(axis=1).mean(), abs=1e-5)
    # qi1 is nearest to a text doc: half the image-answerable queries are routed to images
    assert r["image_queries_nearest_image"] == 0.5 and r["text_queries_nearest_text"] == 1.0
    assert (r["image_queries"], r["text_queries"]) == (2, 2)
    assert "routing" not in evaluate_embeddings(queries, qids, docs, doc_ids, mods, qrels)


def test_evaluate_embeddings_equals_metrics_on_numpy_run():
    rng = np.random.default_rng(5)
    docs = _unit(rng, 300, 24)
    doc_ids = [f"{10_000_000 + i}" if i % 3 == 0 else f"doc_{i}" for i in range(300)]
    mods = ["image" if i % 3 == 0 else "text" for i in range(300)]
    qv = _unit(rng, 40, 24)
    qids = [f"q{i}" for i in range(40)]
    qrels = {q: {doc_ids[j]: 1 for j in rng.choice(300, 2, replace=False)} for q in qids}
    res = evaluate_embeddings(qv, qids, docs, doc_ids, mods, qrels, k=100)
    s, r = _numpy_topk(qv, docs, 100)
    ref = evaluate(
        make_run(qids, doc_ids, s.astype(np.float32), r),
        qrels,
        dict(zip(doc_ids, mods, strict=True)),
    )
    for key in KEYS:
        assert res[key] == pytest.approx(ref[key], abs=1e-9), key


def test_query_modalities():
    mods = {"a": "text", "b": "image"}
    qm = query_modalities(
        {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"a": 1, "b": 1}, "q4": {"zz": 1}}, mods
    )
    assert qm == {"q1": "text", "q2": "image", "q3": "mixed", "q4": "unknown"}


def test_length_mismatch_is_named():
    queries, qids, docs, doc_ids, mods, qrels = _corpus()
    with pytest.raises(ValueError, match="qids but"):
        evaluate_embeddings(queries[:2], qids, docs, doc_ids, mods, qrels)
    with pytest.raises(ValueError, match="doc modalities"):
        evaluate_embeddings(queries, qids, docs, doc_ids, mods[:3], qrels)


def test_format_table():
    table = format_table(
        {"UniVL-DR": {"MRR@10": 0.624, "NDCG@10": 0.59321, "queries": 4966}},
        keys=("MRR@10", "NDCG@10", "Recall@20", "queries"),
    )
    lines = table.splitlines()
    assert lines[0] == "| model | MRR@10 | NDCG@10 | Recall@20 | queries |"
    assert lines[2] == "| UniVL-DR | 62.40 | 59.32 | - | 4966 |"
