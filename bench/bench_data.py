"""Data-layer benchmarks (issue 2): synthetic generation, image random access, metrics.

    .venv/bin/python -m pytest bench/bench_data.py -q -s -p no:cacheprovider \
        --benchmark-columns=min,median,mean,rounds

Each figure has its baseline measured in the same run:
  * ``synth medium``: 2 worker processes vs 1 (the baseline) drawing the pictures.
  * ``image random access``: ``ImageStore.load`` of random ids (pread + base64 + PNG decode)
    vs decoding the same PNG bytes already in memory (the decode-only floor).
  * ``metrics``: ``univl_fast.evaluation.metrics.evaluate`` vs pytrec_eval (recip_rank, ndcg_cut,
    recall) on 5,000 queries x 100 ranked docs, WebQA-like ids.
The paper-scale generation is timed separately with the CLI (see bench/results/synth.md);
``BENCH_DATA_DIR=<dataset dir>`` runs the image benchmarks on that dataset (e.g. paper scale)
and ``-k "not synth_medium"`` skips the generation benchmark.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from univl_fast.data import DatasetDir
from univl_fast.data.synth import generate
from univl_fast.evaluation.metrics import evaluate
from univl_fast.imageio import load_rgb


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    """BENCH_DATA_DIR (e.g. a paper-scale synth dir) if set, else a fresh ``small`` one."""
    if os.environ.get("BENCH_DATA_DIR"):
        return DatasetDir(os.environ["BENCH_DATA_DIR"])
    return DatasetDir(generate(tmp_path_factory.mktemp("b") / "small", "small", progress=False))


@pytest.mark.parametrize("workers", [1, 2])
def test_synth_medium(benchmark, tmp_path, workers):
    def run():
        out = tmp_path / f"medium{workers}"
        shutil.rmtree(out, ignore_errors=True)
        generate(out, scale="medium", seed=0, progress=False, workers=workers)

    benchmark.pedantic(run, rounds=2, iterations=1)


def test_image_random_access(benchmark, small_ds):
    store = small_ds.images
    ids = random.Random(0).sample(store.ids(), 500)
    benchmark(lambda: [store.load(i) for i in ids])


def test_image_decode_only_baseline(benchmark, small_ds):
    store = small_ds.images
    ids = random.Random(0).sample(store.ids(), 500)
    blobs = [store.read_bytes(i) for i in ids]
    benchmark(lambda: [load_rgb(b, item="x") for b in blobs])


def _metric_case(n_q: int = 5000, depth: int = 100):
    rng = random.Random(0)
    docs = [str(10_000_000 + i) for i in range(20_000)] + [
        f"{rng.getrandbits(128):032x}_{i % 9}" for i in range(40_000)
    ]
    qrels, run = {}, {}
    for _ in range(n_q):
        qid = f"{rng.getrandbits(128):032x}"
        ranked = rng.sample(docs, depth)
        qrels[qid] = {d: 1 for d in rng.sample(ranked[:30], rng.randint(1, 3))}
        run[qid] = {d: rng.random() for d in ranked}
    return run, qrels


@pytest.fixture(scope="module")
def metric_case():
    return _metric_case()


def test_metrics_ours(benchmark, metric_case):
    run, qrels = metric_case
    benchmark(lambda: evaluate(run, qrels))


def test_metrics_pytrec_eval_baseline(benchmark, metric_case):
    import pytrec_eval

    run, qrels = metric_case
    measures = {"recip_rank", "ndcg_cut_10", "ndcg_cut_20", "recall_20", "recall_100"}

    def ref():
        return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)

    benchmark(ref)


@pytest.mark.parametrize("workers", [1, 2])
def test_render_20k_pictures(benchmark, workers):
    """The parallel part alone: draw + PNG-encode + base64 20,000 pictures (as the paper-scale
    run does in its worker pool), in-process (1) vs a pool of 2 spawned processes (2)."""
    from univl_fast.data.synth import _render_lines, _renderer

    jobs = [(str(10_000_000 + i), "star", "red", 1 + i % 4, i % 4, i, 64) for i in range(20_000)]

    def run():
        with _renderer(jobs, workers) as chunks:
            return sum(len(lines) for lines in chunks)

    assert _render_lines(jobs[:1])
    assert benchmark.pedantic(run, rounds=2, iterations=1) == 20_000
