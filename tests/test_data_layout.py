"""DatasetDir and ImageStore on the synthetic layout, intact and deliberately broken."""

from __future__ import annotations

import base64
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from univl_fast.data import (
    DataFormatError,
    DatasetDir,
    ImageStore,
    SkipReport,
    read_lineidx,
    write_lineidx,
)
from univl_fast.imageio import ImageDecodeError


@pytest.fixture
def broken(synth_tiny, tmp_path):
    """A private copy of synth_tiny that a test may damage."""
    dst = tmp_path / "ds"
    shutil.copytree(synth_tiny, dst)
    return dst


def _rewrite_lines(path, fn):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(fn(i, line) for i, line in enumerate(lines)))


# -- reading back ----------------------------------------------------------------------------
def test_reads_everything_back(synth_tiny_dataset):
    ds = synth_tiny_dataset
    for split, n in (("train", 150), ("dev", 40), ("test", 40)):
        qs = ds.queries(split)
        assert len(qs) == n
        assert all(len(q.qid) == 32 and q.text and q.answer for q in qs)
    texts = ds.text_docs()
    assert len(texts) == 250 and len({t.doc_id for t in texts}) == 250
    for captions in ("plain", "query", "exp"):
        docs = ds.image_docs(captions)
        assert len(docs) == 150
    plain = {d.doc_id: d.caption for d in ds.image_docs()}
    exp = {d.doc_id: d.caption for d in ds.image_docs("exp")}
    assert all(exp[i].startswith(plain[i] + " [SEP] ") for i in plain)
    assert len(ds.images) == 150 and set(ds.images.ids()) == set(plain)
    mods = ds.modalities()
    assert len(mods) == 400
    assert sum(m == "image" for m in mods.values()) == 150
    qrels = ds.qrels("test")
    assert len(qrels) == 40 and all(d in mods for r in qrels.values() for d in r)
    train_qrels = ds.qrels("train")  # built from positives: there is no train_qrels.txt
    assert len(train_qrels) == 150 and all(train_qrels.values())


def test_streaming_batches(synth_tiny_dataset):
    batches = list(synth_tiny_dataset.iter_text_docs(batch_size=64))
    assert [len(b) for b in batches] == [64, 64, 64, 58]
    batches = list(synth_tiny_dataset.iter_image_docs(batch_size=100, captions="exp"))
    assert [len(b) for b in batches] == [100, 50]
    report = SkipReport()
    img_batches = list(synth_tiny_dataset.iter_images(batch_size=32, report=report))
    assert [len(ids) for ids, _ in img_batches] == [32, 32, 32, 32, 22]
    assert report.seen == 150 and report.skipped_count == 0
    ids, imgs = img_batches[0]
    assert imgs[0].mode == "RGB" and imgs[0].size == (64, 64)


def test_caption_file_by_path(synth_tiny_dataset, synth_tiny):
    docs = synth_tiny_dataset.image_docs(str(synth_tiny / "all_imgs_query.json"))
    assert len(docs) == 150 and " [SEP] " in docs[0].caption


def test_validate_clean_dataset(synth_tiny_dataset):
    rep = synth_tiny_dataset.validate(check_images="all")
    assert rep.ok, rep.summary()
    assert rep.counts["images_checked"] == 150
    assert not rep.warnings, rep.warnings


def test_concurrent_image_reads_are_consistent(synth_tiny_dataset):
    store = synth_tiny_dataset.images
    ids = store.ids()
    sequential = [store.read_bytes(i) for i in ids]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(store.read_bytes, ids * 3))
    assert parallel == sequential * 3


def test_image_store_pickles(synth_tiny_dataset):
    store = synth_tiny_dataset.images
    clone = pickle.loads(pickle.dumps(store))
    i = store.ids()[7]
    assert clone.read_bytes(i) == store.read_bytes(i)
    clone.close()


def test_write_lineidx_reproduces_index(synth_tiny, tmp_path):
    out = write_lineidx(synth_tiny / "imgs.tsv", tmp_path / "idx")
    ids_a, off_a = read_lineidx(out)
    ids_b, off_b = read_lineidx(synth_tiny / "imgs.lineidx.new")
    assert ids_a == ids_b and (off_a == off_b).all()


def test_unknown_image_id(synth_tiny_dataset):
    with pytest.raises(KeyError, match="99999999"):
        synth_tiny_dataset.images.read_bytes("99999999")
    assert "99999999" not in synth_tiny_dataset.images


# -- broken inputs ---------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        DatasetDir(tmp_path / "nope")


@pytest.mark.parametrize(
    "name, call, role",
    [
        ("all_docs.json", lambda d: d.text_docs(), "text corpus"),
        ("test.json", lambda d: d.queries("test"), "test queries"),
        ("all_imgs_exp.json", lambda d: d.image_docs("exp"), "verbalized captions"),
        ("test_qrels.txt", lambda d: d.qrels("test"), "relevance"),
        ("imgs.lineidx.new", lambda d: d.images, "line index"),
        ("imgs.tsv", lambda d: d.images, "image store"),
    ],
)
def test_missing_file_names_file_and_role(broken, name, call, role):
    (broken / name).unlink()
    with pytest.raises(DataFormatError, match=role) as info:
        call(DatasetDir(broken))
    assert name in str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # also catchable as such


def test_mined_file_missing_says_how_to_make_it(broken):
    with pytest.raises(DataFormatError, match="univl-fast mine"):
        DatasetDir(broken).queries("train", mined=True)


def test_malformed_json_line_names_file_and_line(broken):
    _rewrite_lines(
        broken / "train.json", lambda i, line: b'{"qid": "x", "Q": \n' if i == 6 else line
    )
    with pytest.raises(DataFormatError, match=r"train\.json:7: malformed JSON"):
        DatasetDir(broken).queries("train")
    rep = DatasetDir(broken).validate(check_images="none")
    assert not rep.ok and any("train.json:7" in e for e in rep.errors)


def test_missing_field_names_field_and_line(broken):
    _rewrite_lines(
        broken / "all_docs.json", lambda i, line: b'{"snippet_id": "abc_1"}\n' if i == 11 else line
    )
    with pytest.raises(DataFormatError, match=r"all_docs\.json:12: missing field 'fact'"):
        DatasetDir(broken).text_docs()


def test_qrels_ids_absent_from_corpus_are_reported(broken):
    with open(broken / "test_qrels.txt", "a") as fh:
        fh.write("deadbeef\tnot_a_doc_1\t1\n")
        fh.write("deadbeef\t12121212\t1\n")
    rep = DatasetDir(broken).validate(check_images="none")
    assert rep.ok  # readers skip and count these: a warning, not an error
    msg = [w for w in rep.warnings if "test_qrels.txt doc ids" in w]
    assert msg and "2 ids absent" in msg[0] and "not_a_doc_1" in msg[0]


def test_bad_qrels_line(broken):
    with open(broken / "dev_qrels.txt", "a") as fh:
        fh.write("only_two fields\n")
    with pytest.raises(DataFormatError, match=r"dev_qrels\.txt:\d+: expected"):
        DatasetDir(broken).qrels("dev")


def test_lineidx_pointing_at_another_id(broken):
    ids, offsets = read_lineidx(broken / "imgs.lineidx.new")
    lines = [f"{i}\t{o}\n" for i, o in zip(ids, offsets.tolist(), strict=True)]
    lines[3] = f"{ids[3]}\t{offsets[4]}\n"  # id 3 now points at image 4's line
    (broken / "imgs.lineidx.new").write_text("".join(lines))
    ds = DatasetDir(broken)
    with pytest.raises(DataFormatError, match=f"says image {ids[3]} is at byte") as info:
        ds.images.read_bytes(ids[3])
    assert ids[4] in str(info.value)
    report = SkipReport()
    got = [i for batch, _ in ds.iter_images(batch_size=50, report=report) for i in batch]
    assert len(got) == 149 and ids[3] not in got
    assert report.skipped[0][0] == ids[3]
    rep = ds.validate(check_images="all")
    assert not rep.ok and any("1 skipped" in e for e in rep.errors)


def test_undecodable_images_are_skipped_and_counted(broken):
    junk = base64.b64encode(b"this is not a png")

    def damage(i, line):
        image_id = line.split(b"\t", 1)[0]
        if i == 10:
            return image_id + b"\t" + junk + b"\n"
        if i == 20:
            return image_id + b"\t!!!not base64!!!\n"
        if i == 30:
            return image_id + b"\t" + line.split(b"\t", 1)[1][:60] + b"\n"  # truncated PNG
        return line

    _rewrite_lines(broken / "imgs.tsv", damage)
    write_lineidx(broken / "imgs.tsv")
    store = ImageStore(broken / "imgs.tsv", broken / "imgs.lineidx.new")
    ids = store.ids()
    with pytest.raises(ImageDecodeError, match=ids[10]):
        store.load(ids[10])
    with pytest.raises(ImageDecodeError, match="base64"):
        store.read_bytes(ids[20])
    report = SkipReport()
    got = [i for batch, _ in store.iter_images(batch_size=16, report=report) for i in batch]
    assert len(got) == 147
    assert [s[0] for s in report.skipped] == [ids[10], ids[20], ids[30]]
    assert "3 skipped" in report.summary()
    rep = DatasetDir(broken).validate(check_images="all")
    assert not rep.ok and any("3 skipped" in e for e in rep.errors)


def test_stale_lineidx_offset_past_end(broken):
    ids, _ = read_lineidx(broken / "imgs.lineidx.new")
    (broken / "imgs.lineidx.new").write_text(f"{ids[0]}\t999999999\n")
    with pytest.raises(DataFormatError, match="past the end"):
        DatasetDir(broken).images.read_bytes(ids[0])


def test_bad_lineidx_line(broken):
    (broken / "imgs.lineidx.new").write_text("12345678\t0\n23456789\tabc\n")
    with pytest.raises(DataFormatError, match=r"imgs\.lineidx\.new:2: offset 'abc'"):
        _ = DatasetDir(broken).images


def test_webqa_style_fields_are_accepted(tmp_path):
    (tmp_path / "dev.json").write_text(
        '{"qid": "q1", "Q": "what?", "A": ["yes"], "img_posFacts": [30001234], '
        '"txt_posFacts": [], "img_negFacts": [{"image_id": 30005678}]}\n\n'
    )
    (tmp_path / "dev_qrels.txt").write_text("q1 0 30001234 1\n")
    ds = DatasetDir(tmp_path)
    (q,) = ds.queries("dev")
    assert q.img_pos == ["30001234"] and q.img_neg == ["30005678"] and q.answer == "yes"
    assert q.modality == "image"
    assert ds.qrels("dev") == {"q1": {"30001234": 1}}


def test_data_metrics_evaluation_import_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None\n"
        "import univl_fast.data, univl_fast.data.synth, univl_fast.data.synth_cli\n"
        "import univl_fast.evaluation.metrics, univl_fast.evaluation.embeddings, univl_fast.data.bm25\n"
        "import univl_fast.data.validate\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threaded_decoding_keeps_order_and_skips(broken):
    def damage(i, line):
        return line.split(b"\t", 1)[0] + b"\tAAAA\n" if i in (0, 77) else line

    _rewrite_lines(broken / "imgs.tsv", damage)
    write_lineidx(broken / "imgs.tsv")
    ds = DatasetDir(broken)
    ids = ds.images.ids()
    plain, threaded = SkipReport(), SkipReport()
    a = [
        (i, im.tobytes())
        for b, ims in ds.iter_images(batch_size=20, report=plain)
        for i, im in zip(b, ims, strict=True)
    ]
    b = [
        (i, im.tobytes())
        for b_, ims in ds.iter_images(batch_size=20, report=threaded, workers=3)
        for i, im in zip(b_, ims, strict=True)
    ]
    assert a == b and [x for x, _ in a] == [i for j, i in enumerate(ids) if j not in (0, 77)]
    assert plain.skipped == threaded.skipped and threaded.skipped_count == 2


def test_long_lines_and_missing_final_newline(tmp_path):
    """A WebQA-sized image (line > the first 64 KiB read) and a last line without newline."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    small = io.BytesIO()
    Image.new("RGB", (5, 3), (1, 2, 3)).save(small, format="PNG")
    lines = [
        b"11111111\t" + base64.b64encode(buf.getvalue()) + b"\r\n",
        b"22222222\t" + base64.b64encode(small.getvalue()),
    ]
    assert len(lines[0]) > 1 << 17
    (tmp_path / "imgs.tsv").write_bytes(b"".join(lines))
    write_lineidx(tmp_path / "imgs.tsv")
    with ImageStore(tmp_path / "imgs.tsv", tmp_path / "imgs.lineidx.new") as store:
        assert store.read_bytes("11111111") == buf.getvalue()
        assert np.array_equal(np.asarray(store.load("11111111")), np.asarray(big))
        assert store.load("22222222").size == (5, 3)
        assert len(store) == 2 and "22222222" in store
    with pytest.raises(ValueError, match="closed"):
        store.read_bytes("11111111")


def test_qrels_and_queries_disagree(broken):
    with open(broken / "dev_qrels.txt", "a") as fh:
        fh.write("ffffffffffffffffffffffffffffffff\tnot_a_doc_1\t1\n")
    lines = (broken / "dev.json").read_text().splitlines(keepends=True)
    (broken / "dev.json").write_text("".join(lines[1:]))  # drop the first dev query
    rep = DatasetDir(broken).validate(check_images="none")
    assert rep.ok
    w = [x for x in rep.warnings if x.startswith("dev_qrels.txt")]
    assert any("2 judged qids are not in dev.json" in x for x in w), w
