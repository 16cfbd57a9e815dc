"""Cached benchmark set-up shared by the encoder and end-to-end benchmarks: a random-weight
checkpoint (same cost as a trained one) and its exported engine. Each step runs in a
subprocess, so the measuring process never imports torch."""

from __future__ import annotations

import json
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


def exported_engine(ckpt: Path, engine: Path, precision: str = "fp32,int8") -> Path:
    """``python -m univl_fast.export`` of ``ckpt`` into ``engine``, unless already there (an
    engine from an exporter older than the native text tower is exported again)."""
    manifest = engine / "manifest.json"
    if not manifest.is_file() or "native" not in json.loads(manifest.read_text()):
        cmd = [sys.executable, "-m", "univl_fast.export", "--checkpoint", str(ckpt)]
        run_step([*cmd, "--out", str(engine), "--precision", precision], "export")
    return engine
