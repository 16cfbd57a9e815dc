"""The budget builder on a corpus harder than the benchmark's (issue 21): heavy-tailed
near-duplicates (``synth_corpus.NearDuplicates``), on which 4-bit fast-scan PQ cannot rank
the true neighbours. The builder must find an approximate index there (never exact Flat by
surprise above ``flat_max_vectors``), abandon candidates that cannot reach the target at
once, grow the re-ranking pool while recall rises, and fail loudly naming what would reach
the target. Small corpora, real faiss."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tests.generators.synth_corpus import NearDuplicates
from univl_fast.index import IndexConfig, build_index
from univl_fast.index.params import RecallTargetUnreachable, SearchParams
from univl_fast.index.tune import K_FACTORS, exact_search, tie_aware_recall, tune

N, D, TARGET = 16_000, 64, 0.95
# the whole default candidate list is measured on a smaller corpus, with cheaper OPQ / 8-bit
# PQ training and fewer tune queries than the defaults, so that the test takes seconds
SMALL_N, SMALL_D = 6_000, 32
CHEAP = dict(
    opq_iterations=2,
    opq_train_points=2048,
    pq_kmeans_iterations=4,
    pq_points_per_centroid=39,
    max_tune_queries=250,
)


@pytest.fixture(scope="module")
def hard():
    g = NearDuplicates(D, topics=256)
    rng = np.random.default_rng(0)
    return g.docs(N, rng), g.queries(500, rng)


@pytest.fixture(scope="module")
def small_hard():
    g = NearDuplicates(SMALL_D, topics=128)
    rng = np.random.default_rng(1)
    return g.docs(SMALL_N, rng), g.queries(300, rng)


def _build(hard, **cfg_kw):
    v, q = hard
    n, d = v.shape
    kw = {k: cfg_kw.pop(k) for k in ("max_memory", "allow_below_target") if k in cfg_kw}
    # flat_max_vectors below n: the builder is in its large-corpus regime at a test's size
    cfg = IndexConfig(factory="", dim=d, flat_max_vectors=n // 2, **cfg_kw)
    return build_index(
        v,
        [str(i) for i in range(n)],
        np.zeros(n, np.uint8),
        tune_queries=q,
        target_recall=TARGET,
        config=cfg,
        progress=False,
        **kw,
    )


def _ivf(v: np.ndarray, factory: str) -> faiss.Index:
    index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(v)
    index.add(v)
    return index


def _run(index):
    def run(q, k, p: SearchParams):
        ivf = faiss.SearchParametersIVF(nprobe=p.nprobe or 1)
        if p.k_factor is None:
            return index.search(q, k, params=ivf)
        ref = faiss.IndexRefineSearchParameters(k_factor=p.k_factor, base_index_params=ivf)
        return index.search(q, k, params=ref)

    return run


def test_hard_corpus_gets_an_approximate_index_not_flat(small_hard):
    v, q = small_hard
    idx = _build(small_hard, **CHEAP)
    man = idx.manifest
    sel = man["selection"]
    rows = {r["factory"]: r for r in sel["frontier"]}
    assert man["factory"] != "Flat", sel["why"]
    assert rows["Flat"].get("reference_only") is True, "Flat measured as the reference only"
    # the corpus is hard: 4-bit PQ at d/16 bytes alone cannot reach the target with every
    # list probed, and that ceiling is what the manifest reports as the difficulty
    fs = next(r for f, r in rows.items() if f.endswith("x4fs"))
    assert fs["ceiling_recall_at_k"] < TARGET, fs
    assert sel["difficulty"]["ivf-fastscan"] >= fs["ceiling_recall_at_k"]
    # the chosen index meets the target on the tune split at full size; its held-out recall
    # is the recall of the built index on queries it was not tuned on
    assert man["tuning"]["target_met"] and man["tuning"]["recall_at_k"] >= TARGET
    from univl_fast.index.build import split_queries

    _, held = split_queries(v, q, IndexConfig(factory="", dim=SMALL_D, **CHEAP))
    _, got = idx.search_arrays(held, 10)
    ex, _ = exact_search(v, held, 10)
    assert man["tuning"]["held_out_recall_at_k"] == pytest.approx(
        tie_aware_recall(v, held, got, ex, 10)
    )
    # no family was dropped by a row count: every candidate was measured (or abandoned
    # with its measured estimate), none merely listed as skipped
    assert not [r for r in sel["frontier"] if "skipped" in r], sel["frontier"]


POOL = ["IVF32,PQ4x4fs", "IVF32,PQ4x4fs,Refine(SQfp16)", "IVF64,SQ8,Refine(SQfp16)", "IVF64,Flat"]


def test_impossible_memory_budget_raises_naming_the_cheapest(small_hard):
    with pytest.raises(RecallTargetUnreachable) as err:
        _build(small_hard, max_memory=50_000, candidates=POOL)  # less than any index's codes
    e = err.value
    reaching = [r for r in e.frontier if r["target_met"] and not r.get("reference_only")]
    cheapest = min(reaching, key=lambda r: r["bytes"])
    assert e.cheapest["factory"] == cheapest["factory"] != "Flat"
    msg = str(e)
    assert f"cheapest configuration reaching it is {cheapest['factory']}" in msg, msg
    assert f"{cheapest['bytes']:,} bytes" in msg and "estimated build" in msg, msg
    assert "recall with every list probed, per family" in msg and e.difficulty, msg
    # what `univl-fast index` prints: the frontier (every candidate), difficulty, next steps
    from univl_fast.cli.index import unreachable_report

    report = unreachable_report(e)
    assert all(f in report for f in POOL), report
    assert "corpus difficulty" in report and "--allow-below-target" in report, report
    # opt-in below the target: still an error when no index fits the budget at all
    with pytest.raises(RecallTargetUnreachable):
        _build(small_hard, max_memory=50_000, allow_below_target=True, candidates=POOL)


def test_only_exact_reaches_the_target_raises_naming_flat(small_hard, caplog):
    """Approximate candidates that cannot reach the target: above flat_max_vectors the
    builder raises (naming exact Flat and the difficulty) instead of building Flat; with
    allow_below_target it keeps the best approximate one and says so loudly."""
    v, q = small_hard
    pool = ["IVF32,PQ4x4fs", "IVF32,SQ4", "Flat"]
    # the caller listing Flat asks for it: it is then a candidate like any other
    idx = _build(small_hard, candidates=pool)
    assert idx.manifest["factory"] == "Flat"
    from univl_fast.index import select as select_mod
    from univl_fast.index.candidates import Candidate

    sub = IndexConfig(factory="", dim=SMALL_D, flat_max_vectors=SMALL_N // 2)
    sub.target_recall = TARGET
    approx = [Candidate("ivf-fastscan", pool[0]), Candidate("ivf-sq", pool[1])]
    with pytest.raises(RecallTargetUnreachable) as err:
        select_mod.select(v, q, sub, v, [*approx, Candidate("flat", "Flat")])
    msg = str(err.value)
    assert "no approximate candidate measured reaches it" in msg, msg
    assert "exact Flat does" in msg and "factory='Flat'" in msg, msg
    assert set(err.value.difficulty) == {"ivf-fastscan", "ivf-sq"}
    assert all(r < TARGET for r in err.value.difficulty.values())
    sub.allow_below_target = True
    with caplog.at_level("WARNING", logger="univl_fast.index.select"):
        sel = select_mod.select(v, q, sub, v, [*approx, Candidate("flat", "Flat")])
    assert sel.ranked[0].candidate.factory in pool[:2]
    assert sel.reason.startswith("BELOW TARGET") and "allow_below_target" in caplog.text


def test_unreachable_candidate_is_abandoned_at_once(hard):
    """A candidate whose recall with every list probed is below the target is tuned with
    one search, not walked through the whole nprobe grid."""
    v, q = hard
    index = _ivf(v, "IVF64,PQ8x4fs")
    r = tune(_run(index), v, q, 10, TARGET, 64, False, 4, 0)
    assert not r.target_met and len(r.trials) == 1, r.trials
    assert r.trials[0]["nprobe"] == 64 and r.ceiling == r.recall < TARGET


def test_rerank_pool_grows_while_recall_rises(hard):
    """4-bit codes of near-duplicates need a pool deeper than K_FACTORS[-1] x k for a high
    target: the tuner doubles it while recall (every list probed) rises, and reaches the
    target there."""
    v, q = hard
    target = 0.995
    index = _ivf(v, "IVF64,PQ8x4fs,Refine(SQfp16)")
    deepest = faiss.IndexRefineSearchParameters(
        k_factor=K_FACTORS[-1], base_index_params=faiss.SearchParametersIVF(nprobe=64)
    )
    _, rows = index.search(q, 10, params=deepest)
    ex, _ = exact_search(v, q, 10)
    assert tie_aware_recall(v, q, rows, ex, 10) < target, "premise: the fixed pools fall short"
    r = tune(_run(index), v, q, 10, target, 64, True, 4, 2 * D)
    assert r.target_met and r.params.k_factor > K_FACTORS[-1], r.params
    assert r.recall >= target


def test_over_build_budget_is_abandoned_with_its_estimate(hard):
    with pytest.raises(RecallTargetUnreachable) as err:
        _build(hard, candidates=["IVF64,SQ8"], build_budget_s=1e-4)
    (row,) = err.value.frontier
    assert row["abandoned"].startswith("estimated build") and row["estimated_build_s"] > 0
    assert "over the build budget: IVF64,SQ8" in str(err.value)
    assert "search_params" in row and row["search_params"] is None, "abandoned: not tuned"


def test_ivfpq_trains_without_polysemous_codes():
    """faiss's index_factory enables polysemous training for ``IVF..,PQ{m}`` (a code
    re-ordering we never search with; most of an 8-bit PQ build's training time): the
    builder's training settings turn it off, for plain and OPQ-rotated IVF-PQ alike."""
    from univl_fast.index.steps import new_index, set_training_costs

    for factory in ("IVF16,PQ8,Refine(SQfp16)", "OPQ8,IVF16,PQ8"):
        index = new_index(factory, 32)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        assert ivf.do_polysemous_training, "premise: faiss's factory default"
        set_training_costs(index, IndexConfig(factory=factory, dim=32))
        assert not ivf.do_polysemous_training, factory
