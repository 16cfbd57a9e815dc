"""``univl-fast demo``: its pieces (index building through an engine, tables, resume logic) and,
marked slow, the whole flow at tiny scale with a few training steps, run twice (the second run
resumes: every stage is skipped)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.engine_helpers import encode_corpus
from tests.fixtures_engine import limits_refusing_int8
from tests.host_routes import int8_route
from univl_fast import demo
from univl_fast.utils.io import atomic_write_json


def _args(workdir, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    argv = ["--workdir", str(workdir)]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


def test_build_engine_index_matches_direct_encoding(tmp_path, tiny_engine, synth_tiny):
    from univl_fast.index import load_index
    from univl_fast.runtime import Encoder

    enc = Encoder(tiny_engine, precision="fp32")
    manifest = demo.build_engine_index(
        tiny_engine, synth_tiny, tmp_path / "idx", "fp32", factory="Flat", cache=tmp_path / "vec"
    )
    assert manifest["engine_sha256"] == enc.manifest_sha256
    idx = load_index(tmp_path / "idx", engine_sha256=enc.manifest_sha256)
    vecs, ids, mods = encode_corpus(enc, synth_tiny)
    assert idx.doc_ids == ids and idx.modalities == mods
    got = idx.faiss_index.reconstruct_n(0, idx.ntotal)
    np.testing.assert_allclose(got, vecs, atol=1e-5)
    # resumable: the cached vectors are reused (same result, no re-encoding needed)
    assert (tmp_path / "vec" / "text_docs_fp32.npy").is_file()
    again = demo.build_engine_index(
        tiny_engine, synth_tiny, tmp_path / "idx2", "fp32", factory="Flat", cache=tmp_path / "vec"
    )
    assert again["ntotal"] == manifest["ntotal"]


def test_results_table_and_example_format():
    from univl_fast.evaluation.metrics import KEYS

    block = {k: 0.5 for k in KEYS}
    block["queries"] = 10
    rows = {
        "PyTorch": {
            **block,
            "text": dict(block, **{"MRR@10": 0.25}),
            "image": dict(block, **{"MRR@10": 0.75}),
            "multi": block,
        },
        "int8 engine": block,
    }
    table = demo.results_table(rows)
    assert "| PyTorch | 50.00 |" in table
    assert "| PyTorch | 25.00 | 75.00 | 50.00 |" in table  # Text / Image / Multi
    ex = {
        "query": "q?",
        "answerable_by": "text",
        "positive_rank": None,
        "top": [
            {
                "rank": 1,
                "doc_id": "d1",
                "modality": "text",
                "score": 0.5,
                "positive": False,
                "text": "x" * 200,
            }
        ],
    }
    text = demo.format_example(ex)
    assert "positive not in the top 100" in text and "..." in text


def test_fresh_refuses_a_foreign_directory(tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("data")
    with pytest.raises(SystemExit, match="not a demo workdir"):
        demo.Demo(_args(foreign, fresh=True)).prepare()
    assert (foreign / "keep.txt").is_file()


def test_changed_settings_refused(tmp_path):
    demo.Demo(_args(tmp_path / "w", scale="tiny")).prepare()
    with pytest.raises(SystemExit, match="--fresh"):
        demo.Demo(_args(tmp_path / "w", scale="small")).prepare()


def test_completed_stage_is_skipped(tmp_path, capsys):
    d = demo.Demo(_args(tmp_path / "w", scale="tiny"))
    d.prepare()
    calls = []
    info = d.run_stage(1, "data", "x", lambda: calls.append(1) or {"n": 1})
    again = d.run_stage(1, "data", "x", lambda: calls.append(2) or {"n": 2})
    assert calls == [1] and info["n"] == again["n"] == 1
    assert "complete, skipped" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, capsys):
    """The whole flow at tiny scale (2 training steps per stage), then a resumed re-run."""
    from univl_fast.cli import main

    work = tmp_path / "demo"
    argv = [
        "demo",
        "--workdir",
        str(work),
        "--scale",
        "tiny",
        "--stage1-steps",
        "2",
        "--stage2-steps",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "PyTorch stage 2 (UniVL-DR), exact" in out.out
    # int8 where this host verified it at export, else fp32 and the reason, never a traceback
    int8 = int8_route(work / "engine")
    final = "int8" if int8.verified else "fp32"
    assert "fp32 engine + index" in out.out
    assert ("int8 engine + index" in out.out) is int8.verified
    summary = next(ln for ln in out.out.splitlines() if ln.startswith("engine precision: "))
    assert summary.startswith(f"engine precision: {final}")
    if not int8.verified:
        assert "int8: no verified route on this host" in summary and int8.reason in summary
    assert "text-answerable" in out.out and "image-answerable" in out.out
    # the closing hint serves the demo's own engine, index and data
    hint = next(ln for ln in out.out.splitlines() if "univl-fast serve" in ln)
    shown = {f: Path(hint.split(f"{f} ")[1].split()[0]) for f in ("--engine", "--index", "--data")}
    assert shown["--engine"] == work / "engine"
    assert shown["--index"] == work / f"index_{final}"
    assert shown["--data"] == work / "data"
    assert (shown["--index"] / "manifest.json").is_file() and (
        shown["--data"] / "imgs.tsv"
    ).is_file()
    # the demo ends with the path of its HTML report (Figure 4 inlined)
    page = Path(next(ln for ln in out.out.splitlines() if ln.startswith("report: ")).split()[1])
    assert page == work / "report.html"
    html_text = page.read_text()
    assert html_text.count("data:image/png;base64,") >= 1 and "PyTorch stage 2" in html_text
    fig = json.loads((work / "embeddings.json").read_text())
    assert [p["title"] for p in fig["panels"]][0].startswith("In-batch")
    assert len(fig["kinds"]) == 3 * demo.FIGURE_ITEMS
    results = json.loads((work / "results.json").read_text())
    assert len(results) == (4 if int8.verified else 3)
    torch_row = results["PyTorch stage 2 (UniVL-DR), exact"]
    fp32_row = next(v for k, v in results.items() if k.startswith("fp32 engine"))
    # fp32 engine + exact (Flat at this size) index reproduces PyTorch exact search
    assert fp32_row["MRR@10"] == pytest.approx(torch_row["MRR@10"], abs=0.01)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("complete, skipped") == len(demo.STAGES)


def _trained_workdir(work: Path, checkpoint: Path, data: Path) -> demo.Demo:
    """A demo workdir whose data and training stages are complete (the random tiny checkpoint
    standing in for both trained stages), so the run starts at the export."""
    d = demo.Demo(_args(work, scale="tiny"))
    d.prepare()
    shutil.copytree(data, d.data)
    for ckpt in (d.stage1, d.stage2):
        shutil.copytree(checkpoint, ckpt)
    d.mined.mkdir()
    for stage in ("data", "stage1", "mine", "stage2"):
        atomic_write_json(d._marker(stage), {"test_queries": 1} if stage == "data" else {})
    return d


@pytest.mark.slow
def test_demo_goes_on_with_fp32_where_int8_has_no_verified_route(
    tmp_path, capsys, monkeypatch, random_tiny_checkpoint, synth_tiny
):
    """A host whose int8 kernels miss parity (simulated: the export's int8 limits cannot be
    met, so the engine's manifest has fp32 only and records why): the demo says so in one line
    and indexes, evaluates and searches with fp32 to the end, naming the precision it ended
    with and why. (It used to die with a traceback at the index stage.)"""
    from univl_fast.export.config import ExportConfig

    monkeypatch.setattr(ExportConfig, "limits", limits_refusing_int8(ExportConfig.limits))
    d = _trained_workdir(tmp_path / "demo", Path(random_tiny_checkpoint), Path(synth_tiny))
    assert d.run() == 0
    out = capsys.readouterr()
    int8 = int8_route(d.engine)
    assert not int8.verified and "int8 missed parity" in int8.reason
    said = [ln for ln in out.err.splitlines() if "int8: no verified route on this host" in ln]
    assert len(said) == 1 and said[0].endswith("going on with fp32"), said
    assert int8.reason in said[0]
    assert "Traceback" not in out.err
    assert f"engine precision: fp32; int8: no verified route on this host ({int8.reason})" in (
        out.out
    )
    results = json.loads((d.work / "results.json").read_text())
    assert any(k.startswith("fp32 engine") for k in results)
    assert not any(k.startswith("int8 engine") for k in results)
    assert (d.index["fp32"] / "manifest.json").is_file() and not d.index["int8"].exists()
    examples = json.loads((d._marker("examples")).read_text())
    assert examples["precision"] == "fp32" and len(examples["examples"]) == 2
    hint = next(ln for ln in out.out.splitlines() if "univl-fast serve" in ln)
    assert f"--index {d.index['fp32']}" in hint
