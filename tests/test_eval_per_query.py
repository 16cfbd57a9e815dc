"""``univl-fast eval --per-query``: per-query values in every setting block (checkpoint and
engine paths) and, for a checkpoint, the modality routing of each query."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.engine_helpers import PRECISION
from univl_fast.cli import main

pytest_plugins = ["tests.engine_fixtures"]


def _check_blocks(res: dict, n_queries: int) -> None:
    assert len(res["per_query"]) == n_queries
    assert res["multi"]["per_query"] == res["per_query"]
    assert len(res["text"]["per_query"]) + len(res["image"]["per_query"]) == n_queries
    for block in (res, res["text"], res["image"]):
        for key in ("MRR@10", "NDCG@10", "Recall@20", "image_share@10"):
            vals = [v[key] for v in block["per_query"].values()]
            assert np.mean(vals) == pytest.approx(block[key]), key


def test_eval_checkpoint_per_query(tmp_path, random_tiny_checkpoint, synth_tiny):
    out = tmp_path / "e.json"
    argv = ["eval", "--checkpoint", str(random_tiny_checkpoint), "--data", str(synth_tiny)]
    argv += ["--by-modality", "--per-query", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    _check_blocks(res, res["queries"])
    r = res["routing"]
    per = r["per_query"]
    assert set(per) == set(res["per_query"])
    img = [v for v in per.values() if v["modality"] == "image"]
    assert len(img) == r["image_queries"] == res["image"]["queries"]
    share = np.mean([v["cos_image"] > v["cos_text"] for v in img])
    assert r["image_queries_nearest_image"] == pytest.approx(share)
    assert r["mean_cos_nearest_text"] == pytest.approx(
        np.mean([v["cos_text"] for v in per.values()])
    )
    # without --per-query the JSON keeps its former keys
    assert main([a for a in argv if a != "--per-query"]) == 0
    plain = json.loads(out.read_text())
    assert "routing" not in plain and "per_query" not in plain["text"]


def test_eval_engine_per_query(tmp_path, tiny_engine, flat_index, synth_tiny):
    out = tmp_path / "m.json"
    argv = ["eval", "--engine", str(tiny_engine), "--index", str(flat_index)]
    argv += ["--data", str(synth_tiny), "--precision", PRECISION, "--by-modality", "--per-query"]
    assert main([*argv, "--json", str(out)]) == 0
    _check_blocks(json.loads(out.read_text()), 40)
