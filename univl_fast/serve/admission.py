"""Admission of engine work (``POST /v1/search``, ``POST /v1/embeddings``), decided at the front.

``Admission`` counts two things in one worker process (both only touched on the event loop):

- ``inflight``: engine requests whose body is in and that are not answered yet;
- ``admitted``: requests whose engine work runs or waits on the pool (a slot is freed only when
  the work has really finished, even after a 504, so threads and memory stay bounded).

A new engine request is refused with 429 + ``Retry-After`` when either count has reached
``max_queue``. The middleware checks this before reading the body (so a refusal under load costs
a few microseconds of the event loop) and again once the body is in. A request whose body is
still arriving holds no slot: clients trickling their bodies cannot starve the others. What they
can hold is memory, so the bytes of bodies being read are bounded per worker by
``body_bytes_budget`` (``max_queue`` x ``max_body_bytes``): a body that does not fit is answered
429 too (``body_bytes``, counted as they arrive; a declared ``Content-Length`` is reserved up
front).
"""

from __future__ import annotations

import math

from univl_fast.serve.api_errors import error_bytes

# Paths whose requests take an engine slot (POST only).
ENGINE_PATHS = frozenset({"/v1/search", "/v1/embeddings"})


def retry_after_header(seconds: float) -> bytes:
    """Retry-After takes whole seconds (at least 1)."""
    return str(max(1, math.ceil(seconds))).encode()


def overloaded_message(max_queue: int) -> str:
    return f"the service is full: {max_queue} requests admitted (max_queue); retry later"


class Admission:
    """The in-flight / admitted counters of one worker process and its ready-made 429."""

    __slots__ = (
        "admitted",
        "body_bytes",
        "body_bytes_budget",
        "inflight",
        "max_queue",
        "refusal_body",
        "refusal_headers",
    )

    def __init__(self, max_queue: int, retry_after_s: float, body_bytes_budget: int = 1 << 62):
        self.max_queue = max_queue
        self.inflight = 0
        self.admitted = 0
        self.body_bytes = 0
        self.body_bytes_budget = body_bytes_budget
        self.refusal_body = error_bytes(429, overloaded_message(max_queue), code="overloaded")
        self.refusal_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.refusal_body)).encode()),
            (b"retry-after", retry_after_header(retry_after_s)),
        ]

    def full(self) -> bool:
        return self.inflight >= self.max_queue or self.admitted >= self.max_queue
