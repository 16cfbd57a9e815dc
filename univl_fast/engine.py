"""The serving API: ``Engine`` = exported encoder + index + the compiled query batcher (torch-free).

``univl_fast.load(engine_dir, index=index_dir)`` returns an :class:`Engine`. Its ``search`` is
safe to call from many threads at once: with batching on (the default), concurrent calls are
coalesced by ``univl_fast.batching.QueryBatcher`` into one batched encoder run and one batched
index search on the batcher's worker thread, and every caller gets back its own rows. With
``batching=False`` each call encodes and searches on its own (the plain path, the benchmark's
baseline).

Query semantics (the same on both paths):
- an empty query list returns ``[]``;
- an empty or whitespace-only query string returns an empty hit list for that query, while the
  other queries of the call are searched normally;
- ``k < 1`` raises ``ValueError``; ``k`` larger than the corpus returns every document;
- a query the encoder rejects (text that is not valid Unicode, e.g. a lone surrogate) makes
  the call raise ``SearchError`` (a ValueError) naming each bad query; the error carries the
  hits of the call's other queries, and concurrent callers are not affected;
- searching without an index raises ``RuntimeError`` naming ``load(..., index=...)``;
- an index whose vectors are in another embedding space (another model) is refused on load;
  one encoded at another precision than the queries is loaded and the difference reported
  (``Engine.encoding_mismatch``, logged); see ``univl_fast.index.binding``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from univl_fast.errors import UnivlFastError
from univl_fast.types import MODALITIES, Hit

__all__ = [
    "Engine",
    "EngineConfig",
    "SearchError",
    "load",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_US",
]

# Tuned with bench/bench_e2e.py (bench/results/e2e.md). Closed-loop clients resubmit while the
# previous batch runs, so by the time the worker is free they are all queued: any wait of
# 200-1000 us coalesced all 16 clients of the benchmark into each batch, 0 fragmented them
# (mean batch 9 of 16), and a wait only adds latency when fewer than max_batch queries are
# queued (1 client: up to max_wait_us per call). 64 covers the 64-client case in one batch.
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_US = 500


@dataclass
class EngineConfig:
    """How an Engine serves searches (saved by benchmarks beside their results)."""

    batching: bool = True  # coalesce concurrent search calls through the compiled batcher
    max_batch: int = DEFAULT_MAX_BATCH  # most queries in one coalesced encoder run / index search
    max_wait_us: int = DEFAULT_MAX_WAIT_US  # longest a query waits for others to join its batch
    # Batch workers taking batches from the one queue. With W > 1 on the CPU backend
    # each worker encodes on its own cores/W-thread text session while another batch runs.
    # Measured on the 2-core box (bench/results/e2e.md): 2 workers gave no steady throughput
    # gain over 1 (-8% to +11% by client count over three interleaved runs) and a worse p99, so
    # the default stays 1.
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchError(UnivlFastError, ValueError):
    """Some queries of a ``search`` call could not be encoded (e.g. text that is not valid
    Unicode). ``errors``: [(position in the call, reason)]; ``results``: the hits of the other
    queries (None at the failed positions), so one bad query never loses the others."""

    def __init__(self, errors: list[tuple[int, str]], results: list[list[Hit] | None]):
        shown = "; ".join(f"query {i}: {reason}" for i, reason in errors[:10])
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        super().__init__(f"Engine.search: {len(errors)} bad query(ies): {shown}{more}")
        self.errors = errors
        self.results = results


class _Failed:
    """Marker result for one query the encoder rejected (kept inside the batch's results)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


# One query of a coalesced batch: (text, k, modality restriction or None).
_Item = tuple[str, int, "str | None"]


class Engine:
    """Encoder + optional Index + batcher.

    Build it with :func:`load`. ``encode_*`` delegate to the runtime Encoder; ``search`` encodes
    queries and searches the index. Use as a context manager or call :meth:`close` to stop the
    batcher's worker thread.
    """

    def __init__(self, encoder: Any, index: Any = None, config: EngineConfig | None = None):
        self.encoder = encoder
        self.index = index
        self.config = config or EngineConfig()
        if self.config.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.config.max_batch}")
        if self.config.max_wait_us < 0:
            raise ValueError(f"max_wait_us must be >= 0, got {self.config.max_wait_us}")
        if self.config.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.config.workers}")
        self._closed = False
        self._close_lock = threading.Lock()
        self._batcher = None
        self.workers = 1
        self._narrow = None  # encoder view with a cores/workers-thread text session
        self._busy = 0  # batches inside _run_worker_batch (guarded by _busy_lock)
        self._busy_lock = threading.Lock()
        if self.config.batching and index is not None:
            from univl_fast.batching import QueryBatcher

            self.workers = int(self.config.workers)
            fn = self._run_batch
            if self.workers > 1:
                from univl_fast.runtime.backends import ThreadSettings, physical_cores

                per_worker = max(1, physical_cores() // self.workers)
                self._narrow = encoder.with_text_threads(ThreadSettings(intra_op=per_worker))
                fn = self._run_worker_batch
            self._batcher = QueryBatcher(
                fn, int(self.config.max_batch), int(self.config.max_wait_us), self.workers
            )

    # ------------------------------------------------------------------ encoding
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.encoder.dim)

    @property
    def manifest_sha256(self) -> str:
        """sha256 of the engine's manifest.json (recorded by indexes, for information)."""
        return str(self.encoder.manifest_sha256)

    @property
    def embedding_space(self) -> dict[str, Any] | None:
        """The engine's embedding space (model weights hash + dim) that indexes are bound to."""
        return self.encoder.embedding_space

    @property
    def encoding_mismatch(self) -> str | None:
        """How the queries' encoding (precision, text runtime) differs from the index corpus's
        (None: the same, unknown, or no index)."""
        return getattr(self.index, "encoding_mismatch", None)

    def encode_queries(self, texts: Sequence[str], on_error: str = "raise") -> Any:
        """Queries -> (n, d) float32 unit rows (``on_error``: see ``runtime.Encoder``)."""
        return self.encoder.encode_queries(list(texts), on_error=on_error)

    def encode_text_docs(self, texts: Sequence[str], on_error: str = "raise") -> Any:
        """Text documents -> (n, d) float32 unit rows."""
        return self.encoder.encode_text_docs(list(texts), on_error=on_error)

    def encode_image_docs(
        self, images: Sequence[Any], captions: Sequence[str], on_error: str = "raise"
    ) -> Any:
        """Image documents (paths, bytes or PIL images, with their captions) -> (n, d) float32
        unit rows: L2-normalize(image embedding + caption embedding)."""
        return self.encoder.encode_image_docs(list(images), list(captions), on_error=on_error)

    # ------------------------------------------------------------------ search
    def search(
        self, queries: Sequence[str], k: int = 10, modality: str | None = None
    ) -> list[list[Hit]]:
        """Encode ``queries`` and search the index.

        queries: list of n strings. k: hits per query (>= 1; more than the corpus gives all
        documents). modality: None (joint index), "text" or "image" (restrict to one modality,
        the paper's Text / Image settings).
        Returns n lists of Hit(doc_id, modality, score), best first; an empty or whitespace-only
        query gets an empty list.
        """
        items = self._check_search_args(queries, k, modality)
        if not items:
            return []
        if self._batcher is not None:
            try:
                results = self._batcher.submit(items)
            except RuntimeError:
                if self._closed:
                    raise RuntimeError("Engine.search: the engine is closed") from None
                raise
        else:
            results = self._run_batch(items)
        failed = [(i, r.reason) for i, r in enumerate(results) if isinstance(r, _Failed)]
        if failed:
            partial = [None if isinstance(r, _Failed) else r for r in results]
            raise SearchError(failed, partial)
        return results

    def _check_search_args(
        self, queries: Sequence[str], k: int, modality: str | None
    ) -> list[_Item]:
        if self._closed:
            raise RuntimeError("Engine.search: the engine is closed")
        if self.index is None:
            raise RuntimeError(
                "Engine.search: no index loaded; load one with "
                "univl_fast.load(engine_dir, index=index_dir)"
            )
        if isinstance(queries, str):
            raise TypeError("Engine.search: queries must be a list of strings, got one string")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"Engine.search: k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"Engine.search: k must be >= 1, got {k}")
        if modality is not None and modality not in MODALITIES:
            raise ValueError(
                f"Engine.search: modality must be None, 'text' or 'image', got {modality!r}"
            )
        items: list[_Item] = []
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(
                    f"Engine.search: query {i} must be a string, got {type(q).__name__}"
                )
            items.append((q, int(k), modality))
        return items

    def _run_worker_batch(self, items: list[_Item]) -> list[Any]:
        """A batch on one of several workers. Alone, it encodes with the full thread count
        (lowest latency under light load); while another batch is running it uses the
        cores/workers-thread session, so concurrent batches do not fight over one thread pool.
        """
        with self._busy_lock:
            self._busy += 1
            alone = self._busy == 1
        try:
            return self._run_batch(items, self.encoder if alone else self._narrow)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _run_batch(self, items: list[_Item], encoder: Any = None) -> list[Any]:
        """Encode and search a batch of items -> per item a list of Hit, or ``_Failed`` for a
        query the encoder rejected (e.g. text with lone surrogates).

        Called on the batcher's worker thread (batched path) or on the caller's (plain path).
        One encoder run for the whole batch; items with the same modality restriction share one
        index search at their largest k, then each item's hits are cut to its own k. Any other
        exception propagates: the batcher then re-runs each caller's request alone, so it
        reaches only the callers whose items cause it.
        """
        results: list[Any] = [[] for _ in items]
        live = [i for i, (text, _k, _m) in enumerate(items) if text.strip()]
        if not live:
            return results
        encoder = encoder if encoder is not None else self.encoder
        enc = encoder.encode_queries([items[i][0] for i in live], on_error="skip")
        for err in enc.errors:
            results[live[err.index]] = _Failed(err.reason)
        vectors = enc.embeddings  # (n_good, d) float32, rows for the positions enc.indices
        groups: dict[str | None, list[int]] = {}
        for row, pos in enumerate(enc.indices.tolist()):
            groups.setdefault(items[live[pos]][2], []).append(row)
        for modality, rows in groups.items():
            positions = [live[int(enc.indices[r])] for r in rows]
            k_max = max(items[i][1] for i in positions)
            q = vectors if len(rows) == len(vectors) else np.ascontiguousarray(vectors[rows])
            hits = self.index.search(q, k_max, modality=modality)
            for i, row_hits in zip(positions, hits, strict=True):
                k = items[i][1]
                results[i] = row_hits if len(row_hits) <= k else row_hits[:k]
        return results

    # ------------------------------------------------------------------ lifecycle
    def batcher_stats(self) -> dict[str, Any]:
        """The compiled batcher's counters (empty when batching is off)."""
        if self._batcher is None:
            return {}
        return dict(self._batcher.stats())

    def close(self) -> None:
        """Stop the batcher: batches in flight finish, later searches raise RuntimeError."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._batcher is not None:
                self._batcher.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: a forgotten Engine must not leave a thread behind
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        n = self.index.ntotal if self.index is not None else None
        return (
            f"Engine(dim={getattr(self.encoder, 'dim', '?')}, index_docs={n}, "
            f"batching={self.config.batching}, max_batch={self.config.max_batch}, "
            f"max_wait_us={self.config.max_wait_us}, workers={self.workers})"
        )


def load(
    engine_dir: str | os.PathLike,
    index: str | os.PathLike | None = None,
    precision: str | None = None,
    backend: str | None = None,
    *,
    batching: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_us: int = DEFAULT_MAX_WAIT_US,
    workers: int = 1,
    **encoder_kwargs: Any,
) -> Engine:
    """Load an exported engine dir and, optionally, an index dir built from it.

    precision: "fp32" | "fp16" | "int8" (default: the fastest whose parity passed).
    backend: "onnxruntime" | "tensorrt" (default: the best available here).
    batching / max_batch / max_wait_us / workers: how concurrent ``search`` calls are coalesced
    (see :class:`EngineConfig`).
    Other keyword arguments go to ``univl_fast.runtime.Encoder``.
    Raises ``EngineMismatchError`` (a ValueError) when the index's vectors are in another
    embedding space; a corpus encoded at another precision is loaded and reported
    (``Engine.encoding_mismatch``).
    """
    from univl_fast.runtime import Encoder

    engine_dir = Path(engine_dir)
    encoder = Encoder(engine_dir, precision=precision, backend=backend, **encoder_kwargs)
    idx = None
    if index is not None:
        from univl_fast.index import load_index

        idx = load_index(index, encoder=encoder)
    config = EngineConfig(
        batching=batching, max_batch=max_batch, max_wait_us=max_wait_us, workers=workers
    )
    return Engine(encoder, idx, config)
