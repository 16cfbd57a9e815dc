"""Per-stage timing of engine searches: how long a request's batch spent encoding and searching.

The engine coalesces concurrent searches into batches on its batcher thread, so a request's
encode and search times are those of the batch that carried it. ``StageClock.install(engine)``
puts timing wrappers around ``engine.encoder`` and ``engine.index``: each encoder batch gets a
``BatchTiming`` (encode seconds, then the seconds of the index searches the same thread runs
for it), observed into the metrics and filed under the identity of the query strings it
encoded (the engine hands the callers' own ``str`` objects to the encoder). After its search
returns, a request looks its strings up: its queue time is its engine wait less its batch's
encode and search time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from univl_fast.serve.metrics import ServeMetrics

_MAX_TRACKED = 8192  # query strings whose batch is remembered until their caller reads it


@dataclass
class BatchTiming:
    started: float  # perf_counter when the encoder batch began
    encode_s: float = 0.0
    search_s: float = 0.0


class StageClock:
    """Batch timings of one engine, looked up by the query strings a caller passed."""

    def __init__(self, metrics: ServeMetrics | None = None):
        self.metrics = metrics
        self._lock = threading.Lock()
        self._by_query: OrderedDict[int, BatchTiming] = OrderedDict()
        self._current = threading.local()  # the batch the encoder last ran on this thread

    def install(self, engine: Any) -> None:
        """Wrap ``engine.encoder`` and ``engine.index``; an engine wrapped before (by another
        app over the same engine) reports to this clock from now on."""
        for name, wrapper in (("encoder", _TimedEncoder), ("index", _TimedIndex)):
            part = getattr(engine, name)
            if part is None:
                continue
            if isinstance(part, wrapper):
                part._clock = self
            else:
                setattr(engine, name, wrapper(part, self))

    def _encoded(self, texts: Sequence[Any], timing: BatchTiming) -> None:
        self._current.timing = timing
        if self.metrics is not None:
            self.metrics.stage.labels("encode").observe(timing.encode_s)
            self.metrics.batch.observe(len(texts))
        with self._lock:
            for text in texts:
                self._by_query[id(text)] = timing
                self._by_query.move_to_end(id(text))
            while len(self._by_query) > _MAX_TRACKED:
                self._by_query.popitem(last=False)

    def _searched(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.stage.labels("search").observe(seconds)
        timing = getattr(self._current, "timing", None)
        if timing is not None:
            timing.search_s += seconds

    def take(self, queries: Sequence[str], since: float) -> tuple[float, float] | None:
        """(encode_s, search_s) of the batch that carried ``queries`` (called by their caller
        after the search returned; ``since``: perf_counter before it submitted), or None when
        no batch of theirs was seen (e.g. all queries were empty)."""
        found: BatchTiming | None = None
        with self._lock:
            for q in queries:
                timing = self._by_query.pop(id(q), None)
                if timing is not None and timing.started >= since and found is None:
                    found = timing
        if found is None:
            return None
        return found.encode_s, found.search_s


class _TimedEncoder:
    """Delegates to the encoder; times ``encode_queries`` (the search path's encoder call)."""

    def __init__(self, inner: Any, clock: StageClock):
        self._inner = inner
        self._clock = clock

    def encode_queries(self, texts: Sequence[str], on_error: str = "raise") -> Any:
        t0 = time.perf_counter()
        out = self._inner.encode_queries(texts, on_error=on_error)
        self._clock._encoded(texts, BatchTiming(t0, time.perf_counter() - t0))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TimedIndex:
    """Delegates to the index; times ``search``."""

    def __init__(self, inner: Any, clock: StageClock):
        self._inner = inner
        self._clock = clock

    def search(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._inner.search(*args, **kwargs)
        finally:
            self._clock._searched(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
