"""Scale-out on a real local Ray runtime (one ``ray.init(num_cpus=2)`` for the module):
distributed encoding equals single-process encoding, faults (an encoder actor killed, the
driver killed) lose and duplicate nothing, the Ray-built index equals the single one, and
Ray-hosted shards answer like local shards, with a clear error or a ``partial`` answer when
one does not answer in time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'univl-fast[ray]')")

from univl_fast.index import load_index  # noqa: E402
from univl_fast.index.corpus import encode_corpus  # noqa: E402
from univl_fast.scale.errors import ShardTimeoutError  # noqa: E402
from univl_fast.scale.ray_encode import encode_corpus_ray  # noqa: E402

SHARD = 64  # 250 texts + 150 images -> 4 text shards + 3 image shards


@pytest.fixture(scope="module")
def ray_local():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def encoder(tiny_engine):
    from univl_fast.runtime import Encoder

    return Encoder(tiny_engine, precision="fp32")


@pytest.fixture(scope="module")
def single(encoder, dataset_with_bad_image, tmp_path_factory):
    ds, _ = dataset_with_bad_image
    work = tmp_path_factory.mktemp("single") / "work"
    return encode_corpus(encoder, ds, work, shard_size=SHARD, progress=False), work


def assert_same_corpus(got, want):
    assert got.doc_ids == want.doc_ids
    assert got.modalities == want.modalities
    assert got.report.bad == want.report.bad
    assert got.report.counts == want.report.counts
    cos = np.einsum("ij,ij->i", got.vectors, want.vectors)
    assert cos.shape == (len(want.doc_ids),) and float(cos.min()) >= 0.99999


def shard_fingerprints(work: Path) -> dict[str, str]:
    out = {}
    for p in sorted(work.glob("*.npz")):
        with np.load(p) as z:
            out[p.name] = str(z["fingerprint"])
    return out


def test_ray_encoding_equals_single_process(
    ray_local, encoder, dataset_with_bad_image, single, tmp_path
):
    ds, bad_id = dataset_with_bad_image
    want, want_work = single
    rows: list[dict] = []
    got = encode_corpus_ray(
        encoder,
        ds,
        tmp_path / "work",
        shard_size=SHARD,
        actors=2,
        cpus_per_actor=1,
        progress=False,
        on_shard=rows.append,
    )
    assert_same_corpus(got, want)
    assert [b[0] for b in got.report.bad] == [bad_id]  # reported, skipped, counted
    assert got.report.counts["image"] == len(ds.image_docs()) - 1
    # the same shard files, fingerprints and meta.json as the single-machine run
    assert shard_fingerprints(tmp_path / "work") == shard_fingerprints(want_work)
    assert json.loads((tmp_path / "work/meta.json").read_text()) == json.loads(
        (want_work / "meta.json").read_text()
    )
    assert sorted(r["name"] for r in rows) == sorted(got.report.shards_computed)
    assert len({r["pid"] for r in rows}) == 2  # both actors worked
    # a re-run with more actors reuses every finished shard
    again = encode_corpus_ray(
        encoder, ds, tmp_path / "work", shard_size=SHARD, actors=1, progress=False
    )
    assert again.report.shards_computed == [] and len(again.report.shards_reused) == 7
    assert_same_corpus(again, want)


def test_encoder_actor_killed_mid_run(ray_local, encoder, dataset_with_bad_image, single, tmp_path):
    ds, _ = dataset_with_bad_image
    want, _ = single
    killed: list[int] = []
    rows: list[dict] = []

    def kill_first(row: dict) -> None:
        rows.append(row)
        if not killed:  # the actor that finished the first shard dies with work still queued
            killed.append(int(row["pid"]))
            os.kill(int(row["pid"]), signal.SIGKILL)

    got = encode_corpus_ray(
        encoder,
        ds,
        tmp_path / "work",
        shard_size=16,  # 26 shards: plenty of work left when the actor dies
        actors=2,
        progress=False,
        on_shard=kill_first,
    )
    assert killed and len(rows) == 26  # the job went on past the kill, each shard once
    assert_same_corpus(got, want)  # every document exactly once, in order
    assert len(set(got.doc_ids)) == len(got.doc_ids)


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import ray
    from univl_fast.data import DatasetDir
    from univl_fast.runtime import Encoder
    from univl_fast.scale.ray_encode import encode_corpus_ray

    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    seen = []

    def die_after_two(row):
        seen.append(row["name"])
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies mid-run

    encode_corpus_ray(
        Encoder(sys.argv[2], precision="fp32"), DatasetDir(sys.argv[3]), sys.argv[4],
        shard_size=int(sys.argv[5]), actors=1, progress=False, on_shard=die_after_two,
    )
    """
)


def test_driver_killed_then_resumed(ray_local, encoder, dataset_with_bad_image, single, tmp_path):
    ds, _ = dataset_with_bad_image
    want, _ = single
    work = tmp_path / "work"
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            address,
            str(encoder.engine_dir),
            str(ds.path),
            str(work),
            str(SHARD),
        ],
        timeout=240,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    finished = sorted(p.stem for p in work.glob("*.npz"))
    assert len(finished) >= 2
    got = encode_corpus_ray(encoder, ds, work, shard_size=SHARD, actors=2, progress=False)
    assert set(finished) <= set(got.report.shards_reused)
    assert got.report.shards_computed  # the killed run had not finished: the re-run did
    assert len(got.report.shards_reused) + len(got.report.shards_computed) == 7
    assert_same_corpus(got, want)


def test_index_cli_on_ray(ray_local, encoder, dataset_with_bad_image, tmp_path, capsys):
    """`univl-fast index --ray`: merged index equals the single-process one; --shards 2 gives
    a sharded dir that univl_fast.load serves with the same hits."""
    import univl_fast
    from univl_fast.cli import main

    ds, bad_id = dataset_with_bad_image
    common = [
        "index",
        "--engine",
        str(encoder.engine_dir),
        "--data",
        str(ds.path),
        "--precision",
        "fp32",
        "--shard-size",
        str(SHARD),
        "--quiet",
    ]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "merged"), "--ray", "--actors", "2"]) == 0
    err = capsys.readouterr().err
    assert "1 bad document(s) skipped" in err and bad_id in err
    assert main([*common, "--out", str(tmp_path / "sharded"), "--ray", "--shards", "2"]) == 0
    one = load_index(tmp_path / "one", engine_sha256=encoder.manifest_sha256)
    merged = load_index(tmp_path / "merged", engine_sha256=encoder.manifest_sha256)
    assert merged.manifest["merged_from_shards"] == 2
    assert merged.manifest["corpus"]["bad_documents"] == 1
    assert merged.doc_ids == one.doc_ids
    q = encoder.encode_queries([x.text for x in ds.queries("test")[:8]])
    for modality in (None, "image"):
        s1, r1 = one.search_arrays(q, 10, modality=modality)
        s2, r2 = merged.search_arrays(q, 10, modality=modality)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_allclose(s1, s2, atol=1e-5)
    texts = [x.text for x in ds.queries("test")[:5]]
    with (
        univl_fast.load(encoder.engine_dir, index=tmp_path / "one", precision="fp32") as e1,
        univl_fast.load(encoder.engine_dir, index=tmp_path / "sharded", precision="fp32") as e2,
    ):
        assert type(e2.index).__name__ == "ShardedIndex" and len(e2.index.shards) == 2
        assert [[h.doc_id for h in r] for r in e1.search(texts, 10)] == [
            [h.doc_id for h in r] for r in e2.search(texts, 10)
        ]


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    from univl_fast.index.build import build_sharded_index

    rng = np.random.default_rng(3)
    n, d = 2000, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = tmp_path_factory.mktemp("rayshards") / "idx"
    build_sharded_index(
        x,
        [f"v{i}" for i in range(n)],
        ["text" if i % 2 else "image" for i in range(n)],
        out,
        3,
        factory="IVF16,Flat",
        progress=False,
    )
    q = rng.normal(size=(20, d)).astype(np.float32)
    return out, q / np.linalg.norm(q, axis=1, keepdims=True)


def test_ray_hosted_shards(ray_local, sharded_dir):
    from univl_fast.index import SearchParams
    from univl_fast.scale.ray_shards import RayShardedIndex

    out, q = sharded_dir
    local = load_index(out)
    hosted = RayShardedIndex(out, timeout_s=30, cpus_per_shard=0.5)
    try:
        for params in (SearchParams(nprobe=1), SearchParams(nprobe=4)):
            for modality in (None, "text"):
                s1, r1 = local.search_arrays(q, 10, params, modality)
                s2, r2 = hosted.search_arrays(q, 10, params, modality)
                np.testing.assert_array_equal(r1, r2)
                np.testing.assert_allclose(s1, s2, atol=1e-6)
        # a shard that does not answer in time: a clear error, or a flagged partial answer
        hosted.timeout_s = 1.0
        busy = hosted.actors[1].hold.remote(4.0)
        with pytest.raises(ShardTimeoutError, match="shard-00001: no answer within 1 s"):
            hosted.search_arrays(q, 10)
        ray.get(busy)
        busy = hosted.actors[1].hold.remote(4.0)
        scores, rows, missing = hosted.search_partial(q, 10)
        assert missing == ["shard-00001: no answer within 1 s"]
        lo, hi = local.manifest["shards"][1]["rows"]
        assert not ((rows >= lo) & (rows < hi)).any() and (rows >= 0).all()
        ray.get(busy)
    finally:
        hosted.close()


def test_corrupt_image_among_thousands(ray_local, encoder, synth_tiny, tmp_path):
    """2,000 images (the tiny set's 150 repeated under new ids), one corrupt in the middle:
    reported once with its reason, skipped, counted; every other image encoded once, in order."""
    from univl_fast.data import DatasetDir
    from univl_fast.data.images import write_lineidx

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(synth_tiny / "all_docs.json", root / "all_docs.json")
    lines = (synth_tiny / "imgs.tsv").read_bytes().splitlines()
    payloads = [ln.split(b"\t", 1)[1] for ln in lines if ln]
    caps = [json.loads(ln)["caption"] for ln in (synth_tiny / "all_imgs.json").open()]
    n, bad_at = 2000, 1234
    ids = [f"img{j:05d}" for j in range(n)]
    with open(root / "imgs.tsv", "wb") as tsv, open(root / "all_imgs.json", "w") as cap:
        for j, image_id in enumerate(ids):
            payload = payloads[j % 150]
            if j == bad_at:
                payload = b"AAAAAAAA" + payload[8:]  # valid base64, not an image
            tsv.write(image_id.encode() + b"\t" + payload + b"\n")
            cap.write(json.dumps({"image_id": image_id, "caption": caps[j % 150]}) + "\n")
    write_lineidx(root / "imgs.tsv")
    ds = DatasetDir(root)
    got = encode_corpus_ray(encoder, ds, tmp_path / "work", shard_size=256, progress=False)
    assert [b[0] for b in got.report.bad] == [ids[bad_at]]
    assert "image" in got.report.bad[0][1].lower() or "decode" in got.report.bad[0][1].lower()
    assert got.report.counts == {"text": 250, "image": n - 1}
    images = [i for i, m in zip(got.doc_ids, got.modalities, strict=True) if m == "image"]
    assert images == [i for i in ids if i != ids[bad_at]]
    # the same image bytes under another id give the same vector (the caption too)
    row = {d: r for r, d in enumerate(got.doc_ids)}
    np.testing.assert_allclose(
        got.vectors[row["img00007"]], got.vectors[row["img00157"]], atol=1e-5
    )
