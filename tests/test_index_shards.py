"""``build_index(..., shards=N)`` and ``univl-fast index --shards N``: the same choice of index
as the unsharded build (the budget-driven selection included), trained once, filled as
shards, tuned once, and the same top-10."""

from __future__ import annotations

import numpy as np
import pytest

from tests.generators.synth_corpus import Generator
from univl_fast.index import IndexConfig, build_index, load_index
from univl_fast.index.sharded import ShardedIndex

N, D = 12_000, 32
POOL = ["IVF64,PQ8x4fs,Refine(SQ8)", "IVF64,PQ8x4fs,RFlat", "Flat"]


@pytest.fixture(scope="module")
def corpus():
    g = Generator(D, seed=5, topics=128, sub=8)
    rng = np.random.default_rng(0)
    v = np.concatenate([g.docs(N // 2, "text", rng), g.docs(N - N // 2, "image", rng)])
    q = g.queries_near(v[rng.choice(N, 400, replace=False)], rng)
    mods = ["text"] * (N // 2) + ["image"] * (N - N // 2)
    return v, [f"d{i}" for i in range(N)], mods, q


def _build(corpus, **kw):
    v, ids, mods, q = corpus
    cfg = IndexConfig(factory="", dim=D, candidates=POOL, tune_by="cost")
    budget = N * D * 4 - 1  # Flat does not fit: chosen by the budget-driven selection
    return build_index(
        v, ids, mods, tune_queries=q, config=cfg, progress=False, max_memory=budget, **kw
    )


def test_sharded_build_goes_through_the_budget_selection(corpus, tmp_path):
    single = _build(corpus)
    sharded = _build(corpus, shards=2, out_dir=tmp_path / "sharded")
    assert isinstance(sharded, ShardedIndex) and len(sharded.shards) == 2
    sel = sharded.manifest["selection"]
    assert sel["chosen"]["factory"] == single.manifest["factory"] != "Flat"
    assert sharded.manifest["search_params"] == single.manifest["search_params"]
    assert sel["chosen"]["bytes"] == sharded.manifest["memory"]["serialized_bytes"]
    assert sel["chosen"]["bytes"] <= N * D * 4 - 1
    # no work dir of a candidate is left behind; the dir loads and answers as the single index
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [
        "manifest.json",
        "shard-00000",
        "shard-00001",
        "trained.faiss",
    ]
    loaded = load_index(tmp_path / "sharded")
    q = corpus[3][:60]
    for modality in (None, "image"):
        _, want = single.search_arrays(q, 10, modality=modality)
        _, got = loaded.search_arrays(q, 10, modality=modality)
        np.testing.assert_array_equal(got, want)


def test_sharded_build_needs_a_dir_and_a_shard_count(corpus):
    v, ids, mods, _ = corpus
    with pytest.raises(ValueError, match="out_dir"):
        build_index(v[:100], ids[:100], mods[:100], factory="Flat", shards=2, progress=False)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        build_index(v[:100], ids[:100], mods[:100], factory="Flat", shards=0, progress=False)


@pytest.fixture(scope="module")
def encoder(tiny_engine):
    from univl_fast.runtime import Encoder

    return Encoder(tiny_engine, precision="fp32")


def test_index_cli_shards_without_factory_gives_the_unsharded_top10(encoder, synth_tiny, tmp_path):
    from univl_fast.cli import main
    from univl_fast.data import DatasetDir

    common = ["index", "--engine", str(encoder.engine_dir), "--data", str(synth_tiny)]
    common += ["--precision", "fp32", "--quiet", "--max-memory", "1GB"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--shards", "2"]) == 0
    one, two = load_index(tmp_path / "one"), load_index(tmp_path / "two")
    assert isinstance(two, ShardedIndex) and len(two.shards) == 2
    assert two.manifest["factory"] == one.manifest["factory"]
    queries = [q.text for q in DatasetDir(synth_tiny).queries("test")]
    qv = encoder.encode_queries(queries)
    ids = [[h.doc_id for h in row] for row in one.search(qv, 10)]
    assert ids == [[h.doc_id for h in row] for row in two.search(qv, 10)]
    assert all(len(row) == 10 for row in ids)
