"""univl_fast.evaluation.metrics against pytrec_eval (trec_eval) on random and corner-case runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import pytrec_eval

from univl_fast.evaluation.metrics import KEYS, evaluate, is_image_id, rank_docs

TOL = 1e-9


def _truncate(run: dict, k: int) -> dict:
    """Each query's top k in trec_eval's order (score desc, doc id desc)."""
    out = {}
    for qid, scores in run.items():
        top = rank_docs(scores, k)
        out[qid] = {d: scores[d] for d in top}
    return out


def reference(run: dict, qrels: dict) -> dict:
    """The same keys from pytrec_eval, averaged over all qrel queries (absent ones count 0)."""
    measures = {"ndcg_cut_10", "ndcg_cut_20", "recall_20", "recall_100"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    rr10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_truncate(run, 10))
    rr20 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_truncate(run, 20))
    n = len(qrels)

    def mean(res: dict, key: str) -> float:
        return sum(res.get(q, {}).get(key, 0.0) for q in qrels) / n

    return {
        "MRR@10": mean(rr10, "recip_rank"),
        "MRR@20": mean(rr20, "recip_rank"),
        "NDCG@10": mean(full, "ndcg_cut_10"),
        "NDCG@20": mean(full, "ndcg_cut_20"),
        "Recall@20": mean(full, "recall_20"),
        "Recall@100": mean(full, "recall_100"),
    }


def assert_matches(run: dict, qrels: dict) -> dict:
    ours = evaluate(run, qrels)
    ref = reference(run, qrels)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=TOL), key
    assert ours["queries"] == len(qrels)
    return ours


def random_case(
    seed: int, n_queries: int = 60, n_docs: int = 400, depth: int = 150, tie_scores: bool = False
) -> tuple[dict, dict]:
    rng = random.Random(seed)
    docs = [
        str(10_000_000 + i) if i % 2 else f"{rng.getrandbits(64):016x}_{i}" for i in range(n_docs)
    ]
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q:03d}"
        qrels[qid] = {d: 1 for d in rng.sample(docs, rng.randint(1, 4))}
        if rng.random() < 0.1:
            continue  # absent from the run
        ranked = rng.sample(docs, rng.randint(1, depth))
        if rng.random() < 0.5:  # make positives likely to be retrieved near the top
            for d in qrels[qid]:
                if rng.random() < 0.7 and d not in ranked:
                    ranked.insert(rng.randrange(min(len(ranked), 30) + 1), d)
        if tie_scores:
            run[qid] = {d: float(rng.randint(0, 5)) for d in ranked}
        else:
            run[qid] = {d: rng.uniform(-1, 1) for d in ranked}
    run["not_in_qrels"] = {docs[0]: 1.0}  # ignored
    return qrels, run


@pytest.mark.parametrize("seed", range(8))
def test_random_runs_match_pytrec_eval(seed):
    qrels, run = random_case(seed)
    ours = assert_matches(run, qrels)
    assert 0 < ours["MRR@10"] < 1 and 0 < ours["Recall@100"] < 1  # non-trivial case


@pytest.mark.parametrize("seed", range(4))
def test_heavy_ties_match_pytrec_eval(seed):
    qrels, run = random_case(100 + seed, tie_scores=True)
    assert_matches(run, qrels)


def test_tie_order_is_doc_id_descending():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.9}}
    assert rank_docs(run["q"]) == ["d", "c", "b", "a"]
    ours = assert_matches(run, qrels)
    assert ours["MRR@10"] == pytest.approx(1 / 4)


def test_several_positives_fractional_recall():
    qrels = {"q": {"a": 1, "b": 1, "c": 1, "d": 1}}
    run = {"q": {"a": 0.9, "x": 0.8, "c": 0.7}}
    ours = assert_matches(run, qrels)
    assert ours["Recall@20"] == pytest.approx(0.5)
    assert ours["MRR@10"] == pytest.approx(1.0)


def test_no_positive_retrieved_and_missing_queries_count_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"z": 1.0}}  # q2 retrieves nothing relevant, q3 absent
    ours = assert_matches(run, qrels)
    for key in KEYS[:6]:
        assert ours[key] == pytest.approx(1 / 3)


def test_positive_beyond_cutoffs():
    docs = {f"d{i:03d}": 1.0 - i / 1000 for i in range(150)}
    for rank, expect in ((5, (1 / 5, 1 / 5)), (15, (0, 1 / 15)), (50, (0, 0)), (120, (0, 0))):
        qrels = {"q": {f"d{rank - 1:03d}": 1}}
        ours = assert_matches({"q": docs}, qrels)
        assert (ours["MRR@10"], ours["MRR@20"]) == pytest.approx(expect)
        assert ours["Recall@100"] == (1.0 if rank <= 100 else 0.0)


def test_query_without_relevant_docs_counts_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    ours = assert_matches(run, qrels)
    assert ours["MRR@10"] == pytest.approx(0.5)


def test_graded_relevance_ndcg_matches():
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(80)]
    qrels = {f"q{i}": {d: rng.randint(0, 3) for d in rng.sample(docs, 6)} for i in range(30)}
    qrels = {q: r for q, r in qrels.items() if any(v > 0 for v in r.values())}
    run = {q: {d: rng.random() for d in rng.sample(docs, 50)} for q in qrels}
    assert_matches(run, qrels)


def test_empty_run_and_empty_qrels():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    ours = evaluate({}, qrels)
    assert all(ours[k] == 0.0 for k in KEYS[:7]) and ours["queries"] == 2
    assert evaluate({"q": {"a": 1.0}}, {})["queries"] == 0


def test_image_share_and_modalities():
    run = {
        "q1": {"12345678": 0.9, "abc_1": 0.8, "23456789": 0.7, "def_2": 0.6},
        "q2": {"abc_1": 0.5},
    }
    qrels = {"q1": {"abc_1": 1}, "q2": {"abc_1": 1}}
    ours = evaluate(run, qrels)
    assert ours["image_share@10"] == pytest.approx((2 / 4 + 0) / 2)
    mods = {"12345678": "text", "abc_1": "image", "23456789": "text", "def_2": "text"}
    assert evaluate(run, qrels, mods)["image_share@10"] == pytest.approx((1 / 4 + 1) / 2)
    many = {
        "q": {str(10_000_000 + i): 1.0 - i / 100 for i in range(5)}
        | {f"t_{i}": 0.5 - i / 100 for i in range(30)}
    }
    assert evaluate(many, {"q": {"t_0": 1}})["image_share@10"] == pytest.approx(0.5)
    assert is_image_id("30001234") and not is_image_id("ab12_3")


def test_values_are_fractions_and_per_query():
    qrels, run = random_case(3)
    ours = evaluate(run, qrels, per_query=True)
    for key in KEYS[:7]:
        assert 0.0 <= ours[key] <= 1.0
    per = ours["per_query"]
    assert set(per) == set(qrels)
    assert np.mean([v["MRR@10"] for v in per.values()]) == pytest.approx(ours["MRR@10"])


def test_nan_score_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"a": float("nan")}}, {"q": {"a": 1}})


def test_very_uneven_run_depths_match_pytrec_eval():
    """One long ranking among short ones takes the single-lexsort path; ties included."""
    rng = random.Random(11)
    docs = [f"d{i:05d}" for i in range(6000)]
    qrels = {f"q{i}": {d: 1 for d in rng.sample(docs[:200], 3)} for i in range(20)}
    run = {q: {d: float(rng.randint(0, 3)) for d in rng.sample(docs[:200], 3)} for q in qrels}
    run["q0"] = {d: float(rng.randint(0, 50)) for d in docs}
    assert_matches(run, qrels)
