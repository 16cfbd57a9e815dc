"""FAISS index over the joint text/image embedding space (torch-free).

``build_index(vectors, doc_ids, modalities, factory=None, target_recall=0.95, encoder=...)``
builds, fills and tunes an inner-product index; ``Index.search`` / ``search_arrays`` query it;
``save_index(index, dir)`` / ``load_index(dir, encoder=...)`` store it, bound to the
embedding space of the encoder's model (``binding``). ``build_index(..., shards=N,
out_dir=)`` builds the same index as N shards of one trained index (``sharded_build``) and
``load_index`` reads such a dir as a ``ShardedIndex`` (``sharded``); every index shares
``base.SearchableIndex``. See ``factory`` for the
default index by corpus size, ``select`` / ``candidates`` for the budget-driven choice
(``build_index(..., target_recall=, max_memory=)``) and ``tune`` for how search parameters
are chosen.
"""

from __future__ import annotations

try:
    import faiss  # noqa: F401 - fail here, naming the extra, rather than deep inside a module
except ImportError as _exc:
    raise ImportError(
        f'faiss is not installed ({_exc}): pip install "univl-fast[cpu]" (or '
        '"univl-fast[gpu]" on a CUDA host, not both)'
    ) from _exc

from univl_fast.index.build import build_index
from univl_fast.index.factory import default_factory
from univl_fast.index.gpu import gpu_count
from univl_fast.index.params import (
    EngineMismatchError,
    IndexConfig,
    IndexFormatError,
    RecallTargetUnreachable,
    SearchParams,
)
from univl_fast.index.search import Index
from univl_fast.index.store import load_index, read_manifest, save_index

__all__ = [
    "build_index",
    "load_index",
    "save_index",
    "read_manifest",
    "Index",
    "IndexConfig",
    "SearchParams",
    "IndexFormatError",
    "EngineMismatchError",
    "RecallTargetUnreachable",
    "default_factory",
    "gpu_count",
]
