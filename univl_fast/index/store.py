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

from univl_fast.index.files import (  # noqa: F401 - re-exported here
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    MODALITIES_FILE,
    save_index,
)
from univl_fast.index.reader import (  # noqa: F401 - read_manifest is re-exported here
    load_single_index,
    read_manifest,
)
from univl_fast.index.search import Index
from univl_fast.index.sharded import is_sharded, load_sharded_index

log = logging.getLogger(__name__)


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
    if is_sharded(manifest):  # N shards of one trained index
        return load_sharded_index(root, manifest, engine_sha256, verify, encoder=encoder)
    return load_single_index(root, manifest, engine_sha256, device, verify, encoder)
