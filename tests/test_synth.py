"""The synthetic benchmark: determinism, the layout, WebQA's structure, and that modality
matters (an oracle argument on the generated files)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from math import comb

import numpy as np
import pytest

from univl_fast.cli import main as cli_main
from univl_fast.data import DatasetDir
from univl_fast.data.synth import (
    CAPTIONS,
    COLOUR_NAMES,
    CONFIG_FILE,
    GROUNDING_QUESTIONS,
    LAYOUT_FILES,
    SCALES,
    SHAPE_PLURAL,
    SHAPES,
    generate,
    read_config,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")
SNIPPET = re.compile(r"^[0-9a-f]{32}_\d+$")
IMAGE_ID = re.compile(r"^[1-9]\d{7}$")
COUNT_OF = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


def _grounding(text: str) -> bool:
    """Entity-free training questions naming all three attributes (train split only)."""
    return any(text.startswith(t.split("{")[0]) for t in GROUNDING_QUESTIONS)


def _bytes(d):
    return {f: (d / f).read_bytes() for f in LAYOUT_FILES}


def test_same_seed_byte_identical_other_seed_differs(synth_tiny, tmp_path):
    again = generate(tmp_path / "again", scale="tiny", seed=0, progress=False)
    assert _bytes(again) == _bytes(synth_tiny)
    other = generate(tmp_path / "other", scale="tiny", seed=1, progress=False)
    assert _bytes(other)["imgs.tsv"] != _bytes(synth_tiny)["imgs.tsv"]
    assert _bytes(other)["test.json"] != _bytes(synth_tiny)["test.json"]


def test_parallel_workers_give_identical_images(synth_tiny, tmp_path):
    par = generate(tmp_path / "par", scale="tiny", seed=0, progress=False, workers=2)
    assert (par / "imgs.tsv").read_bytes() == (synth_tiny / "imgs.tsv").read_bytes()


def test_config_records_scale_stats_and_hashes(synth_tiny):
    cfg = read_config(synth_tiny)
    assert cfg["config"]["scale"] == "tiny" and cfg["config"]["seed"] == 0
    assert set(cfg["files"]) == set(LAYOUT_FILES)
    assert cfg["stats"]["images"] == SCALES["tiny"].images
    assert not list(synth_tiny.parent.glob(".*synth-tmp*"))  # temp dir renamed away


def test_ids_and_sizes(synth_tiny_dataset):
    ds = synth_tiny_dataset
    spec = SCALES["tiny"]
    assert len(ds.images) == spec.images and len(ds.text_docs()) == spec.texts
    assert all(IMAGE_ID.match(i) for i in ds.images.ids())
    assert all(SNIPPET.match(t.doc_id) for t in ds.text_docs())
    raw = [json.loads(line) for line in (ds.path / "all_imgs.json").read_text().splitlines()]
    assert all(isinstance(r["image_id"], int) for r in raw)  # int in all_imgs.json, as WebQA
    qids = set()
    for split in ("train", "dev", "test"):
        for q in ds.queries(split):
            assert HEX32.match(q.qid)
            qids.add(q.qid)
    assert len(qids) == spec.train + spec.dev + spec.test


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_query_structure(synth_tiny_dataset, split):
    ds = synth_tiny_dataset
    qs = ds.queries(split)
    mods = ds.modalities()
    n_img = sum(q.modality == "image" for q in qs)
    assert n_img == getattr(SCALES["tiny"], f"{split}_image")  # about half
    for q in qs:
        assert q.modality in ("image", "text"), "positives in exactly one modality"
        pos = q.img_pos + q.txt_pos
        assert 1 <= len(pos) <= 4
        assert all(mods[d] == "image" for d in q.img_pos + q.img_neg)
        assert all(mods[d] == "text" for d in q.txt_pos + q.txt_neg)
        assert not set(pos) & set(q.img_neg + q.txt_neg)
        assert q.img_neg and q.txt_neg  # distractors of both modalities
    if split != "train":
        qrels = ds.qrels(split)
        assert {q.qid: set(q.img_pos + q.txt_pos) for q in qs} == {
            k: set(v) for k, v in qrels.items()
        }


def test_test_questions_not_in_train(synth_tiny_dataset):
    ds = synth_tiny_dataset
    train = {frozenset(q.img_pos + q.txt_pos) for q in ds.queries("train")}
    for split in ("dev", "test"):
        for q in ds.queries(split):
            assert frozenset(q.img_pos + q.txt_pos) not in train, q.text


def test_small_scale_sizes(tmp_path):
    out = generate(tmp_path / "small", scale="small", seed=3, progress=False)
    ds = DatasetDir(out)
    spec = SCALES["small"]
    assert len(ds.images) == spec.images and len(ds.text_ids()) == spec.texts
    assert [len(ds.queries(s)) for s in ("train", "dev", "test")] == [
        spec.train,
        spec.dev,
        spec.test,
    ]
    assert ds.validate(check_images=200).ok


# -- modality matters: the oracle argument ---------------------------------------------------
def _entity_of_caption(caption: str) -> str:
    for template in CAPTIONS:
        pattern = "^" + re.escape(template).replace(re.escape("{e}"), "(.+)") + "$"
        m = re.match(pattern, caption)
        if m:
            return m.group(1).removeprefix("the ")
    raise AssertionError(f"caption matches no template: {caption}")


def _attrs_of_description(desc: str) -> dict:
    n, colour, shape = desc.split(" ")
    count = COUNT_OF[n]
    shape = next(s for s in SHAPES if shape in (s, SHAPE_PLURAL[s]))
    return {"count": count, "colour": colour, "shape": shape}


def _condition_of_question(q: str) -> tuple[str, object]:
    words = q.rstrip("?").split()
    for s in SHAPES:
        if SHAPE_PLURAL[s] in words:
            return "shape", s
    for c in COLOUR_NAMES:
        if c in words:
            return "colour", c
    raise AssertionError(f"no attribute in question: {q}")


def _expected_rr(n: int, p: int) -> float:
    """Expected 1/rank of the first of p positives placed at random among n candidates."""
    return sum(comb(n - r, p - 1) / comb(n, p) / r for r in range(1, n - p + 2))


def test_modality_matters_oracle(synth_tiny_dataset):
    """For image queries: the images whose caption names the query's entity, and the images
    whose pixels show the query's attribute, are each a larger set than the positives; only
    both together single the positives out. A retriever that ranks ideally by caption alone,
    or by pixels alone, must guess within its set, and does clearly worse."""
    ds = synth_tiny_dataset
    captions = {d.doc_id: d.caption for d in ds.image_docs()}
    entity = {i: _entity_of_caption(c) for i, c in captions.items()}
    pixels = {
        d.doc_id: _attrs_of_description(d.caption.split(" [SEP] ")[1]) for d in ds.image_docs("exp")
    }
    names = set(entity.values())
    rr_caption, rr_pixels, both_exact, ambiguous = [], [], 0, 0
    queries = [
        q
        for s in ("train", "dev", "test")
        for q in ds.queries(s)
        if q.modality == "image" and not _grounding(q.text)
    ]
    for q in queries:
        (name,) = [n for n in names if re.search(rf"\bthe {re.escape(n)}\b", q.text)]
        attr, value = _condition_of_question(q.text)
        by_caption = {i for i, e in entity.items() if e == name}
        by_pixels = {i for i, a in pixels.items() if a[attr] == value}
        pos = set(q.img_pos)
        assert pos <= by_caption and pos <= by_pixels
        assert len(by_caption) >= 4
        both_exact += (by_caption & by_pixels) == pos
        ambiguous += len(by_caption) > len(pos) and len(by_pixels) > len(pos)
        rr_caption.append(_expected_rr(len(by_caption), len(pos)))
        rr_pixels.append(_expected_rr(len(by_pixels), len(pos)))
    n = len(queries)
    assert both_exact == n, "caption + pixels single out exactly the positives"
    assert ambiguous == n, "neither caption nor pixels alone does"
    mrr_caption, mrr_pixels = sum(rr_caption) / n, sum(rr_pixels) / n
    print(f"oracle MRR caption-only {mrr_caption:.3f} pixels-only {mrr_pixels:.3f}")
    assert mrr_caption < 0.6, mrr_caption  # vs 1.0 for caption + pixels
    assert mrr_pixels < 0.25, mrr_pixels


def test_text_queries_need_the_fact_doc(synth_tiny_dataset):
    """Non-visual answers appear only in text docs (never in captions); decoration answers
    are stated by the positive text doc, and the entity's pictures never show the asked
    decoration's shape or colour (so no picture answers a text-answerable question). The
    entity has other text docs (distractors sharing the entity)."""
    ds = synth_tiny_dataset
    texts = {t.doc_id: t.text for t in ds.text_docs()}
    exp = {d.doc_id: d.caption for d in ds.image_docs("exp")}
    exp_captions = " ".join(exp.values())
    by_entity = defaultdict(list)
    for d in ds.image_docs():
        by_entity[_entity_of_caption(d.caption)].append(
            _attrs_of_description(exp[d.doc_id].split(" [SEP] ")[1])
        )
    n_deco = n_fact = 0
    for q in ds.queries("test") + ds.queries("dev") + ds.queries("train"):
        if q.modality != "text":
            continue
        assert len(q.txt_neg) >= 2
        value = q.answer.removesuffix(" metres")
        assert all(value.lower() in texts[d].lower() for d in q.txt_pos)
        (name,) = [n for n in by_entity if re.search(rf"\bthe {re.escape(n)}\b", q.text)]
        try:
            attr, cond = _condition_of_question(q.text)
        except AssertionError:  # a non-visual fact
            n_fact += 1
            assert value not in exp_captions
            continue
        n_deco += 1
        assert all(a[attr] != cond for a in by_entity[name]), q.text
    assert n_deco and n_fact


def _small(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("small") / "small", scale="small", seed=0,
                    progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory):
    return DatasetDir(_small(tmp_path_factory))


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_query_wording_does_not_give_the_modality_away(synth_small):
    """A bag-of-words Naive Bayes classifier (per-token log-odds, trained on the train split)
    predicts the answer modality of test queries at <= 65% (v1 of the generator: ~100%).
    Visual questions share their templates across modalities and never say picture / image /
    photo."""
    counts = {True: defaultdict(int), False: defaultdict(int)}
    n = {True: 0, False: 0}
    for q in synth_small.queries("train"):
        m = q.modality == "image"
        n[m] += 1
        for t in _tokens(q.text):
            counts[m][t] += 1
    vocab = set(counts[True]) | set(counts[False])

    def predict_image(text: str) -> bool:
        s = np.log(n[True] / n[False])
        for t in _tokens(text) & vocab:
            s += np.log((counts[True][t] + 1) / (n[True] + 2))
            s -= np.log((counts[False][t] + 1) / (n[False] + 2))
        return s > 0

    test = synth_small.queries("test")
    acc = np.mean([predict_image(q.text) == (q.modality == "image") for q in test])
    assert 0.45 <= acc <= 0.65, acc
    train_acc = np.mean(
        [predict_image(q.text) == (q.modality == "image") for q in synth_small.queries("train")]
    )
    assert train_acc > 0.5, train_acc  # the classifier does learn something
    for q in test:
        assert not _tokens(q.text) & {"picture", "image", "photo", "photograph"}, q.text
    # the shared visual templates: most text-answerable test queries are visual questions
    text_q = [q for q in test if q.modality == "text"]
    visual = 0
    for q in text_q:
        try:
            _condition_of_question(q.text)
            visual += 1
        except AssertionError:
            pass
    assert visual >= 0.7 * len(text_q)


def test_every_training_picture_gets_several_questions(synth_small):
    """Pixel supervision: each picture that is a training positive is asked about from 2-3
    attributes (shape->colour, shape->count, colour->shape), and is a positive of ~1
    entity-free grounding question on average: 3+ training questions per picture."""
    per_image = defaultdict(set)
    total = defaultdict(int)
    for q in synth_small.queries("train"):
        if q.modality != "image":
            continue
        for d in q.img_pos:
            total[d] += 1
        if not _grounding(q.text):
            (pos,) = q.img_pos
            per_image[pos].add(_condition_of_question(q.text)[0] + ":" + q.text.split()[1])
    sizes = [len(v) for v in per_image.values()]
    assert min(sizes) >= 2 and np.mean(sizes) >= 2.4, (min(sizes), np.mean(sizes))
    assert np.mean([total[d] for d in per_image]) >= 3.0


def test_cross_modal_distractors(synth_tiny_dataset):
    """Every entity has a text doc that names one of its pictures' shapes (a banner, answers
    nothing), and image-answerable queries list text negatives of their entity."""
    ds = synth_tiny_dataset
    exp = {d.doc_id: d.caption.split(" [SEP] ")[1] for d in ds.image_docs("exp")}
    shapes = defaultdict(set)
    for d in ds.image_docs():
        shapes[_entity_of_caption(d.caption)].add(_attrs_of_description(exp[d.doc_id])["shape"])
    positives = {
        d for s in ("train", "dev", "test") for q in ds.queries(s) for d in q.img_pos + q.txt_pos
    }
    texts = ds.text_docs()
    for name, sh in shapes.items():
        hits = [
            t
            for t in texts
            if re.search(rf"\bthe {re.escape(name)}\b", t.text)
            and any(re.search(rf"\b{SHAPE_PLURAL[s]}\b", t.text) for s in sh)
        ]
        assert hits, name
        assert any(t.doc_id not in positives for t in hits), name


def test_verbalized_captions_carry_the_attributes(synth_tiny_dataset):
    ds = synth_tiny_dataset
    plain = {d.doc_id: d.caption for d in ds.image_docs()}
    for name in ("exp", "query"):
        for d in ds.image_docs(name):
            head, tail = d.caption.split(" [SEP] ")
            assert head == plain[d.doc_id] and tail
    # the pictures agree with the descriptions: the dominant colour is the described colour
    from univl_fast.data.synth import COLOURS

    exp = {d.doc_id: d.caption.split(" [SEP] ")[1] for d in ds.image_docs("exp")}
    for image_id in ds.images.ids()[:40]:
        colour = _attrs_of_description(exp[image_id])["colour"]
        px = np.asarray(ds.images.load(image_id)).reshape(-1, 3)
        assert (px == COLOURS[colour]).all(axis=1).mean() > 0.05


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_noop_refuse_and_force(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli_main(["synth", "--out", str(out), "--scale", "tiny", "--quiet"]) == 0
    before = (out / "imgs.tsv").stat().st_mtime_ns
    assert cli_main(["synth", "--out", str(out), "--scale", "tiny", "--quiet"]) == 0
    assert (out / "imgs.tsv").stat().st_mtime_ns == before  # no-op
    # different seed into a non-empty dir: refused without --force
    assert cli_main(["synth", "--out", str(out), "--scale", "tiny", "--seed", "5", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    (out / "train_all.json").write_text("{}\n")  # stale mined file
    (out / "notes.txt").write_text("mine")
    assert (
        cli_main(
            [
                "synth",
                "--out",
                str(out),
                "--scale",
                "tiny",
                "--seed",
                "5",
                "--force",
                "--quiet",
                "--validate",
            ]
        )
        == 0
    )
    assert read_config(out)["config"]["seed"] == 5
    assert not (out / "train_all.json").exists() and (out / "notes.txt").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    assert cli_main(["synth", "--out", str(foreign), "--scale", "tiny", "--quiet"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["synth", "--out", str(empty), "--scale", "tiny", "--quiet"]) == 0
    assert (empty / CONFIG_FILE).is_file()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    import univl_fast.data.synth as synth

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(synth, "_write_tsv", boom)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "ds", scale="tiny", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_scale():
    with pytest.raises(ValueError, match="scale must be one of"):
        generate("/tmp/never", scale="huge")


def test_groups_balanced_per_entity(synth_tiny_dataset):
    """Every attribute value appears across many entities (pixels alone are ambiguous)."""
    ds = synth_tiny_dataset
    ents = defaultdict(set)
    captions = {d.doc_id: _entity_of_caption(d.caption) for d in ds.image_docs()}
    for d in ds.image_docs("exp"):
        a = _attrs_of_description(d.caption.split(" [SEP] ")[1])
        for k, v in a.items():
            ents[(k, v)].add(captions[d.doc_id])
    assert min(len(v) for v in ents.values()) >= 5


def test_older_make_of_same_dataset_is_regenerated(tmp_path):
    out = generate(tmp_path / "ds", scale="tiny", seed=2, progress=False)
    cfg_path = out / CONFIG_FILE
    saved = json.loads(cfg_path.read_text())
    saved["config"]["version"] = 0  # as if made by an older generator
    cfg_path.write_text(json.dumps(saved))
    (out / "train_all.json").write_text("{}\n")  # mined from the old data: must go
    generate(out, scale="tiny", seed=2, progress=False)  # no --force needed
    assert read_config(out)["config"]["version"] > 0
    assert not (out / "train_all.json").exists()
    assert DatasetDir(out).validate(check_images="none").ok
