"""Resumable corpus encoding and ``univl-fast index`` on the tiny engine + tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest

from tests.host_routes import assert_int8_fallback, int8_route, native_image_written
from univl_fast.index import EngineMismatchError, load_index
from univl_fast.index.corpus import encode_corpus


class Interrupted(RuntimeError):
    pass


@pytest.fixture(scope="module")
def encoder(tiny_engine):
    from univl_fast.runtime import Encoder

    return Encoder(tiny_engine, precision="fp32")


def test_resume_after_interruption(encoder, dataset_with_bad_image, tmp_path):
    ds, bad_id = dataset_with_bad_image
    work = tmp_path / "work"
    seen: list[tuple[str, bool]] = []

    def stop_after_two(name: str, computed: bool) -> None:
        seen.append((name, computed))
        if len(seen) == 2:
            raise Interrupted(name)

    with pytest.raises(Interrupted):
        encode_corpus(encoder, ds, work, shard_size=64, progress=False, on_shard=stop_after_two)
    finished = sorted(p.name for p in work.glob("*.npz"))
    assert finished == ["text-00000.npz", "text-00001.npz"]

    second: list[tuple[str, bool]] = []
    resumed = encode_corpus(
        encoder,
        ds,
        work,
        shard_size=64,
        progress=False,
        on_shard=lambda n, c: second.append((n, c)),
    )
    assert second[:2] == [("text-00000", False), ("text-00001", False)]
    assert all(c for _, c in second[2:]) and len(second) > 3
    assert resumed.report.shards_reused == ["text-00000", "text-00001"]

    clean = encode_corpus(encoder, ds, tmp_path / "clean", shard_size=64, progress=False)
    assert resumed.doc_ids == clean.doc_ids
    assert resumed.modalities == clean.modalities
    np.testing.assert_allclose(resumed.vectors, clean.vectors, atol=1e-6)

    # the bad image is reported with a reason and skipped; every other document is there
    assert [b[0] for b in clean.report.bad] == [bad_id]
    assert bad_id not in clean.doc_ids
    n_text = len(ds.text_docs())
    n_img = len(ds.image_docs())
    assert clean.report.counts == {"text": n_text, "image": n_img - 1}
    assert clean.vectors.shape == (n_text + n_img - 1, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(clean.vectors, axis=1), 1.0, atol=1e-4)
    # the encoder's own vectors for a few text docs match the shards'
    docs = ds.text_docs()[:5]
    direct = encoder.encode_text_docs([d.text for d in docs])
    np.testing.assert_allclose(clean.vectors[:5], direct, atol=1e-5)

    # settings change (different captions) invalidates the work dir instead of mixing
    third: list[tuple[str, bool]] = []
    encode_corpus(
        encoder,
        ds,
        work,
        captions="exp",
        shard_size=64,
        progress=False,
        on_shard=lambda n, c: third.append((n, c)),
    )
    assert all(c for _, c in third)


def test_index_cli_end_to_end(encoder, dataset_with_bad_image, tmp_path, capsys):
    from univl_fast.cli import main

    ds, bad_id = dataset_with_bad_image
    out = tmp_path / "index"
    rc = main(
        [
            "index",
            "--engine",
            str(encoder.engine_dir),
            "--data",
            str(ds.path),
            "--out",
            str(out),
            "--precision",
            "fp32",
            "--shard-size",
            "100",
            "--quiet",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "1 bad document(s) skipped" in err and bad_id in err
    assert not (out / ".work").exists()
    idx = load_index(out, engine_sha256=encoder.manifest_sha256)
    assert idx.manifest["factory"] == "Flat"
    assert idx.manifest["corpus"]["bad_documents"] == 1
    assert idx.manifest["corpus"]["tune_queries"] == "dev+train queries"
    assert idx.ntotal == len(ds.text_docs()) + len(ds.image_docs()) - 1
    q = ds.queries("test")[0]
    qv = encoder.encode_queries([q.text])
    hits = idx.search(qv, 5)[0]
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    mods = ds.modalities()
    assert all(mods[h.doc_id] == h.modality for h in hits)
    with pytest.raises(EngineMismatchError, match=encoder.manifest_sha256):
        load_index(out, engine_sha256="0" * 64)


@pytest.mark.parametrize("runtime", ["native", "onnxruntime"])
def test_index_cli_runs_the_image_tower_asked_for(
    encoder, dataset_with_bad_image, tmp_path, capsys, runtime
):
    """--image-runtime reaches the encoder: the line after encoding names the tower that ran,
    and the index's image vectors are that tower's (not the other's)."""
    import faiss

    from univl_fast.cli import main
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.manifest import EngineError

    ds, bad_id = dataset_with_bad_image
    out = tmp_path / f"index_{runtime}"
    argv = ["index", "--engine", str(encoder.engine_dir), "--data", str(ds.path)]
    argv += ["--out", str(out), "--precision", "int8", "--image-runtime", runtime]
    argv += ["--batch-size", "64", "--quiet"]
    if not int8_route(encoder.engine_dir).verified:  # this host's int8 missed parity at export
        assert_int8_fallback(encoder.engine_dir)
        with pytest.raises(EngineError, match=r"no 'int8' graphs for both towers \(has fp32"):
            main(argv)
        assert not (out / "manifest.json").exists()
        return
    native = native_image_written(encoder.engine_dir)
    if runtime == "native" and not native.verified:
        with pytest.raises(EngineError, match="no native image tower"):
            main(argv)
        return
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"image tower {runtime})" in err, err
    idx = load_index(out, engine_sha256=encoder.manifest_sha256)
    flat = faiss.downcast_index(idx._cpu)
    # the index's first batch of image documents, encoded again the same way (ONNX Runtime's
    # int8 graph quantizes activations per tensor, so a vector depends on its batch-mates)
    docs = ds.image_docs()[:64]
    raw = [ds.images.read_bytes(d.doc_id) for d in docs]
    caps = [d.caption for d in docs]
    want = {}
    for rt in ("native", "onnxruntime") if native.verified else ("onnxruntime",):
        enc = Encoder(encoder.engine_dir, precision="int8", image_runtime=rt, batch_size=64)
        res = enc.encode_image_docs(raw, caps, on_error="skip")
        assert [docs[i].doc_id for i in res.indices.tolist()] == [
            d.doc_id for d in docs if d.doc_id != bad_id
        ]
        want[rt] = res.embeddings
    kept = [d.doc_id for d in docs if d.doc_id != bad_id]
    stored = np.stack([flat.reconstruct(idx.doc_ids.index(i)) for i in kept])
    other = "onnxruntime" if runtime == "native" else "native"
    assert np.abs(stored - want[runtime]).max() < 1e-5
    if other in want:
        assert np.abs(stored - want[other]).max() > 1e-4  # the two towers' int8 rounding differs


def test_work_dir_is_not_resumed_under_another_image_path(
    encoder, dataset_with_bad_image, tmp_path
):
    """The image tower and JPEG draft are part of the encoding a work dir is resumed under:
    shards encoded one way are not mixed with shards encoded another way."""
    from univl_fast.runtime import Encoder

    ds, _ = dataset_with_bad_image
    work = tmp_path / "work"

    def run(enc) -> list[bool]:
        computed: list[bool] = []
        encode_corpus(
            enc, ds, work, shard_size=64, progress=False, on_shard=lambda n, c: computed.append(c)
        )
        return computed

    engine = encoder.engine_dir
    int8 = int8_route(engine)
    if not int8.verified:  # this host's int8 missed parity at export: fp32 serves
        assert_int8_fallback(engine)
    precision = "int8" if int8.verified else "fp32"
    if int8.verified and native_image_written(engine).verified:
        native = Encoder(engine, precision="int8", image_runtime="native")
        assert all(run(native))
        assert not any(run(native))  # same settings: every shard reused
    ort = Encoder(engine, precision=precision, image_runtime="onnxruntime")
    assert all(run(ort))  # another image tower (or the first run): nothing reused
    assert not any(run(ort))
    draft = Encoder(engine, precision=precision, image_runtime="onnxruntime", jpeg_draft=True)
    assert all(run(draft))
