"""Search-time knobs and build configuration (dataclasses, saved as JSON in the manifest).

Search knobs travel with each call as a ``SearchParams`` object (converted to faiss's
``SearchParameters`` tree), never as mutable index state, so concurrent searches with
different knobs cannot interfere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from univl_fast.errors import UnivlFastError


class IndexError_(UnivlFastError, ValueError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """Base class for index errors that name the offending input."""


class IndexFormatError(IndexError_):
    """An index directory is missing a file, or a file is truncated or corrupt."""


class EngineMismatchError(IndexError_):
    """An index is loaded with an engine other than the one its vectors came from."""


class RecallTargetUnreachable(UnivlFastError, RuntimeError):
    """No index configuration within the memory budget reaches the recall target.

    ``cheapest`` is the smallest configuration measured that does reach it (a dict with its
    factory, params, recall and bytes; None when none does), ``frontier`` every measurement."""

    def __init__(self, message: str, cheapest: dict | None, frontier: list[dict]):
        super().__init__(message)
        self.cheapest = cheapest
        self.frontier = frontier


class ShardTimeoutError(UnivlFastError, TimeoutError):
    """A shard did not answer within its timeout (or its actor died), and partial results
    were not asked for (``search_partial`` returns them)."""


@dataclass(frozen=True)
class SearchParams:
    """Per-call search knobs; ``None`` means "the tuned value from the manifest"."""

    nprobe: int | None = None  # IVF lists scanned per query (ignored by non-IVF indexes)
    k_factor: int | None = None  # re-ranking pool = k_factor * k candidates (refine indexes)
    ef_search: int | None = None  # HNSW search depth (HNSW index, or an IVF's HNSW quantizer)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> SearchParams:
        obj = obj or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    def merged_over(self, default: SearchParams) -> SearchParams:
        """These knobs, with unset ones taken from ``default``."""
        return SearchParams(
            nprobe=self.nprobe if self.nprobe is not None else default.nprobe,
            k_factor=self.k_factor if self.k_factor is not None else default.k_factor,
            ef_search=self.ef_search if self.ef_search is not None else default.ef_search,
        )


@dataclass
class IndexConfig:
    """How an index was built (saved under ``"config"`` in the index manifest)."""

    factory: str  # faiss index_factory string, inner-product metric
    dim: int  # vector dimension
    target_recall: float = 0.95  # tuning goal: recall@k against exact search
    k: int = 10  # the k of recall@k used for tuning
    seed: int = 0  # sampling of training points and fallback tune queries; faiss k-means seed
    train_points_per_centroid: int = 40  # faiss guidance: 39..256
    # training cost knobs (faiss defaults in brackets); PQ k-means in 8-d runs far below peak
    # FLOP/s, so on 2 cores these dominate the build: see build.py
    kmeans_iterations: int = 10  # coarse k-means iterations [faiss Clustering: 25]
    opq_iterations: int = 10  # OPQ alternations [50]
    opq_train_points: int = 16_384  # OPQ sample: 64 per PQ centroid [65,536]
    pq_kmeans_iterations: int = 15  # PQ codebook k-means iterations [25]
    pq_points_per_centroid: int = 128  # PQ codebook sample per centroid [256]
    add_chunk: int = 65_536  # vectors per add() call (progress granularity)
    max_tune_queries: int = 1000  # tune queries beyond this are subsampled
    tune_queries_source: str = "given"  # "given" | tune.FALLBACK_SOURCE
    # how tuning picks among the search parameters reaching the target: "latency" (measured
    # single-query time, the fastest on this machine) | "cost" (estimated bytes touched per
    # query: deterministic, the same parameters under any load)
    tune_by: str = "latency"
    # budget-driven choice (univl_fast.index.select): used when no factory is given
    margin: float = 0.005  # tune to target_recall + margin on the tune split
    held_out_fraction: float = 0.2  # share of the tune queries kept out of tuning, reported
    max_memory: int | None = None  # bytes: codes + re-ranking store + coarse structures
    allow_below_target: bool = False  # keep the best instead of raising (logged loudly)
    selection_sample: int = 131_072  # candidates are compared on this many corpus rows
    # candidates whose single-query speed on the sample is within this band of the fastest's
    # are each filled and tuned at full size and timed against each other there (interleaved),
    # up to ``finalists`` of them: the sample's order of near-ties does not carry to full size
    finalists: int = 3
    finalist_band: float = 0.15
    candidates: list[str] | None = None  # factory strings to compare (None: candidates.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IndexConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})
