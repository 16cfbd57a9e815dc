"""Prometheus metrics of the service (``GET /metrics``).

- ``univl_fast_http_requests_total{route,method,status}``: answered requests;
- ``univl_fast_http_request_seconds{route}``: time from the request's arrival to its answer;
- ``univl_fast_stage_seconds{stage}``: per search request, ``queue`` (waiting for a pool thread
  and for the engine's batcher), ``encode`` and ``search`` (of the batch that carried it);
  embeddings requests observe ``encode``;
- ``univl_fast_batch_queries``: per search request, the queries in the engine batch that carried
  it (how well requests coalesce);
- ``univl_fast_queue_depth``: requests admitted and not yet answered (429 beyond ``max_queue``).

With ``--workers N`` every process writes its values to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by the pre-fork runner before prometheus_client is imported)
and ``/metrics`` sums the live processes, so any worker answers for the whole service.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a cached 429 (~0.1 ms) to a deadline-sized request.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Routes by template, so /v1/docs/{doc_id}/image is one series, not one per document.
KNOWN_ROUTES = frozenset(
    {
        "/",
        "/health",
        "/ready",
        "/info",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/v1/search",
        "/v1/embeddings",
    }
)


def route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/v1/docs/") and path.endswith("/image"):
        return "/v1/docs/{doc_id}/image"
    return "other"


class ServeMetrics:
    """The service's metric objects, in their own registry (several apps may share a process,
    as in the tests) unless multiprocess mode sums them across worker processes."""

    def __init__(self) -> None:
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "univl_fast_http_requests",
            "HTTP requests answered, by route template, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "univl_fast_http_request_seconds",
            "Time from a request's arrival to its answer, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "univl_fast_stage_seconds",
            "Time per stage of a request: queue, encode and search (of its engine batch)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "univl_fast_batch_queries",
            "Queries in the engine batch that carried a search request",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "univl_fast_queue_depth",
            "Requests admitted and not yet answered (search and embeddings)",
            registry=r,
            multiprocess_mode="livesum",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess mode; the pre-fork parent calls this)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
