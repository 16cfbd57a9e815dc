"""Reading one index directory (the layout in ``univl_fast.index.files``): the manifest, the
size / sha256 check of each file, and the loader of a single (unsharded) index dir. Both
``store.load_index`` and the sharded reader (``univl_fast.index.sharded``) build on it, so
neither imports the other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from univl_fast.index import binding
from univl_fast.index.files import IDS_FILE, INDEX_FILE, MANIFEST_FILE, MODALITIES_FILE
from univl_fast.index.params import IndexFormatError
from univl_fast.index.search import Index, encode_modalities
from univl_fast.utils.io import read_json, sha256_file

log = logging.getLogger(__name__)


def check_file(path: Path, expected: dict[str, Any] | None, verify: bool) -> None:
    if not path.is_file():
        raise IndexFormatError(f"{path}: file missing from the index directory")
    if expected is None:
        return
    size = path.stat().st_size
    if size != expected.get("bytes"):
        raise IndexFormatError(
            f"{path}: {size} bytes but the manifest records {expected.get('bytes')} "
            "(truncated or overwritten; rebuild the index)"
        )
    if verify and sha256_file(path) != expected.get("sha256"):
        raise IndexFormatError(f"{path}: sha256 differs from the manifest (corrupt file)")


def read_manifest(directory: Any) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise IndexFormatError(f"{path}: not an index directory (no {MANIFEST_FILE})")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise IndexFormatError(str(exc)) from None
    if not isinstance(manifest, dict) or "factory" not in manifest:
        raise IndexFormatError(f"{path}: not an index manifest")
    return manifest


def load_single_index(
    root: Path,
    manifest: dict[str, Any],
    engine_sha256: str | None,
    device: str,
    verify: bool,
    encoder: Any = None,
) -> Index:
    """The unsharded index in ``root`` (its ``manifest`` already read); see ``store.load_index``."""
    if encoder is not None:
        engine_sha256 = encoder.manifest_sha256
    binding.check_space(root, manifest, getattr(encoder, "embedding_space", None), engine_sha256)
    files = manifest.get("files", {})
    for name in (INDEX_FILE, IDS_FILE, MODALITIES_FILE):
        check_file(root / name, files.get(name), verify)
    try:
        fidx = faiss.read_index(str(root / INDEX_FILE))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise IndexFormatError(f"{root / INDEX_FILE}: not a readable faiss index ({msg})") from None
    text = (root / IDS_FILE).read_bytes().decode("utf-8")
    doc_ids = text.split("\n")
    if doc_ids and doc_ids[-1] == "":
        doc_ids.pop()
    try:
        codes = np.load(root / MODALITIES_FILE, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{root / MODALITIES_FILE}: unreadable ({exc})") from None
    n = int(fidx.ntotal)
    if len(doc_ids) != n or codes.shape != (n,) or int(manifest.get("ntotal", n)) != n:
        raise IndexFormatError(
            f"{root}: faiss index has {n} rows, {IDS_FILE} {len(doc_ids)}, {MODALITIES_FILE} "
            f"{codes.shape[0] if codes.ndim else 0}, manifest {manifest.get('ntotal')}"
        )
    if int(fidx.d) != int(manifest.get("dim", fidx.d)):
        raise IndexFormatError(f"{root}: faiss index dim {fidx.d} != manifest {manifest['dim']}")
    index = Index(fidx, doc_ids, encode_modalities(codes.astype(np.uint8)), manifest, device=device)
    index.encoding_mismatch = binding.encoding_mismatch(
        manifest, getattr(encoder, "encoding", None)
    )
    if index.encoding_mismatch:
        log.warning("%s: %s", root, index.encoding_mismatch)
    return index
