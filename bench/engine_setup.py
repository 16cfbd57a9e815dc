"""Cached benchmark set-up shared by the encoder and end-to-end benchmarks: a random-weight
checkpoint (same cost as a trained one) and its exported engine. Each step runs in a
subprocess, so the measuring process never imports torch."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_step(cmd: list[str], what: str) -> None:
    print(f"[setup] {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"[setup] {what} failed (exit {rc})")


def random_checkpoint(model: str, ckpt: Path) -> Path:
    """``model`` (open_clip name or univl-tiny) with seeded random weights, saved once."""
    if not (ckpt / "model.safetensors").is_file():
        code = (
            "import sys; from univl_fast.model import UniVLDR; "
            "UniVLDR.from_config(sys.argv[1], seed=0).save_pretrained(sys.argv[2], "
            "train_config={'stage': 'random-init', 'seed': 0})"
        )
        run_step([sys.executable, "-c", code, model, str(ckpt)], f"random {model} checkpoint")
    return ckpt


# What decides the bytes an export writes and how the runtime reads them back: the export
# package, and the runtime's loaders for the native text tower and the manifest.
EXPORTER_SOURCES = (
    "univl_fast/export",
    "univl_fast/runtime/native_text.py",
    "univl_fast/runtime/manifest.py",
)
VERSION_FILE = "bench_exporter_version.txt"


def exporter_version(repo: Path = REPO) -> str:
    """sha256 over the exporter's Python sources (paths and bytes, sorted), 16 hex digits."""
    h = hashlib.sha256()
    for entry in EXPORTER_SOURCES:
        path = repo / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(repo).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def exported_engine(ckpt: Path, engine: Path, precision: str = "fp32,int8") -> Path:
    """``python -m univl_fast.export`` of ``ckpt`` into ``engine``, reused only when it was
    exported by the exporter code of this checkout (``exporter_version``, stamped beside the
    manifest as VERSION_FILE); any change to that code exports again from scratch."""
    version = exporter_version()
    stamp = engine / VERSION_FILE
    if (engine / "manifest.json").is_file() and stamp.is_file():
        if stamp.read_text().strip() == version:
            return engine
    if engine.exists():
        print(f"[setup] {engine}: exporter code changed, exporting again", file=sys.stderr)
        shutil.rmtree(engine)
    cmd = [sys.executable, "-m", "univl_fast.export", "--checkpoint", str(ckpt)]
    run_step([*cmd, "--out", str(engine), "--precision", precision], "export")
    stamp.write_text(version + "\n")
    return engine
