"""``univl-fast search`` and ``univl-fast eval --engine`` through the CLI dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import univl_fast
from tests.engine_helpers import PRECISION, assert_same_ranking
from univl_fast.cli import main
from univl_fast.evaluation.metrics import KEYS

# session fixtures shared by the engine / CLI tests: corpus, flat_index, queries
pytest_plugins = ["tests.engine_fixtures"]


@pytest.fixture(scope="module")
def plain(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False)
    yield eng
    eng.close()


def test_search_json(capsys, tiny_engine, flat_index, queries, plain):
    qs = [queries[0], "", queries[1]]
    rc = main(
        [
            "search",
            "--engine",
            str(tiny_engine),
            "--index",
            str(flat_index),
            "-k",
            "4",
            "--precision",
            PRECISION,
            "--json",
            *qs,
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in out["results"]] == qs
    assert out["results"][1]["hits"] == []
    ref = plain.search([queries[0], queries[1]], k=20)
    for r, expect in zip([out["results"][0], out["results"][2]], ref, strict=True):
        assert len(r["hits"]) == 4
        got = [univl_fast.Hit(h["doc_id"], h["modality"], h["score"]) for h in r["hits"]]
        assert_same_ranking(got, expect, 4, r["query"])


def test_search_text_with_doc_texts(capsys, tiny_engine, flat_index, queries, synth_tiny):
    rc = main(
        [
            "search",
            "--engine",
            str(tiny_engine),
            "--index",
            str(flat_index),
            "-k",
            "3",
            "--precision",
            PRECISION,
            "--data",
            str(synth_tiny),
            "--modality",
            "image",
            queries[0],
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0] == f"query: {queries[0]}"
    assert len(lines) == 4
    for rank, ln in enumerate(lines[1:], 1):
        assert ln.split()[0] == f"{rank}."
        assert " image " in ln
        assert len(ln.split()) > 4  # caption printed after the id


def test_search_errors(capsys, tiny_engine, flat_index, tmp_path):
    rc = main(["search", "--engine", str(tiny_engine), "--index", str(flat_index), "-k", "0", "q"])
    assert rc == 2
    assert "-k must be >= 1" in capsys.readouterr().err
    rc = main(["search", "--engine", str(tiny_engine), "--index", str(tmp_path / "missing"), "q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "missing" in err


def test_search_and_eval_subprocess_without_torch(
    tmp_path, tiny_engine, flat_index, queries, synth_tiny
):
    """``search`` (batched and plain engine) and ``eval --engine`` run with torch, torchvision
    and open_clip made unimportable."""
    metrics = tmp_path / "m.json"
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'open_clip'): sys.modules[m] = None\n"
        "import univl_fast\n"
        "from univl_fast.cli import main\n"
        f"with univl_fast.load({str(tiny_engine)!r}, index={str(flat_index)!r}) as eng:\n"
        f"    assert len(eng.search([{queries[1]!r}], k=3)[0]) == 3\n"
        f"assert main(['eval', '--engine', {str(tiny_engine)!r}, '--index', "
        f"{str(flat_index)!r}, '--data', {str(synth_tiny)!r}, '--json', {str(metrics)!r}]) == 0\n"
        f"sys.exit(main(['search', '--engine', {str(tiny_engine)!r}, '--index', "
        f"{str(flat_index)!r}, '-k', '2', '--json', {queries[0]!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert len(out["results"][0]["hits"]) == 2
    assert json.loads(metrics.read_text())["queries"] > 0


def test_eval_engine_json_keys_and_values(
    tmp_path, tiny_engine, flat_index, synth_tiny, synth_tiny_dataset, corpus, plain
):
    from univl_fast.evaluation.embeddings import evaluate_embeddings

    out = tmp_path / "metrics.json"
    rc = main(
        [
            "eval",
            "--engine",
            str(tiny_engine),
            "--index",
            str(flat_index),
            "--data",
            str(synth_tiny),
            "--precision",
            PRECISION,
            "--split",
            "test",
            "--by-modality",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    got = json.loads(out.read_text())
    assert set(got) == set(KEYS) | {"text", "image", "multi"}
    for block in ("text", "image", "multi"):
        assert set(got[block]) == set(KEYS)
    for key in KEYS:
        assert 0.0 <= got[key] <= (1.0 if key != "queries" else 1e9)
    # the same numbers as exact search over the same vectors (the index is Flat)
    qs = synth_tiny_dataset.queries("test")
    qrels = synth_tiny_dataset.qrels("test")
    qv = plain.encode_queries([q.text for q in qs])
    ref = evaluate_embeddings(
        qv,
        [q.qid for q in qs],
        corpus["vecs"],
        corpus["ids"],
        corpus["mods"],
        qrels,
        k=100,
        by_modality=True,
    )
    assert got["queries"] == ref["queries"] == len(qrels)
    for block in (None, "text", "image", "multi"):
        g = got if block is None else got[block]
        r = ref if block is None else ref[block]
        for key in KEYS:
            assert g[key] == pytest.approx(r[key], abs=1e-3), (block, key)
    assert np.isclose(got["multi"]["MRR@10"], got["MRR@10"])


def test_eval_engine_without_by_modality(tmp_path, tiny_engine, flat_index, synth_tiny):
    out = tmp_path / "m.json"
    rc = main(
        [
            "eval",
            "--engine",
            str(tiny_engine),
            "--index",
            str(flat_index),
            "--data",
            str(synth_tiny),
            "--split",
            "dev",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert set(json.loads(out.read_text())) == set(KEYS)
