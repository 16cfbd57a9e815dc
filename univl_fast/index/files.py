"""Index directory layout and its writer, ``save_index(index, dir)``.

The writer needs only the attributes every ``Index`` has (``faiss_index``, ``doc_ids``,
``modality_codes``, ``manifest``), so this module does not import ``search``: ``Index.save``
and ``store.load_index`` both build on it without an import cycle. Every file is written
atomically, the manifest last, so a half-saved directory never loads.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from univl_fast.utils.io import atomic_open, atomic_write_bytes, atomic_write_json, sha256_file


class SavableIndex(Protocol):
    """What the writer reads of an index (``univl_fast.index.search.Index`` has it)."""

    faiss_index: faiss.Index
    doc_ids: list[str]
    modality_codes: np.ndarray
    manifest: dict[str, Any]


INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.txt"
MODALITIES_FILE = "modalities.npy"
MANIFEST_FILE = "manifest.json"


def save_index(index: SavableIndex, directory: str | os.PathLike) -> None:
    """Write ``index`` to ``directory`` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / INDEX_FILE, "wb") as fh:
        faiss.write_index(index.faiss_index, faiss.PyCallbackIOWriter(fh.write))
    atomic_write_bytes(out / IDS_FILE, ("\n".join(index.doc_ids) + "\n").encode("utf-8"))
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(index.modality_codes, dtype=np.uint8))
    atomic_write_bytes(out / MODALITIES_FILE, buf.getvalue())
    files = {
        name: {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
        for name in (INDEX_FILE, IDS_FILE, MODALITIES_FILE)
    }
    manifest = dict(index.manifest)
    manifest["files"] = files
    atomic_write_json(out / MANIFEST_FILE, manifest)
    index.manifest = manifest
