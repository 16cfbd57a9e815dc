"""The BM25 baseline: formula on a toy corpus, and what it shows on the synthetic benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest

from univl_fast.data.bm25 import BM25, evaluate_bm25, tokenize


def test_tokenize_stems_plurals_and_drops_stopwords():
    assert tokenize("How many Triangles are in the picture of the Varnok Bridge?") == [
        "many", "triangle", "picture", "varnok", "bridge"]  # fmt: skip
    assert tokenize("three red crosses [SEP]") == ["three", "red", "cross"]


def test_scores_match_the_formula():
    docs = ["red circle red", "blue square", "red square big", "nothing here"]
    bm = BM25(docs, k1=1.2, b=0.75)
    lens = [3, 2, 3, 2]  # "here" is kept, "nothing" too
    avgdl = sum(lens) / 4

    def ref(q_terms, i):
        toks = tokenize(docs[i])
        s = 0.0
        for t in q_terms:
            df = sum(t in tokenize(d) for d in docs)
            if df == 0:
                continue
            tf = toks.count(t)
            idf = math.log(1 + (4 - df + 0.5) / (df + 0.5))
            s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * lens[i] / avgdl))
        return s

    got = bm.scores("red square")
    np.testing.assert_allclose(got, [ref(["red", "square"], i) for i in range(4)], rtol=1e-12)
    scores, rows = bm.search(["red square", "zebra"], k=3)
    assert rows[0, 0] == 2 and scores.shape == (2, 3)
    assert (scores[1] == 0).all()
    _, rows = bm.search(["red square"], k=5, doc_rows=np.array([1, 3]))
    assert rows.tolist() == [[1, 3]]


def test_expanded_captions_help_image_queries(synth_tiny_dataset):
    plain = evaluate_bm25(synth_tiny_dataset, "test", "plain", by_modality=True)
    exp = evaluate_bm25(synth_tiny_dataset, "test", "exp", by_modality=True)
    # plain captions name the entity, never the attribute: BM25 must guess among its images
    assert plain["image"]["MRR@10"] < 0.7
    assert exp["image"]["MRR@10"] > plain["image"]["MRR@10"] + 0.2
    assert exp["text"]["MRR@10"] == pytest.approx(plain["text"]["MRR@10"])
    assert plain["queries"] == 40 and plain["image"]["queries"] == 20


def test_cli_writes_json(synth_tiny, tmp_path, capsys):
    import json

    from univl_fast.data.bm25 import main

    out = tmp_path / "bm25.json"
    assert main(["--data", str(synth_tiny), "--captions", "exp", "--by-modality",
                 "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["queries"] == 40 and set(res["image"]) >= {"MRR@10", "queries"}
    assert "| BM25 (exp captions) image |" in capsys.readouterr().out
