"""Engine dirs for tests that edit a manifest without copying the graphs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from univl_fast.utils.io import read_json


def engine_copy(src: Path, dst: Path, edit=None) -> Path:
    """``src``'s files linked into ``dst`` with a copied manifest, edited by ``edit(m)``."""
    for path in src.rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    manifest = read_json(src / "manifest.json")
    if edit is not None:
        edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst
