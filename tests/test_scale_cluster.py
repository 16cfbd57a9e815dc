"""Scale-out on a two-node Ray cluster simulated on this machine (``ray.cluster_utils``): the
encoder actors land on both nodes and the result equals single-process encoding; the index
shards are filled by Ray tasks and equal the shards filled in-process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'univl-fast[ray]')")

from ray.cluster_utils import Cluster  # noqa: E402

from univl_fast.index import load_index  # noqa: E402
from univl_fast.index.corpus import encode_corpus  # noqa: E402
from univl_fast.scale.ray_encode import encode_corpus_ray  # noqa: E402

# Small shards: many more shards than the pool needs to start its second actor, so both
# nodes get work even when actor start-up is slow on a loaded machine.
SHARD = 25


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024},
    )
    c.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        try:
            ray.shutdown()
        finally:
            c.shutdown()  # the nodes' processes, also when the driver's shutdown fails


def test_two_node_encoding_and_build(cluster, tiny_engine, synth_tiny_dataset, tmp_path):
    from univl_fast.index.build import build_sharded_index
    from univl_fast.runtime import Encoder
    from univl_fast.scale.ray_build import make_fill_ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    encoder = Encoder(tiny_engine, precision="fp32")
    ds = synth_tiny_dataset
    want = encode_corpus(encoder, ds, tmp_path / "single", shard_size=SHARD, progress=False)
    rows: list[dict] = []
    got = encode_corpus_ray(
        encoder,
        ds,
        tmp_path / "ray",
        shard_size=SHARD,
        actors=2,
        cpus_per_actor=1,
        progress=False,
        on_shard=rows.append,
    )
    assert len({r["node"] for r in rows}) == 2  # one actor per node, both did work
    assert got.doc_ids == want.doc_ids and got.modalities == want.modalities
    assert got.report.bad == want.report.bad == []
    assert float(np.einsum("ij,ij->i", got.vectors, want.vectors).min()) >= 0.99999

    args = dict(factory="Flat", progress=False, engine_sha256=encoder.manifest_sha256)
    on_ray = build_sharded_index(
        got.vectors,
        got.doc_ids,
        got.modalities,
        tmp_path / "idx_ray",
        2,
        fill=make_fill_ray(1),
        **args,
    )
    local = build_sharded_index(
        want.vectors, want.doc_ids, want.modalities, tmp_path / "idx_local", 2, **args
    )
    for a, b in zip(on_ray.manifest["shards"], local.manifest["shards"], strict=True):
        assert a["rows"] == b["rows"]
    q = encoder.encode_queries([x.text for x in ds.queries("test")[:6]])
    loaded = load_index(tmp_path / "idx_ray", engine_sha256=encoder.manifest_sha256)
    s1, r1 = loaded.search_arrays(q, 10)
    s2, r2 = local.search_arrays(q, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    shutil.rmtree(tmp_path / "ray")
