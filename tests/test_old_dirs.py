"""Index and engine dirs written by earlier code still load and answer as they did.

``tests/fixtures/v2_dirs`` was written by ``tests/fixtures/make_v2_dirs.py`` (the commit is in
its ``expected.json``): an exact index, a 2-shard IVF index, the engine's manifest, and the
top-10 each index answered for four queries then.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import univl_fast
from univl_fast.index import load_index

FIXTURES = Path(__file__).parent / "fixtures" / "v2_dirs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def old_engine(random_tiny_checkpoint, tmp_path_factory) -> Path:
    """The old engine dir: the old manifest beside the graphs of the same seed's export, made
    as make_v2_dirs.py made them (the same embedding space)."""
    from univl_fast.export.build import ModelSpec, export_engine
    from univl_fast.export.config import ExportConfig
    from univl_fast.model import UniVLDR

    out = tmp_path_factory.mktemp("old") / "engine"
    model = UniVLDR.from_pretrained(random_tiny_checkpoint)
    spec = ModelSpec.from_model_config(model.config.to_json(), {"checkpoint": "random univl-tiny"})
    export_engine(model.clip, spec, out, ExportConfig(precisions=["fp32", "int8"]), progress=False)
    manifest = json.loads((FIXTURES / "engine" / "manifest.json").read_text())
    fresh = json.loads((out / "manifest.json").read_text())
    assert fresh["embedding_space"] == manifest["embedding_space"]  # same weights, vocab, ...
    # the graphs' bytes also hold per-node debug metadata (export stack traces, which differ
    # between processes): the old records are refreshed to today's bytes, nothing else is
    for name, rec in manifest["files"].items():
        rec.update(size=(out / name).stat().st_size, sha256=sha256(out / name))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.mark.parametrize("name", ["index", "sharded"])
def test_old_index_dirs_load_and_answer_as_before(old_engine, name):
    engine = univl_fast.load(
        old_engine,
        FIXTURES / name,
        precision=EXPECTED["precision"],
        text_runtime=EXPECTED["text_runtime"],
        batching=False,
    )
    try:
        assert engine.encoding_mismatch is None
        hits = engine.search(EXPECTED["queries"], k=10)
        assert [[h.doc_id for h in row] for row in hits] == EXPECTED[name]
    finally:
        engine.close()


@pytest.mark.parametrize("name", ["index", "sharded"])
def test_old_index_dirs_load_with_the_int8_engine(old_engine, name):
    engine = univl_fast.load(old_engine, FIXTURES / name, precision="int8", batching=False)
    try:
        assert "int8" in (engine.encoding_mismatch or "")  # the corpus was encoded at fp32
        hits = engine.search(EXPECTED["queries"], k=10)
        assert [len(row) for row in hits] == [10] * len(EXPECTED["queries"])
        # the int8 query encoder still finds most of what fp32 found
        overlap = [
            len({h.doc_id for h in row} & set(want))
            for row, want in zip(hits, EXPECTED[name], strict=True)
        ]
        assert sum(overlap) >= 5 * len(overlap), overlap
    finally:
        engine.close()


def test_old_dirs_verify_their_files():
    for name in ("index", "sharded"):
        index = load_index(FIXTURES / name, verify=True, device="cpu")
        assert index.ntotal == 320
        assert (
            index.manifest["embedding_space"]["id"]
            == json.loads((FIXTURES / "engine" / "manifest.json").read_text())["embedding_space"][
                "id"
            ]
        )
