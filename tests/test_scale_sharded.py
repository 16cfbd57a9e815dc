"""Sharded index (no Ray): train once, fill shards, search them together; merged and sharded
top-k equal the single index built from the same trained parameters."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from univl_fast.index import (
    EngineMismatchError,
    IndexConfig,
    IndexFormatError,
    SearchParams,
    load_index,
)
from univl_fast.index.build import build_index, build_sharded_index
from univl_fast.index.search import Index
from univl_fast.index.sharded import (
    ShardedIndex,
    coarse_assign,
    merge_candidates,
    shard_candidates,
)
from univl_fast.index.sharded_build import merge_sharded, row_ranges

N, D = 2400, 16
ENGINE = "e" * 64


def cheap(factory: str):
    """Few OPQ / PQ training iterations: equality does not need good codebooks. Tuning by the
    deterministic cost rule: two builds pick the same parameters only when the choice does
    not depend on timings (by latency it did not, under load: k_factor 32 vs 4)."""
    return IndexConfig(factory, D, opq_iterations=2, pq_kmeans_iterations=4, tune_by="cost")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(40, D))
    vecs = unit(centers[rng.integers(0, 40, N)] + 0.6 * rng.normal(size=(N, D)))
    ids = [f"d{i}" for i in range(N)]
    mods = ["text" if i % 3 else "image" for i in range(N)]
    queries = unit(centers[rng.integers(0, 40, 50)] + 0.6 * rng.normal(size=(50, D)))
    return vecs, ids, mods, queries


def single_from(sharded: ShardedIndex, vecs, ids, mods) -> Index:
    """The unsharded index: all rows added in order to the same trained index."""
    index = faiss.clone_index(sharded.trained)
    index.add(vecs)
    codes = sharded.modality_codes.copy()
    return Index(index, list(ids), codes, dict(sharded.manifest), device="cpu")


def assert_same_topk(a, b, q, k, params=None, modality=None):
    sa, ra = a.search_arrays(q, k, params=params, modality=modality)
    sb, rb = b.search_arrays(q, k, params=params, modality=modality)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "factory",
    ["OPQ8,IVF16,PQ8x6,Refine(SQfp16)", "IVF16,PQ8x6", "Flat"],
    ids=["opq-refine", "ivfpq", "flat"],
)
def test_sharded_and_merged_equal_single(corpus, tmp_path, factory):
    vecs, ids, mods, queries = corpus
    out = tmp_path / "sharded"
    sharded = build_sharded_index(
        vecs,
        ids,
        mods,
        out,
        3,
        factory=factory,
        tune_queries=queries,
        engine_sha256=ENGINE,
        progress=False,
        config=cheap(factory),
    )
    assert isinstance(sharded, ShardedIndex) and len(sharded.shards) == 3
    assert [s.ntotal for s in sharded.shards] == [800, 800, 800]
    single = single_from(sharded, vecs, ids, mods)
    loaded = load_index(out, engine_sha256=ENGINE)
    assert isinstance(loaded, ShardedIndex) and loaded.doc_ids == ids
    merged_dir = tmp_path / "merged"
    merge_sharded(loaded, merged_dir)
    merged = load_index(merged_dir, engine_sha256=ENGINE)
    assert isinstance(merged, Index) and merged.ntotal == N and merged.doc_ids == ids
    grid = [SearchParams()]
    if factory != "Flat":
        grid += [SearchParams(nprobe=1), SearchParams(nprobe=4), SearchParams(nprobe=16)]
    if "Refine" in factory:
        grid += [SearchParams(nprobe=2, k_factor=1), SearchParams(nprobe=8, k_factor=8)]
    for params in grid:
        for modality in (None, "text", "image"):
            assert_same_topk(single, loaded, queries, 10, params, modality)
            assert_same_topk(single, merged, queries, 10, params, modality)
    if factory != "OPQ8,IVF16,PQ8x6,Refine(SQfp16)":
        return
    # the remote-shard form (each shard scores its candidates exactly, as a Ray actor does)
    p = SearchParams(nprobe=4, k_factor=4).merged_over(loaded.default_params)
    coarse = coarse_assign(loaded.trained, queries, p.nprobe)
    found = [
        shard_candidates(sh, r, queries, 10, p, None, coarse, with_exact=True)
        for sh, r in zip(loaded.shards, loaded.row_starts, strict=True)
    ]
    assert all(c.exact is not None for c in found)
    s_remote, r_remote = merge_candidates(found, 10, 40)
    s_single, r_single = single.search_arrays(queries, 10, p)
    np.testing.assert_array_equal(r_remote, r_single)
    np.testing.assert_allclose(s_remote, s_single, atol=1e-5)
    # tuned once on the whole: the manifest's recall is the sharded search's, and the
    # single build at the same seed picks the same parameters
    one = build_index(
        vecs,
        ids,
        mods,
        factory=factory,
        tune_queries=queries,
        progress=False,
        config=cheap(factory),
    )
    assert loaded.manifest["search_params"] == one.manifest["search_params"]
    assert loaded.manifest["tuning"]["recall_at_k"] == pytest.approx(
        one.manifest["tuning"]["recall_at_k"], abs=1e-9
    )
    hits = loaded.search(queries[:2], 5, modality="image")
    assert all(h.modality == "image" for row in hits for h in row) and len(hits[0]) == 5


def test_sharded_dir_errors(corpus, tmp_path):
    vecs, ids, mods, queries = corpus
    out = tmp_path / "sharded"
    build_sharded_index(
        vecs[:600],
        ids[:600],
        mods[:600],
        out,
        2,
        factory="Flat",
        engine_sha256=ENGINE,
        progress=False,
    )
    with pytest.raises(EngineMismatchError, match=ENGINE):
        load_index(out, engine_sha256="0" * 64)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    with open(bad / "shard-00001" / "index.faiss", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff" * 8)
    with pytest.raises(IndexFormatError, match="shard-00001.*sha256"):
        load_index(bad)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][1]["rows"] = [301, 600]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(out / "shard-00001" / "index.faiss", bad / "shard-00001" / "index.faiss")
    with pytest.raises(IndexFormatError, match="starts at row 301"):
        load_index(bad)
    with pytest.raises(ValueError, match="cannot cut 3 vectors into 4 shards"):
        row_ranges(3, 4)


def test_sharded_serving_without_ray_or_torch(tiny_engine, tmp_path):
    """univl_fast.load serves a sharded dir with Ray and torch blocked from importing."""
    from tests.test_torch_free import run_blocked
    from univl_fast.runtime.manifest import load_manifest, manifest_sha256

    dim = int(load_manifest(tiny_engine)["embed_dim"])
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, dim)))
    out = tmp_path / "sharded"
    build_sharded_index(
        x,
        [f"s{i}" for i in range(300)],
        ["text"] * 300,
        out,
        2,
        factory="Flat",
        engine_sha256=manifest_sha256(tiny_engine),
        progress=False,
    )
    code = f"""
    import sys, importlib.abc

    class NoRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "ray":
                raise ImportError(f"blocked import of {{name}}")
            return None

    sys.meta_path.insert(0, NoRay())
    import univl_fast
    with univl_fast.load({str(tiny_engine)!r}, index={str(out)!r}, precision="fp32") as eng:
        hits = eng.search(["a red roof", "two dogs"], k=5)
        assert type(eng.index).__name__ == "ShardedIndex"
        assert [len(h) for h in hits] == [5, 5]
    bad = [m for m in sys.modules if m.split(".")[0] in ("ray", "torch", "open_clip")]
    assert not bad, bad
    print("OK", hits[0][0].doc_id)
    """
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK s" in proc.stdout
