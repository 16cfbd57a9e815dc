"""Error bars and paired significance tests for retrieval runs (numpy only, torch-free).

- ``mean_sd(values)``: mean and sample standard deviation (ddof 1; None with one value).
- ``paired_randomization_test(a, b)``: two-sided paired randomization (sign-flip) test of
  ``mean(a - b) == 0`` over paired per-query values (e.g. MRR@10 of two models on the same
  test queries). Under the null hypothesis each query's difference is as likely to have either
  sign, so the statistic is compared with its distribution over random sign flips. The
  p-value counts the observed assignment, ``(1 + #{|T*| >= |T|}) / (1 + n_perm)``, so it is
  never 0 and a test on identical runs gives 1.
- ``paired_test_across_seeds(pairs)``: the same test combined over training seeds: each
  query's difference is averaged over the seeds where both models exist, then signs are
  flipped per query (the query stays the unit, since the same test queries recur in every
  seed; the seed-to-seed variation of each query's difference stays in its average).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from univl_fast.errors import UnivlFastError

DEFAULT_PERMUTATIONS = 10_000
_CHUNK = 1_000  # sign-flip rows per numpy block (bounds memory: chunk x queries)


class StatsInputError(UnivlFastError, ValueError):
    """Inputs of a significance test that do not pair up."""


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with ddof 1); sd is None for fewer than 2 values,
    both None for none."""
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return None, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def paired_differences(
    a: Mapping[str, float], b: Mapping[str, float], what: str = "runs"
) -> np.ndarray:
    """``a[q] - b[q]`` for every query q, in sorted qid order; the two maps must name the
    same queries (both runs are evaluated over the same qrels)."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise StatsInputError(
            f"{what}: the two runs cover different queries ({len(a)} vs {len(b)}; only in the "
            f"first e.g. {only_a}, only in the second e.g. {only_b})"
        )
    if not a:
        raise StatsInputError(f"{what}: no queries to compare")
    qids = sorted(a)
    return np.array([float(a[q]) - float(b[q]) for q in qids], dtype=np.float64)


def sign_flip_p_value(
    diffs: np.ndarray, n_perm: int = DEFAULT_PERMUTATIONS, seed: int = 0
) -> float:
    """Two-sided sign-flip randomization p-value for ``mean(diffs) == 0``."""
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size == 0:
        raise StatsInputError("sign-flip test: no differences")
    if not np.isfinite(d).all():
        raise StatsInputError("sign-flip test: the differences contain NaN or inf")
    if n_perm < 1:
        raise StatsInputError(f"sign-flip test: n_perm must be >= 1, got {n_perm}")
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # ties with the observed value count
    for start in range(0, n_perm, _CHUNK):
        n = min(_CHUNK, n_perm - start)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
        stats = np.abs(signs @ d) / d.size
        hits += int(np.count_nonzero(stats >= observed - tol))
    return (1 + hits) / (1 + n_perm)


def paired_randomization_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    n_perm: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> dict:
    """Paired sign-flip test of two runs' per-query values ({qid: value}, same queries).

    Returns ``{"diff": mean(a - b), "p_value", "queries", "wins", "losses"}`` (wins: queries
    where a is higher)."""
    d = paired_differences(a, b)
    return {
        "diff": float(d.mean()),
        "p_value": sign_flip_p_value(d, n_perm, seed),
        "queries": int(d.size),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
    }


def paired_test_across_seeds(
    pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
    n_perm: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> dict:
    """The paired test combined over seeds: ``pairs`` = one (a, b) per seed, each {qid: value}
    over the same queries. Each query's difference is averaged over the seeds, then the
    sign-flip test runs over the queries. Returns ``{"diff", "p_value", "queries", "seeds",
    "per_seed": [{"diff", "p_value", ...}, ...], "seeds_same_sign"}`` (seeds whose mean
    difference has the sign of the combined one)."""
    if not pairs:
        raise StatsInputError("paired test across seeds: no seed has both runs")
    diffs = [paired_differences(a, b, what=f"seed pair {i}") for i, (a, b) in enumerate(pairs)]
    qsets = [sorted(a) for a, _ in pairs]
    if any(q != qsets[0] for q in qsets[1:]):
        raise StatsInputError(
            "paired test across seeds: the seeds were evaluated on different queries"
        )
    per_seed = [
        {
            "diff": float(d.mean()),
            "p_value": sign_flip_p_value(d, n_perm, seed),
            "queries": int(d.size),
        }
        for d in diffs
    ]
    mean_d = np.mean(np.stack(diffs), axis=0)
    combined = float(mean_d.mean())
    sign = math.copysign(1.0, combined) if combined != 0 else 0.0
    return {
        "diff": combined,
        "p_value": sign_flip_p_value(mean_d, n_perm, seed),
        "queries": int(mean_d.size),
        "seeds": len(pairs),
        "per_seed": per_seed,
        "seeds_same_sign": sum(1 for s in per_seed if s["diff"] * sign > 0),
    }


__all__ = [
    "DEFAULT_PERMUTATIONS",
    "StatsInputError",
    "mean_sd",
    "paired_differences",
    "paired_randomization_test",
    "paired_test_across_seeds",
    "sign_flip_p_value",
]
