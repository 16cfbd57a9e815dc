"""The serving API: ``Engine`` = exported encoder + index + the compiled query batcher (torch-free).

``univl_fast.load(engine_dir, index=index_dir)`` returns an :class:`Engine`. Its ``search`` is
safe to call from many threads at once: with batching on (the default), concurrent calls are
coalesced by ``univl_fast.search.batching.QueryBatcher`` into one batched encoder run and one
batched index search on the batcher's worker thread, and every caller gets back its own rows. With
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

Backpressure and deadlines (for services; ``univl_fast.errors``):
- with batching on, at most ``max_queue`` queries wait for the batcher (default
  ``16 * max_batch``); a call that would overflow the queue raises ``Overloaded`` at once
  (``.limit`` = max_queue, ``.retry_after_s`` = a hint from the recent batch time);
- ``search(..., timeout=s)`` raises ``DeadlineExceeded`` (``.timeout_s`` = s) when the hits are
  not ready within s seconds. A call still queued then is removed and never run; one whose batch
  is already running is abandoned (the batch finishes for the others, its rows are dropped).
  With ``batching=False`` there is no queue: the call runs on the caller's thread and the
  deadline is checked after encoding and after the index search, so it raises
  ``DeadlineExceeded`` at the first of those points past the deadline (it cannot interrupt a
  stage that is running);
- ``stats()`` returns the same counters on both paths (queue depth, batch sizes, rejections,
  deadlines; see ``univl_fast.search.batching.STATS_DOC``).

Fork safety: an Engine made (and used) before ``os.fork()`` works in the child, as in
gunicorn ``--preload`` or a ``multiprocessing`` fork pool: the batcher restarts its workers in
the child, the compiled kernels make their own threads there, and the encoder's sessions are
re-opened on first use (ONNX Runtime is not fork-safe: a lock of its thread pool may be held
at fork() by a thread that exists only in the parent). That costs each child one session load
and its own copy of the model weights; the index is shared copy-on-write. faiss's OpenMP
regions entered from the thread that forked run single-threaded in the child (libgomp has no
fork handler); other threads, such as the batcher's, use all cores.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from univl_fast.errors import DeadlineExceeded, UnivlFastError
from univl_fast.interfaces import QueryEncoder, SearchIndex
from univl_fast.runtime import Encoder
from univl_fast.runtime.backends import ThreadSettings, physical_cores
from univl_fast.search.batching import DEFAULT_QUEUE_FACTOR, QueryBatcher
from univl_fast.types import MODALITIES, Hit
from univl_fast.utils import fork_exit

__all__ = [
    "Engine",
    "EngineConfig",
    "SearchError",
    "load",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_US",
    "DEFAULT_QUEUE_FACTOR",
]

logger = logging.getLogger(__name__)

# Tuned with bench/bench_e2e.py (bench/results/e2e.md). Closed-loop clients resubmit while the
# previous batch runs, so by the time the worker is free they are all queued: any wait of
# 200-1000 us coalesced all 16 clients of the benchmark into each batch, 0 fragmented them
# (mean batch 9 of 16), and a wait only adds latency when fewer than max_batch queries are
# queued (1 client: up to max_wait_us per call). 64 covers the 64-client case in one batch.
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_US = 500
# max_queue=None: univl_fast.search.batching.DEFAULT_QUEUE_FACTOR times max_batch queries may wait
# (64 -> 1024: 16 batches of work, enough for 64+ concurrent clients sending a few queries
# each without a refusal, while a flood is refused at once instead of waiting without bound).


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
    # Most queries waiting for the batcher (None: DEFAULT_QUEUE_FACTOR * max_batch); a search
    # that would overflow it raises univl_fast.errors.Overloaded at once.
    max_queue: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def queue_limit(self) -> int:
        """max_queue, resolved (the default sized from max_batch)."""
        if self.max_queue is None:
            return DEFAULT_QUEUE_FACTOR * int(self.max_batch)
        return int(self.max_queue)


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

    def __init__(
        self,
        encoder: QueryEncoder,
        index: SearchIndex | None = None,
        config: EngineConfig | None = None,
        reopen: Callable[[], QueryEncoder] | None = None,
    ):
        """reopen: a callable returning a fresh encoder like ``encoder`` (``load`` passes one):
        a process forked from this one calls it once, on first use, because ONNX Runtime's
        sessions are not fork-safe (their thread pools' locks may be held by threads that stay
        in the parent)."""
        self.encoder: QueryEncoder = encoder
        self._reopen = reopen
        self._stale_encoder = False  # set in a forked child: re-open before the next use
        self._reopen_lock = threading.Lock()
        self._narrow_threads = None
        self.index: SearchIndex | None = index
        self.config = config or EngineConfig()
        if self.config.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.config.max_batch}")
        if self.config.max_wait_us < 0:
            raise ValueError(f"max_wait_us must be >= 0, got {self.config.max_wait_us}")
        if self.config.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.config.workers}")
        mq = self.config.max_queue
        if mq is not None and (isinstance(mq, bool) or not isinstance(mq, (int, np.integer))):
            raise TypeError(f"max_queue must be an int or None, got {type(mq).__name__}")
        if mq is not None and mq < 1:
            raise ValueError(f"max_queue must be >= 1 (or None for the default), got {mq}")
        self._closed = False
        self._close_lock = threading.Lock()
        self._batcher = None
        self.workers = 1
        self._narrow = None  # encoder view with a cores/workers-thread text session
        self._busy = 0  # batches inside _run_worker_batch (guarded by _busy_lock)
        self._busy_lock = threading.Lock()
        self._plain = _PlainCounters()  # stats of the unbatched path
        _live_engines.add(self)  # its locks are re-made in a forked child
        if self.config.batching and index is not None:
            self.workers = int(self.config.workers)
            if self.workers > 1:
                per_worker = max(1, physical_cores() // self.workers)
                self._narrow_threads = ThreadSettings(intra_op=per_worker)
                self._narrow = encoder.with_text_threads(self._narrow_threads)
            self._batcher = QueryBatcher(
                self._batch_fn,
                int(self.config.max_batch),
                int(self.config.max_wait_us),
                self.workers,
                self.config.queue_limit,
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

    def info(self) -> dict[str, Any]:
        """What the engine runs here (precision, backend, runtime per tower) and how each
        artifact was verified on this host (``Encoder.verification``: the load-time check)."""
        enc = self.encoder
        info = enc.info() if hasattr(enc, "info") else {}
        return {"dim": self.dim, "manifest_sha256": self.manifest_sha256, **info}

    @property
    def has_index(self) -> bool:
        """Whether an index is loaded (``search`` needs one)."""
        return self.index is not None

    def describe(self) -> dict[str, Any]:
        """What this engine runs (for ``GET /info``): model, dim, how queries are encoded,
        the engine manifest's sha256, the serving config, and the index (factory, size,
        tuned search parameters, measured recall; None without an index)."""
        enc = self.encoder
        manifest = enc.manifest or {}
        out: dict[str, Any] = {
            "model": manifest.get("model_name") or (manifest.get("model_config") or {}).get("name"),
            "dim": self.dim,
            "precision": enc.precision,
            "backend": enc.backend,
            "text_runtime": enc.text_runtime,
            "image_runtime": enc.image_runtime,
            "engine_sha256": enc.manifest_sha256,
            "verification": _verification(enc),
            "engine": self.config.to_dict(),
            "index": None,
        }
        if self.index is not None:
            im = self.index.manifest or {}
            tuning = im.get("tuning") or {}
            out["index"] = {
                "factory": im.get("factory"),
                "ntotal": int(self.index.ntotal),
                "modality_counts": im.get("modality_counts"),
                "search_params": im.get("search_params"),
                "recall": tuning.get("recall_at_k"),
                "recall_k": tuning.get("k"),
                "target_recall": tuning.get("target_recall"),
            }
        return out

    def count_tokens(self, texts: Sequence[str]) -> int:
        """BPE tokens the text tower reads for ``texts`` (start/end tokens included, each
        text cut to the context length), as usage figures report them."""
        tokenizer = getattr(self.encoder, "tokenizer", None)
        if tokenizer is None:
            return 0
        ctx = int(getattr(self.encoder, "context_length", 77))
        return sum(len(tokenizer.token_ids(t, ctx)) for t in texts)

    @property
    def encoding_mismatch(self) -> str | None:
        """How the queries' encoding (precision, text runtime) differs from the index corpus's
        (None: the same, unknown, or no index)."""
        return self.index.encoding_mismatch if self.index is not None else None

    def encode_queries(self, texts: Sequence[str], on_error: str = "raise") -> Any:
        """Queries -> (n, d) float32 unit rows (``on_error``: see ``runtime.Encoder``)."""
        return self._current_encoder().encode_queries(list(texts), on_error=on_error)

    def encode_text_docs(self, texts: Sequence[str], on_error: str = "raise") -> Any:
        """Text documents -> (n, d) float32 unit rows."""
        return self._current_encoder().encode_text_docs(list(texts), on_error=on_error)

    def encode_image_docs(
        self, images: Sequence[Any], captions: Sequence[str], on_error: str = "raise"
    ) -> Any:
        """Image documents (paths, bytes or PIL images, with their captions) -> (n, d) float32
        unit rows: L2-normalize(image embedding + caption embedding)."""
        return self._current_encoder().encode_image_docs(
            list(images), list(captions), on_error=on_error
        )

    def _current_encoder(self) -> Any:
        """self.encoder, re-opened first in a process forked since it was made (see __init__)."""
        if self._stale_encoder:
            with self._reopen_lock:
                if self._stale_encoder:
                    _keep_forever(self.encoder)
                    self.encoder = self._reopen()
                    if self._narrow_threads is not None:
                        self._narrow = self.encoder.with_text_threads(self._narrow_threads)
                    self._stale_encoder = False
                    logger.info("forked child %d: engine sessions re-opened", os.getpid())
        return self.encoder

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        modality: str | None = None,
        timeout: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[list[Hit]]:
        """Encode ``queries`` and search the index.

        queries: list of n strings. k: hits per query (>= 1; more than the corpus gives all
        documents). modality: None (joint index), "text" or "image" (restrict to one modality,
        the paper's Text / Image settings). timeout: seconds (> 0) or None (no deadline).
        timings: a dict to fill, when given, with this call's stages in seconds: ``queue_s``
        (waiting for the batcher; 0 unbatched), ``encode_s`` and ``search_s`` (of the batch
        that ran it), ``total_s``, and ``batch_items`` (queries in that batch).
        Returns n lists of Hit(doc_id, modality, score), best first; an empty or whitespace-only
        query gets an empty list.
        Raises ``univl_fast.errors.Overloaded`` at once when the batcher's queue is full and
        ``univl_fast.errors.DeadlineExceeded`` when the deadline passes (see the module doc).
        """
        t_call = time.perf_counter()
        items = self._check_search_args(queries, k, modality)
        timeout = _check_timeout(timeout)
        if not items:
            return []
        if self._batcher is not None:
            try:
                tagged = self._batcher.submit(items, timeout)
            except RuntimeError as exc:
                if self._closed and not isinstance(exc, UnivlFastError):
                    raise RuntimeError("Engine.search: the engine is closed") from None
                raise
            results = [r for r, _stamp in tagged]
            t_batch, clock = tagged[0][1]
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            clock = {}
            with self._plain.call(len(items)) as call:
                t_batch = time.perf_counter()
                results = self._run_batch(items, deadline=deadline, timeout=timeout, clock=clock)
                call.ok()
        if timings is not None:
            timings["queue_s"] = max(0.0, t_batch - t_call)
            timings["encode_s"] = clock.get("encode_s", 0.0)
            timings["search_s"] = clock.get("search_s", 0.0)
            timings["batch_items"] = clock.get("batch_items", len(items))
            timings["total_s"] = time.perf_counter() - t_call
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

    def _batch_fn(self, items: list[_Item]) -> list[tuple[Any, tuple[float, dict[str, float]]]]:
        """The batcher's fn: runs one batch and tags every row with (batch start, its stage
        times), so each caller can report its own queue / encode / search times."""
        t0 = time.perf_counter()
        clock: dict[str, float] = {}
        if self.workers > 1:
            results = self._run_worker_batch(items, clock)
        else:
            results = self._run_batch(items, clock=clock)
        stamp = (t0, clock)
        return [(r, stamp) for r in results]

    def _run_worker_batch(self, items: list[_Item], clock: dict[str, float]) -> list[Any]:
        """A batch on one of several workers. Alone, it encodes with the full thread count
        (lowest latency under light load); while another batch is running it uses the
        cores/workers-thread session, so concurrent batches do not fight over one thread pool.
        """
        with self._busy_lock:
            self._busy += 1
            alone = self._busy == 1
        try:
            encoder = self._current_encoder()
            return self._run_batch(items, encoder if alone else self._narrow, clock=clock)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _run_batch(
        self,
        items: list[_Item],
        encoder: Any = None,
        deadline: float | None = None,
        timeout: float | None = None,
        clock: dict[str, float] | None = None,
    ) -> list[Any]:
        """Encode and search a batch of items -> per item a list of Hit, or ``_Failed`` for a
        query the encoder rejected (e.g. text with lone surrogates).

        Called on the batcher's worker thread (batched path) or on the caller's (plain path).
        One encoder run for the whole batch; items with the same modality restriction share one
        index search at their largest k, then each item's hits are cut to its own k. Any other
        exception propagates: the batcher then re-runs each caller's request alone, so it
        reaches only the callers whose items cause it.
        deadline (time.monotonic() seconds, plain path only): checked after the encode and after
        the index search; past it, raises DeadlineExceeded naming ``timeout``.
        clock: filled with encode_s, search_s (seconds) and batch_items when given.
        """
        if clock is not None:
            clock["batch_items"] = len(items)
        results: list[Any] = [[] for _ in items]
        live = [i for i, (text, _k, _m) in enumerate(items) if text.strip()]
        if not live:
            return results
        encoder = encoder if encoder is not None else self._current_encoder()
        t0 = time.perf_counter()
        enc = encoder.encode_queries([items[i][0] for i in live], on_error="skip")
        t1 = time.perf_counter()
        _check_deadline(deadline, timeout, "encoding")
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
        if clock is not None:
            clock["encode_s"] = t1 - t0
            clock["search_s"] = time.perf_counter() - t1
        _check_deadline(deadline, timeout, "the index search")
        return results

    # ------------------------------------------------------------------ lifecycle
    def batcher_stats(self) -> dict[str, Any]:
        """The compiled batcher's counters (empty when batching is off)."""
        if self._batcher is None:
            return {}
        return dict(self._batcher.stats())

    def stats(self) -> dict[str, Any]:
        """Serving counters with the same keys on both paths (for metrics exporters):
        ``univl_fast.search.batching.STATS_DOC`` plus ``batching`` (bool). With batching off there
        is no queue: ``queued_*``, ``rejected_requests`` and ``expired_in_queue`` stay 0, each call
        counts as one batch, and ``expired_running`` counts DeadlineExceeded calls."""
        if self._batcher is not None:
            out = dict(self._batcher.stats())
        else:
            out = self._plain.stats(self.config)
        out["batching"] = self._batcher is not None
        return out

    def _after_fork_in_child(self) -> None:
        # A lock held by another thread at fork() stays held in the child, where that thread
        # does not exist: make new ones (the compiled batcher handles its own state).
        self._close_lock = threading.Lock()
        self._busy_lock = threading.Lock()
        self._busy = 0
        self._plain.after_fork_in_child()
        self._reopen_lock = threading.Lock()
        if self._reopen is not None:
            self._stale_encoder = True
        else:
            logger.warning(
                "forked child %d: this Engine was made without univl_fast.load, so its encoder "
                "sessions cannot be re-opened and are reused (ONNX Runtime is not fork-safe: "
                "load the engine in the child, or build it with Engine(..., reopen=...))",
                os.getpid(),
            )

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
            f"max_wait_us={self.config.max_wait_us}, workers={self.workers}, "
            f"max_queue={self.config.queue_limit})"
        )


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"Engine.search: timeout must be a number of seconds or None, got "
            f"{type(timeout).__name__}"
        )
    t = float(timeout)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(
            f"Engine.search: timeout must be a positive, finite number of seconds, got {timeout!r}"
        )
    return t


def _check_deadline(deadline: float | None, timeout: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"Engine.search: deadline exceeded: timeout={timeout:.3g} s passed during {stage} "
            "(batching=False: checked after each stage; the results are discarded)",
            timeout_s=timeout,
        )


class _PlainCounters:
    """stats() of the unbatched path: the batcher's keys, one batch per call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(
            ("batches", "items", "failed_batches", "expired_running", "max_batch_size"), 0
        )
        self._size_counts: dict[int, int] = {}

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def call(self, n: int) -> _PlainCall:
        return _PlainCall(self, n)

    def record(self, n: int, ok: bool, expired: bool) -> None:
        with self._lock:
            c = self._counts
            c["batches"] += 1
            c["items"] += n
            c["max_batch_size"] = max(c["max_batch_size"], n)
            c["failed_batches"] += 0 if ok or expired else 1
            c["expired_running"] += 1 if expired else 0
            self._size_counts[n] = self._size_counts.get(n, 0) + 1

    def stats(self, config: EngineConfig) -> dict[str, Any]:
        with self._lock:
            c = dict(self._counts)
            sizes = dict(self._size_counts)
        les = [1]
        while les[-1] < config.max_batch:
            les.append(les[-1] * 2)
        buckets = [(float(le), sum(v for s, v in sizes.items() if s <= le)) for le in les]
        buckets.append((math.inf, int(c["batches"])))
        batches = int(c["batches"])
        return {
            "batches": batches,
            "items": int(c["items"]),
            "requests": batches,
            "mean_batch_size": c["items"] / batches if batches else 0.0,
            "max_batch_size": int(c["max_batch_size"]),
            "failed_batches": int(c["failed_batches"]),
            "retried_requests": 0,
            "queued_items": 0,
            "queued_requests": 0,
            "max_queued_items": 0,
            "rejected_requests": 0,
            "expired_in_queue": 0,
            "expired_running": int(c["expired_running"]),
            "started_requests": batches,
            "queue_wait_s_sum": 0.0,
            "retry_after_s": 0.0,
            "restarts_after_fork": 0,
            "batch_size_buckets": buckets,
            "closed": False,
            "max_batch": int(config.max_batch),
            "max_wait_us": int(config.max_wait_us),
            "num_workers": 0,
            "max_queue": config.queue_limit,
        }


class _PlainCall:
    def __init__(self, counters: _PlainCounters, n: int):
        self._counters, self._n, self._ok = counters, n, False

    def ok(self) -> None:
        self._ok = True

    def __enter__(self) -> _PlainCall:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._counters.record(
            self._n, self._ok, exc_type is not None and issubclass(exc_type, DeadlineExceeded)
        )


def _verification(enc: Any) -> dict[str, Any] | None:
    """The load-time parity check in brief: per tower its status and why, the fallbacks."""
    v = getattr(enc, "verification", None)
    if not isinstance(v, dict):
        return None
    return {
        "mode": v.get("mode"),
        "seconds": v.get("seconds"),
        "towers": {
            t: {k: c.get(k) for k in ("key", "runtime", "status", "reason", "host_class")}
            for t, c in (v.get("towers") or {}).items()
        },
        "fallbacks": v.get("fallbacks", []),
    }


def _keep_forever(obj: Any) -> None:
    """Never free ``obj`` in this (forked) process: an ONNX Runtime session made in the parent
    must not be destroyed in a child, where its destructor would join or wait on thread-pool
    threads that exist only in the parent. Its pages stay shared with the parent's."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


# Engines alive in this process, for the fork handler below.
_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _engines_after_fork_in_child() -> None:
    engines = list(_live_engines)
    for eng in engines:
        eng._after_fork_in_child()
    if engines and "onnxruntime" in sys.modules:
        fork_exit.install_in_forked_child()  # ORT's static destructors hang in a forked child
    faiss = sys.modules.get("faiss")
    if engines and faiss is not None:
        # faiss runs on libgomp, which keeps no fork handler: a parallel region entered in the
        # child from the thread that forked (if it ran one in the parent) waits forever for the
        # parent's OpenMP workers. One thread for this thread's regions avoids that pool; other
        # threads (the batcher's workers, a server's request threads) start fresh pools.
        faiss.omp_set_num_threads(1)
        logger.debug("forked child: faiss OpenMP regions of the forking thread run single-threaded")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_engines_after_fork_in_child)


def load(
    engine_dir: str | os.PathLike,
    index: str | os.PathLike | Any = None,
    precision: str | None = None,
    backend: str | None = None,
    *,
    batching: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_us: int = DEFAULT_MAX_WAIT_US,
    workers: int = 1,
    max_queue: int | None = None,
    **encoder_kwargs: Any,
) -> Engine:
    """Load an exported engine dir and, optionally, an index dir built from it (one index or
    a sharded one), or an index object such as ``scale.ray_shards.RayShardedIndex``.

    precision: "fp32" | "fp16" | "int8" (default: the fastest whose parity passed).
    backend: "onnxruntime" | "tensorrt" (default: the best available here).
    batching / max_batch / max_wait_us / workers: how concurrent ``search`` calls are coalesced
    (see :class:`EngineConfig`). max_queue: most queries waiting for the batcher (None:
    ``DEFAULT_QUEUE_FACTOR * max_batch``); beyond it ``search`` raises ``Overloaded`` at once.
    Other keyword arguments go to ``univl_fast.runtime.Encoder``.
    Raises ``EngineMismatchError`` (a ValueError) when the index's vectors are in another
    embedding space; a corpus encoded at another precision is loaded and reported
    (``Engine.encoding_mismatch``).
    """
    engine_dir = Path(engine_dir)
    encoder = Encoder(engine_dir, precision=precision, backend=backend, **encoder_kwargs)

    def reopen() -> Any:  # the same choices and load-time check, new sessions (forked child)
        return encoder.reopened()

    idx = None
    if isinstance(index, (str, os.PathLike)):  # an index dir, one index or sharded
        from univl_fast.index import load_index  # faiss only with an index (encode-only engines)

        idx = load_index(index, encoder=encoder)
    elif index is not None:  # an index object, e.g. univl_fast.scale.ray_shards.RayShardedIndex
        from univl_fast.index.binding import check_binding  # faiss only with an index

        check_binding(index, index.manifest, encoder, None)
        idx = index
    config = EngineConfig(
        batching=batching,
        max_batch=max_batch,
        max_wait_us=max_wait_us,
        workers=workers,
        max_queue=max_queue,
    )
    return Engine(encoder, idx, config, reopen=reopen)
