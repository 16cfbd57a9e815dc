"""Training: both stages for a few steps on synth_tiny, determinism, resume, bad input,
negative selection and the losses."""

from __future__ import annotations

import base64
import json
import logging
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from univl_fast.train.batches import Corpus, Example, InputCounts, build_examples, pick_negatives
from univl_fast.train.loop import train_stage

FAST = dict(
    batch_size=16,
    max_steps=2,
    eval_every=1000,
    save_every=1000,
    dev_max_queries=8,
    torch_threads=1,
    seed=0,
)


def _weights(ck):
    return load_file(str(ck / "model.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stage1(synth_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    return train_stage(synth_tiny, out, stage="inbatch", progress=False, **FAST)


def test_stage1_writes_a_checkpoint_with_configs(stage1):
    names = {p.name for p in stage1.iterdir()}
    assert {
        "model.safetensors",
        "model_config.json",
        "train_config.json",
        "metrics.json",
        "train_state.pt",
    } <= names
    cfg = json.loads((stage1 / "train_config.json").read_text())
    assert cfg["stage"] == "inbatch" and cfg["notes"]["steps_run"] == 2
    assert cfg["lr"] == 1e-3  # univl-tiny's from-scratch default, not the fine-tuning 5e-6
    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert 0.0 <= metrics["MRR@10"] <= 1.0 and metrics["split"] == "dev"
    # training moved the weights away from the seed-0 init
    from univl_fast.model import UniVLDR

    init = UniVLDR.from_config("univl-tiny", seed=0).clip.state_dict()
    assert not torch.equal(
        init["token_embedding.weight"], _weights(stage1)["token_embedding.weight"]
    )


def test_same_seed_same_weights(synth_tiny, stage1, tmp_path):
    again = train_stage(synth_tiny, tmp_path / "again", stage="inbatch", progress=False, **FAST)
    assert _same(_weights(again), _weights(stage1))
    other = train_stage(
        synth_tiny, tmp_path / "other", stage="inbatch", progress=False, **{**FAST, "seed": 1}
    )
    assert not _same(_weights(other), _weights(stage1))


def test_resume_continues_exactly(synth_tiny, tmp_path):
    opts = {**FAST, "max_steps": 3, "eval_every": 3}
    straight = train_stage(
        synth_tiny, tmp_path / "straight", stage="inbatch", progress=False, **opts
    )
    paused = train_stage(
        synth_tiny, tmp_path / "paused", stage="inbatch", progress=False, stop_after=1, **opts
    )
    assert (paused / "train_state.pt").is_file() and not (paused / "model.safetensors").exists()
    resumed = train_stage(synth_tiny, paused, stage="inbatch", progress=False, resume=True, **opts)
    assert _same(_weights(resumed), _weights(straight))
    # resuming with different options is refused, naming the option
    with pytest.raises(ValueError, match="lr"):
        train_stage(
            synth_tiny, paused, stage="inbatch", progress=False, resume=True, **{**opts, "lr": 0.5}
        )


def _corrupt_copy(src, dst):
    """synth_tiny with: a query whose positives are not in the corpus, an undecodable image that
    is some query's positive, an empty caption."""
    from univl_fast.data.images import write_lineidx

    shutil.copytree(src, dst)
    train = [json.loads(x) for x in (dst / "train.json").read_text().splitlines()]
    img_q = next(q for q in train if q["img_posFacts"])
    bad_id = img_q["img_posFacts"][0]
    train.append(
        {**train[0], "qid": "f" * 32, "img_posFacts": ["99999999"], "txt_posFacts": ["nope_1"]}
    )
    (dst / "train.json").write_text("".join(json.dumps(q) + "\n" for q in train))
    lines = (dst / "imgs.tsv").read_text().splitlines()
    lines = [
        f"{bad_id}\t{base64.b64encode(b'not a png').decode()}" if x.startswith(bad_id + "\t") else x
        for x in lines
    ]
    (dst / "imgs.tsv").write_text("\n".join(lines) + "\n")
    write_lineidx(dst / "imgs.tsv", dst / "imgs.lineidx.new")
    caps = [json.loads(x) for x in (dst / "all_imgs.json").read_text().splitlines()]
    empty_id = next(str(c["image_id"]) for c in caps if str(c["image_id"]) != bad_id)
    for c in caps:
        if str(c["image_id"]) == empty_id:
            c["caption"] = ""
    (dst / "all_imgs.json").write_text("".join(json.dumps(c) + "\n" for c in caps))
    return bad_id


def test_bad_input_is_skipped_and_counted(synth_tiny, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="univl_fast")
    data = tmp_path / "data"
    bad_id = _corrupt_copy(synth_tiny, data)
    out = train_stage(
        data,
        tmp_path / "ck",
        stage="inbatch",
        progress=False,
        **{**FAST, "max_steps": 10, "batch_size": 32},
    )
    notes = json.loads((out / "train_config.json").read_text())["notes"]["inputs"]
    assert notes["queries_without_positives_in_corpus"] == 1
    assert notes["positives_missing_from_corpus"] == 2
    assert notes["empty_captions"] == 1
    assert notes["undecodable_images"] == 1 and bad_id in notes["examples"]["undecodable_images"][0]
    err = caplog.text  # library code logs its warnings (never prints)
    assert "positives is in the corpus" in err and bad_id in err
    # evaluation skips the undecodable image too and counts it
    from univl_fast.train.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(out, data, split="dev", progress=False)
    assert res["inputs"]["undecodable_images_skipped"] == 1 and res["inputs"]["empty_captions"] == 1


def test_mine_then_stage2_all_negative_modes(synth_tiny, stage1, tmp_path):
    from univl_fast.data.layout import DatasetDir
    from univl_fast.train.mine import mine_negatives

    mined = mine_negatives(synth_tiny, stage1, tmp_path / "mined", depth=20, progress=False)
    ds, md = DatasetDir(synth_tiny), DatasetDir(mined)
    mods = ds.modalities()
    for split in ("train", "dev"):
        orig = {q.qid: q for q in ds.queries(split)}
        got = md.queries(split, mined=True)
        assert [q.qid for q in got] == list(orig)
        for q in got:
            pos = set(q.img_pos) | set(q.txt_pos)
            assert not pos & set(q.all_neg)
            assert len(q.all_neg) >= 20 - len(pos)
            assert q.img_neg == [d for d in q.all_neg if mods[d] == "image"]
            assert q.txt_neg == [d for d in q.all_neg if mods[d] == "text"]
            assert q.answer == orig[q.qid].answer
    assert json.loads((mined / "mine_config.json").read_text())["depth"] == 20
    for mode, inbatch in (
        ("balanced", False),
        ("balanced", True),
        ("texts", False),
        ("images", False),
        ("random", True),
    ):
        out = train_stage(
            synth_tiny,
            tmp_path / f"s2_{mode}_{inbatch}",
            stage="hardneg",
            init=stage1,
            mined_dir=mined,
            negatives=mode,
            inbatch=inbatch,
            progress=False,
            **{**FAST, "max_steps": 1},
        )
        cfg = json.loads((out / "train_config.json").read_text())
        assert (cfg["negatives"], cfg["inbatch"], cfg["init"]) == (mode, inbatch, str(stage1))
        assert not _same(_weights(out), _weights(stage1))


def test_hardneg_without_mined_files_says_what_to_run(synth_tiny, stage1, tmp_path):
    with pytest.raises(FileNotFoundError, match="univl-fast mine"):
        train_stage(
            synth_tiny,
            tmp_path / "x",
            stage="hardneg",
            init=stage1,
            mined_dir=tmp_path,
            progress=False,
            **FAST,
        )


class _FakeCorpus:
    """Only what pick_negatives reads (ids and modalities); real Corpus needs a dataset."""

    def __init__(self, images, texts):
        self.image_ids, self.text_of = set(images), dict.fromkeys(texts, "")
        self.bad_images = set()

    def all_ids(self):
        return sorted(self.text_of) + sorted(self.image_ids)


@pytest.mark.parametrize(
    "mode,k,want",
    [("balanced", 1, (1, 1)), ("balanced", 2, (2, 2)), ("texts", 1, (0, 2)), ("images", 2, (4, 0))],
)
def test_pick_negatives_modalities(mode, k, want):
    imgs, txts = [f"i{n}" for n in range(10)], [f"t{n}" for n in range(10)]
    ex = Example("q", "?", ["p"], [], imgs, txts, imgs + txts)
    corpus = _FakeCorpus(imgs + ["p"], txts)
    for seed in range(5):
        got = pick_negatives(ex, mode, k, 100, random.Random(seed), corpus, InputCounts(), {"p"})
        n_img = sum(d.startswith("i") for d in got)
        assert (n_img, len(got) - n_img) == want and len(set(got)) == len(got)


def test_pick_negatives_fills_from_other_modality_and_random_uses_depth():
    ex = Example("q", "?", ["p"], [], ["i0"], [f"t{n}" for n in range(5)], [])
    corpus = _FakeCorpus(["i0", "p"], [f"t{n}" for n in range(5)])
    counts = InputCounts()
    got = pick_negatives(ex, "images", 2, 100, random.Random(0), corpus, counts, {"p"})
    assert len(got) == 4 and "i0" in got and counts.negatives_filled_from_other_modality == 3
    ex = Example("q", "?", ["p"], [], [], [], ["a", "b", "c", "d", "e"])
    corpus = _FakeCorpus(["p"], list("abcde"))
    got = pick_negatives(ex, "random", 1, 3, random.Random(0), corpus, InputCounts(), {"p"})
    assert set(got) <= {"a", "b", "c"} and len(got) == 2


def test_build_examples_drops_queries_without_positives(synth_tiny):
    from univl_fast.data.layout import DatasetDir, Query

    ds = DatasetDir(synth_tiny)
    counts = InputCounts()
    corpus = Corpus(ds, "plain", lambda im: im, 64, counts)
    q = ds.queries("train")[0]
    bad = Query("x" * 32, "?", ["00000001"], [], [], [])
    exs = build_examples([q, bad], corpus, counts)
    assert [e.qid for e in exs] == [q.qid]
    assert counts.queries_without_positives_in_corpus == 1


def test_losses_match_manual_cross_entropy():
    from univl_fast.train.losses import inbatch_loss, own_candidates_loss

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=-1)
    scale = torch.tensor(100.0)
    own = torch.tensor([[0, 1, 2], [3, 4, -1], [5, 6, 1]])
    manual = []
    for i in range(3):
        idx = [j for j in own[i].tolist() if j >= 0]
        logits = scale * d[idx] @ q[i]
        manual.append(-torch.log_softmax(logits, 0)[0])
    assert torch.allclose(own_candidates_loss(scale, q, d, own), torch.stack(manual).mean())
    targets = torch.tensor([0, 3, 5])
    full = -torch.log_softmax(scale * q @ d.T, 1)[torch.arange(3), targets].mean()
    assert torch.allclose(inbatch_loss(scale, q, d, targets), full)


def test_train_and_eval_cli(synth_tiny, stage1, tmp_path, capsys):
    from univl_fast.cli import main

    rc = main(
        [
            "train",
            "--data",
            str(synth_tiny),
            "--out",
            str(tmp_path / "ck"),
            "--quiet",
            "--batch-size",
            "16",
            "--max-steps",
            "1",
            "--dev-max-queries",
            "4",
            "--threads",
            "1",
        ]
    )
    assert rc == 0 and (tmp_path / "ck" / "model.safetensors").is_file()
    out_json = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(stage1),
            "--data",
            str(synth_tiny),
            "--split",
            "test",
            "--by-modality",
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    res = json.loads(out_json.read_text())
    from univl_fast.evaluation.metrics import KEYS

    assert "MRR@10" in KEYS and "queries" in KEYS
    for key in KEYS:
        assert key in res and key in res["text"] and key in res["image"] and key in res["multi"]
    assert res["image"]["image_share@10"] == pytest.approx(1.0)
    assert res["text"]["image_share@10"] == pytest.approx(0.0)
    assert res["queries"] == 40
    assert "MRR@10" in capsys.readouterr().out
    assert (
        main(
            ["train", "--data", str(synth_tiny), "--out", str(tmp_path / "y"), "--stage", "hardneg"]
        )
        == 2
    )
