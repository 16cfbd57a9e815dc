"""The engine directory's ``manifest.json``: reading and verifying it (torch-free).

The exporter (``univl_fast.export.manifest``) writes it last, atomically; it lists every file
of the engine with its sha256 and size. Loading verifies each file the runtime will use, so
a modified or truncated graph is refused with a message naming the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from univl_fast.errors import UnivlFastError
from univl_fast.utils.io import read_json, sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT = "univl-fast-engine"
FORMAT_VERSION = 1


class EngineError(UnivlFastError, ValueError):
    """The engine directory is missing, incomplete, of another format or was modified."""


def manifest_sha256(engine_dir: str | os.PathLike) -> str:
    """sha256 of ``manifest.json``'s bytes: identifies one export of an engine (changes with
    added plans or a re-export). Indexes record it for information and bind to the engine's
    ``embedding_space`` instead (``univl_fast.index.binding``)."""
    return hashlib.sha256((Path(engine_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def load_manifest(engine_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check ``manifest.json`` (format, version, required keys)."""
    root = Path(engine_dir)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise EngineError(f"engine {root}: directory not found")
    if not path.is_file():
        raise EngineError(
            f"engine {root}: no {MANIFEST_NAME} (not an engine dir, or its export did not finish; "
            "re-run python -m univl_fast.export)"
        )
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise EngineError(f"engine {root}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EngineError(f"{path}: not a univl-fast engine manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineError(
            f"{path}: engine format version {version}, this runtime reads {FORMAT_VERSION}; "
            "re-export the engine with this version of univl_fast"
        )
    for key in ("files", "graphs", "embed_dim", "tokenizer", "preprocess", "parity"):
        if key not in manifest:
            raise EngineError(f"{path}: missing key {key!r}")
    return manifest


def verify_file(engine_dir: str | os.PathLike, manifest: dict[str, Any], rel: str) -> Path:
    """Check one engine file against its manifest entry (size, then sha256); return its path."""
    root = Path(engine_dir)
    entry = manifest["files"].get(rel)
    if entry is None:
        raise EngineError(f"engine {root}: {rel} is not listed in {MANIFEST_NAME}")
    path = root / rel
    if not path.is_file():
        raise EngineError(f"engine {root}: {rel} is listed in {MANIFEST_NAME} but missing")
    size = path.stat().st_size
    if size != entry["size"]:
        raise EngineError(
            f"engine {root}: {rel} was modified ({size} bytes, manifest says {entry['size']}); "
            "refusing to load it"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise EngineError(
            f"engine {root}: {rel} was modified (sha256 {digest[:12]}..., manifest says "
            f"{entry['sha256'][:12]}...); refusing to load it"
        )
    return path
