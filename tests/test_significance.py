"""univl_fast.evaluation.significance: error bars and the paired randomization test on constructed data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from univl_fast.errors import UnivlFastError
from univl_fast.evaluation.significance import (
    StatsInputError,
    mean_sd,
    paired_randomization_test,
    paired_test_across_seeds,
    sign_flip_p_value,
)


def _runs(values_a, values_b):
    qids = [f"q{i:03d}" for i in range(len(values_a))]
    return dict(zip(qids, map(float, values_a), strict=True)), dict(
        zip(qids, map(float, values_b), strict=True)
    )


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([0.5]) == (0.5, None)
    assert mean_sd([]) == (None, None)


@pytest.mark.parametrize("seed", [3, 11])
def test_sign_flip_matches_exact_enumeration(seed):
    """On 10 queries every one of the 1024 sign patterns can be enumerated: the randomization
    p-value must agree with the exact one."""
    d = np.random.default_rng(seed).normal(0.3, 1.0, size=10)
    signs = np.array(list(itertools.product((-1, 1), repeat=10)), dtype=np.float64)
    exact = float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))
    p = sign_flip_p_value(d, n_perm=20_000, seed=1)
    assert p == pytest.approx(exact, abs=0.012)


def test_clear_difference_is_significant_and_no_difference_is_not():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 300)
    a, b = _runs(base + 0.05 + rng.normal(0, 0.05, 300), base)
    res = paired_randomization_test(a, b, n_perm=2_000)
    assert res["p_value"] == pytest.approx(1 / 2_001)  # no flip reaches the observed mean
    assert res["diff"] == pytest.approx(0.05, abs=0.01) and res["queries"] == 300
    assert res["wins"] > 250
    # identical runs: every flip ties the observed 0 -> p = 1
    assert paired_randomization_test(a, a, n_perm=500)["p_value"] == 1.0
    # noise without an effect: the p-value is not small (this seed: about 0.6)
    c, d = _runs(base + rng.normal(0, 0.05, 300), base)
    assert paired_randomization_test(c, d, n_perm=2_000)["p_value"] > 0.2


def test_across_seeds_averages_each_query_over_seeds():
    rng = np.random.default_rng(5)
    base = rng.uniform(0, 1, 200)
    # seed 0: a is better by 0.04, seed 1: by 0.02 -> combined 0.03
    pairs = [_runs(base + delta + rng.normal(0, 0.01, 200), base) for delta in (0.04, 0.02)]
    res = paired_test_across_seeds(pairs, n_perm=1_000)
    assert res["seeds"] == 2 and res["queries"] == 200
    assert res["diff"] == pytest.approx(np.mean([s["diff"] for s in res["per_seed"]]))
    assert res["diff"] == pytest.approx(0.03, abs=0.004)
    assert res["seeds_same_sign"] == 2 and res["p_value"] < 0.01
    # opposite effects in the two seeds cancel: not significant, one seed of each sign
    flip = [_runs(base + 0.03, base), _runs(base - 0.03 + rng.normal(0, 1e-3, 200), base)]
    res2 = paired_test_across_seeds(flip, n_perm=1_000)
    assert abs(res2["diff"]) < 1e-3 and res2["p_value"] > 0.05
    assert res2["seeds_same_sign"] == 1


def test_bad_inputs_name_the_problem():
    a, b = _runs([0.1, 0.2], [0.3, 0.4])
    b.pop("q001")
    with pytest.raises(StatsInputError, match="different queries"):
        paired_randomization_test(a, b)
    with pytest.raises(UnivlFastError, match="no seed"):
        paired_test_across_seeds([])
    with pytest.raises(ValueError, match="NaN"):
        sign_flip_p_value(np.array([0.1, np.nan]))
    a2, b2 = _runs([0.1, 0.2], [0.3, 0.4])
    other = {"x": 0.1, "y": 0.2}
    with pytest.raises(StatsInputError, match="different queries"):
        paired_test_across_seeds([(a2, b2), (other, other)])
