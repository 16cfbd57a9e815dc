"""bench/engine_setup.py: a cached benchmark engine is reused only if the exporter's code is
the code that made it (issue 10 section 5)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _engine_setup():
    spec = importlib.util.spec_from_file_location("engine_setup", ROOT / "bench/engine_setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exporter_version_follows_the_exporter_sources(tmp_path):
    es = _engine_setup()
    repo = tmp_path / "repo"
    for entry in es.EXPORTER_SOURCES:
        src = ROOT / entry
        if src.is_dir():
            shutil.copytree(src, repo / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (repo / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / entry)
    assert es.exporter_version(repo) == es.exporter_version(ROOT)  # content, not location
    before = es.exporter_version(repo)
    (repo / "univl_fast/export/__pycache__").mkdir()
    (repo / "univl_fast/export/__pycache__/x.pyc").write_bytes(b"\0")
    assert es.exporter_version(repo) == before  # bytecode is not source
    quant = repo / "univl_fast/export/quantize.py"
    quant.write_text(quant.read_text() + "\n# changed\n")
    changed = es.exporter_version(repo)
    assert changed != before
    loader = repo / "univl_fast/runtime/native_text.py"
    loader.write_text(loader.read_text() + "\n# changed\n")
    third = es.exporter_version(repo)
    assert third not in (before, changed)
    (repo / "univl_fast/export/new_pass.py").write_text("X = 1\n")  # a new module counts too
    assert es.exporter_version(repo) != third
