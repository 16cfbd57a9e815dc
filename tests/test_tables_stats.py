"""bench/tables_stats.py: error bars over seeds and the paired tests, on constructed per-query
evaluations (no training: the per-query JSONs are written the way ``eval --per-query`` does)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("tables_stats", ROOT / "bench/tables_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_json(mrr: np.ndarray, share: float) -> dict:
    qids = [f"q{i:03d}" for i in range(len(mrr))]
    half = len(mrr) // 2
    per = {
        q: {"MRR@10": float(v), "NDCG@10": float(v), "Recall@20": 1.0}
        for q, v in zip(qids, mrr, strict=True)
    }

    def block(sel: list[str]) -> dict:
        vals = [per[q]["MRR@10"] for q in sel]
        return {
            "MRR@10": float(np.mean(vals)),
            "NDCG@10": float(np.mean(vals)),
            "Recall@20": 1.0,
            "image_share@10": share,
            "queries": len(sel),
            "per_query": {q: per[q] for q in sel},
        }

    res = block(qids)
    res["text"], res["image"] = block(qids[:half]), block(qids[half:])
    res["routing"] = {
        "mean_cos_nearest_text": 0.5,
        "mean_cos_nearest_image": 0.4,
        "image_queries_nearest_image": share,
        "text_queries_nearest_text": 1 - share,
    }
    return res


def test_verdicts():
    ts = _module()
    assert ts.verdict(13.5, 7.0, 0.001, directional=True) == "reproduced"
    assert ts.verdict(13.5, 1.0, 0.001, directional=True).startswith("reproduced in direction")
    assert ts.verdict(0.6, 0.2, 0.4, directional=True) == "direction only (not significant)"
    assert ts.verdict(0.6, -2.0, 0.01, directional=True).startswith("not reproduced (opposite")
    assert ts.verdict(0.1, 0.3, 0.5, directional=False).startswith("reproduced (no large change")
    assert ts.verdict(0.1, 8.0, 1e-4, directional=False).startswith(
        "not reproduced: significant gain"
    )


def test_stats_over_seeds(tmp_path, monkeypatch):
    ts = _module()
    work, out = tmp_path / "work", tmp_path / "out"
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200)
    # stage 1 and balanced + in-batch in seeds 0 and 1; random + in-batch only in seed 1
    rows = {
        (0, "stage1_inbatch"): _eval_json(base, 0.5),
        (1, "stage1_inbatch"): _eval_json(base + 0.02, 0.6),
        (0, "stage2_balanced_inb_plain"): _eval_json(np.clip(base + 0.2, 0, 1), 0.7),
        (1, "stage2_balanced_inb_plain"): _eval_json(np.clip(base + 0.22, 0, 1), 0.7),
        (1, "stage2_random_inb_plain"): _eval_json(np.clip(base + 0.22, 0, 1), 0.7),
    }
    for seed in (0, 1):
        (work / f"seed{seed}").mkdir(parents=True)
    for (seed, name), res in rows.items():
        path = out / "per_query" / f"seed{seed}" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
    argv = [
        "tables_stats",
        "--work",
        str(work),
        "--out",
        str(out),
        "--no-eval",
        "--permutations",
        "500",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    assert ts.main() == 0
    stats = json.loads((out / "tables_stats.json").read_text())
    t3 = stats["tables"]["table3"]
    s1 = t3["In-batch (CLIP-DPR, stage 1)"]
    assert s1["n"] == 2 and s1["seeds"] == [0, 1]
    assert s1["Multi MRR@10"]["mean"] == pytest.approx(base.mean() + 0.01)
    assert s1["Multi MRR@10"]["sd"] == pytest.approx(0.02 / np.sqrt(2))
    assert s1["image share @10 (%)"]["mean"] == pytest.approx(0.55)
    assert t3["Hard negatives: random from top-100 (2) + in-batch"]["n"] == 1
    assert t3["Hard negatives: only texts (2)"]["n"] == 0
    comps = {c["claim"]: c for c in stats["comparisons"]}
    c = comps["Balanced + in-batch beats in-batch stage 1 (CLIP-DPR)"]
    assert c["seeds"] == [0, 1] and c["verdict"] == "reproduced"
    assert c["tests"]["multi"]["p_value"] == pytest.approx(1 / 501)
    r = comps["Balanced + in-batch beats random (ANCE) + in-batch"]
    assert r["seeds"] == [1] and r["tests"]["multi"]["diff"] == 0.0  # identical runs
    assert r["verdict"].startswith("not reproduced")  # paper: balanced ahead; here a tie
    assert comps["Balanced beats random (no in-batch)"]["tests"] == {}
    md = (out / "tables_seeds.md").read_text()
    assert "| In-batch (CLIP-DPR, stage 1) | 2 |" in md and "not yet run" in md
    # the run dir is read only
    monkeypatch.setattr(
        sys, "argv", ["tables_stats", "--work", str(work), "--out", str(work / "x")]
    )
    with pytest.raises(SystemExit, match="inside --work"):
        ts.main()
