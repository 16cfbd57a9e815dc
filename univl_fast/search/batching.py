"""Query batching: many threads call ``submit``; worker threads run the batched function.

Thin wrapper over the compiled ``univl_fast._C.QueryBatcher`` (C++ worker thread, GIL released
while callers wait). Typical use, coalescing concurrent searches into one encoder + index call::

    with QueryBatcher(lambda queries: engine_search_batch(queries), max_batch=64,
                      max_wait_us=2000) as batcher:
        hits = batcher.submit(["a query"])       # from any number of threads

Backpressure and deadlines: at most ``max_queue`` items wait in the queue; a ``submit`` that
would overflow it raises :class:`univl_fast.errors.Overloaded` at once, and
``submit(items, timeout=s)`` raises :class:`univl_fast.errors.DeadlineExceeded` when the results
are not ready within ``s`` seconds (a request still queued then is removed and never run).

Fork safety: a batcher made before ``os.fork()`` works in the child (gunicorn ``--preload``,
``multiprocessing`` with fork): the child's first ``submit`` starts fresh worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_QUEUE_FACTOR", "QueryBatcher"]

# max_queue=None means DEFAULT_QUEUE_FACTOR * max_batch items (the compiled default).
DEFAULT_QUEUE_FACTOR = 16

STATS_DOC = """\
batches            fn calls (a failed coalesced batch re-run per request counts each run)
items              items passed to fn
requests           submits admitted to the queue (with at least one item)
mean_batch_size    items / batches
max_batch_size     largest fn call
failed_batches     fn calls that raised or returned the wrong number of results
retried_requests   requests re-run alone after their coalesced batch failed
queued_items       items waiting in the queue now (the queue depth)
queued_requests    requests waiting in the queue now
max_queued_items   largest queue depth seen (<= max_queue, unless one request was larger)
rejected_requests  submits refused with Overloaded
expired_in_queue   requests whose deadline passed while queued (removed, never run)
expired_running    requests whose deadline passed while their batch ran (results dropped)
started_requests   requests taken from the queue by a worker
queue_wait_s_sum   their total time in the queue, seconds
retry_after_s      the hint an Overloaded raised now would carry, seconds
restarts_after_fork  times the workers were restarted in a forked child (a child inherits the
                   count of its parent)
batch_size_buckets [(le, count)]: cumulative fn calls with size <= le (powers of two, then inf)
closed, max_batch, max_wait_us, num_workers, max_queue: the configuration and state
"""

T = TypeVar("T")
R = TypeVar("R")


def _core():
    try:
        from univl_fast import _C
    except ImportError as exc:
        raise ImportError(
            "univl_fast._C (the compiled core, which holds QueryBatcher) is not built or failed "
            f"to load ({exc}). Build and install it with: "
            "python -m pip install --no-build-isolation -e .  (see scripts/setup.sh)"
        ) from exc
    return _C


class QueryBatcher(Generic[T, R]):
    """Coalesces concurrent calls into batched calls of ``fn``.

    fn: called on the batcher's worker thread with one list holding the items of one or more
        requests (at most ``max_batch`` items, unless a single request is larger, in which case
        it runs alone); must return a sequence of the same length, one result per item.
    max_batch: most items per call of fn (>= 1).
    max_wait_us: how long the oldest waiting request may wait for others to join its batch
        (microseconds, >= 0).
    num_workers: worker threads taking batches from the one queue (>= 1). With more than one,
        a batch is formed and run while another is still inside fn, so fn must be safe to call
        concurrently (and should release the GIL for its heavy work).
    max_queue: most items waiting in the queue (>= 1; None: ``DEFAULT_QUEUE_FACTOR *
        max_batch``). Items taken by a worker no longer count. A request larger than
        max_queue is admitted only into an empty queue (so it is never refused forever).

    If fn raises (or returns the wrong number of results) for a batch coalesced from several
    requests, each request is re-run alone, so the exception reaches exactly the callers whose
    items make fn fail (re-raised with its original type); the others get their results.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        max_batch: int = 64,
        max_wait_us: int = 2000,
        num_workers: int = 1,
        max_queue: int | None = None,
    ) -> None:
        self._impl = _core().QueryBatcher(
            fn,
            int(max_batch),
            int(max_wait_us),
            int(num_workers),
            None if max_queue is None else int(max_queue),
        )

    def submit(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Results of fn for ``items``, in order (blocks; the GIL is released while waiting).

        ``submit([])`` returns ``[]`` at once. Raises RuntimeError("batcher is closed") after
        :meth:`close`, and whatever fn raised for these items.
        timeout: seconds (> 0) or None (wait as long as it takes).
        Raises :class:`~univl_fast.errors.Overloaded` (``.limit`` = max_queue) at once when the
        queue is full, :class:`~univl_fast.errors.DeadlineExceeded` (``.timeout_s``) when the
        timeout passes first: a request still queued is then removed (fn never sees it), one
        whose batch is running is abandoned (its results are discarded).
        """
        return self._impl.submit(items, None if timeout is None else float(timeout))

    def close(self) -> None:
        """Stop accepting requests, finish the queued ones and stop the worker (idempotent)."""
        self._impl.close()

    @property
    def closed(self) -> bool:
        return bool(self._impl.closed)

    @property
    def max_batch(self) -> int:
        return int(self._impl.max_batch)

    @property
    def max_wait_us(self) -> int:
        return int(self._impl.max_wait_us)

    @property
    def num_workers(self) -> int:
        return int(self._impl.num_workers)

    @property
    def max_queue(self) -> int:
        return int(self._impl.max_queue)

    def stats(self) -> dict[str, Any]:
        """Counters since creation (see :data:`STATS_DOC`)."""
        return dict(self._impl.stats())

    def __enter__(self) -> QueryBatcher[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
