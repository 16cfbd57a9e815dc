"""Query batching: many threads call ``submit``; worker threads run the batched function.

Thin wrapper over the compiled ``univl_fast._C.QueryBatcher`` (C++ worker thread, GIL released
while callers wait). Typical use, coalescing concurrent searches into one encoder + index call::

    with QueryBatcher(lambda queries: engine_search_batch(queries), max_batch=64,
                      max_wait_us=2000) as batcher:
        hits = batcher.submit(["a query"])       # from any number of threads
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["QueryBatcher"]

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
    ) -> None:
        self._impl = _core().QueryBatcher(fn, int(max_batch), int(max_wait_us), int(num_workers))

    def submit(self, items: Sequence[T]) -> list[R]:
        """Results of fn for ``items``, in order (blocks; the GIL is released while waiting).

        ``submit([])`` returns ``[]`` at once. Raises RuntimeError("batcher is closed") after
        :meth:`close`, and whatever fn raised for these items.
        """
        return self._impl.submit(items)

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

    def stats(self) -> dict[str, Any]:
        """batches, items, requests, mean_batch_size, max_batch_size, failed_batches,
        retried_requests, queued_items, closed, max_batch, max_wait_us, num_workers."""
        return dict(self._impl.stats())

    def __enter__(self) -> QueryBatcher[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
