"""Index directory: save / load.

Layout (every file written atomically, manifest last so a half-saved dir never loads)::

    index.faiss      faiss.write_index of the CPU index
    doc_ids.txt      one doc id per line, UTF-8, row order (1.2M ids load in ~0.2 s)
    modalities.npy   (n,) uint8: 0 = text, 1 = image
    manifest.json    factory, metric, dim, ntotal, tuned search params, recall@k vs exact,
                     memory, build times, faiss version, the embedding space and encoding
                     of the corpus (``binding``), the engine manifest sha256, and the
                     size + sha256 of each file above

``save_index(index, dir)`` / ``load_index(dir, ...)`` are free functions (as faiss's
``write_index`` / ``read_index``): ``Index`` itself knows nothing of files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from univl_fast.index import binding
from univl_fast.index.files import (  # noqa: F401 - save_index is re-exported here
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    MODALITIES_FILE,
    save_index,
)
from univl_fast.index.params import IndexFormatError
from univl_fast.index.search import Index, encode_modalities
from univl_fast.utils.io import (
    read_json,
    sha256_file,
)

log = logging.getLogger(__name__)


def _check_file(path: Path, expected: dict[str, Any] | None, verify: bool) -> None:
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


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
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


def load_index(
    directory: str | os.PathLike,
    engine_sha256: str | None = None,
    device: str = "auto",
    verify: bool = True,
    *,
    encoder: Any = None,
) -> Index:
    """Read an index directory.

    encoder: the ``univl_fast.runtime.Encoder`` that will encode queries. The index is refused
    with ``EngineMismatchError`` when its vectors are in another embedding space (another
    model); a query encoding (precision, text runtime) other than the corpus's is logged and
    kept on ``Index.encoding_mismatch`` (see ``univl_fast.index.binding``).
    engine_sha256: without an encoder, the engine manifest hash to hold the index to
    (indexes and engines from before embedding spaces were recorded). verify: also check
    each file's sha256 (sizes are always checked). device: "cpu" | "auto"
    (CPU until the GPU path is verified) | "gpu" / "cuda" (required; unverified).
    """
    root = Path(directory)
    manifest = read_manifest(root)
    if manifest.get("layout") == "sharded":  # N shards of one trained index (scale-out)
        from univl_fast.scale.sharded import load_sharded_index

        return load_sharded_index(root, manifest, engine_sha256, verify, encoder=encoder)
    if encoder is not None:
        engine_sha256 = encoder.manifest_sha256
    binding.check_space(root, manifest, getattr(encoder, "embedding_space", None), engine_sha256)
    files = manifest.get("files", {})
    for name in (INDEX_FILE, IDS_FILE, MODALITIES_FILE):
        _check_file(root / name, files.get(name), verify)
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
