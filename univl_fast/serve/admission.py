"""Admission of engine work (``POST /v1/search``, ``POST /v1/embeddings``), decided at the front.

``Admission`` counts two things in one worker process (both only touched on the event loop):

- ``inflight``: engine requests that arrived and are not answered yet (counted by the
  middleware before the body is read);
- ``admitted``: requests whose engine work runs or waits on the pool (a slot is freed only when
  the work has really finished, even after a 504, so threads and memory stay bounded).

A new engine request is refused with 429 + ``Retry-After`` when either count has reached
``max_queue``. The middleware checks this before reading or parsing the body, so a refusal costs
a few microseconds of the event loop, whatever the load. A request whose body is still arriving
holds its slot (so buffered bodies are bounded too: ``max_queue`` x ``max_body_bytes``) until it
is answered, at the latest after ``body_timeout_s`` (408).
"""

from __future__ import annotations

import math

import orjson

# Paths whose requests take an engine slot (POST only).
ENGINE_PATHS = frozenset({"/v1/search", "/v1/embeddings"})


def retry_after_header(seconds: float) -> bytes:
    """Retry-After takes whole seconds (at least 1)."""
    return str(max(1, math.ceil(seconds))).encode()


def overloaded_message(max_queue: int) -> str:
    return f"the service is full: {max_queue} requests admitted (max_queue); retry later"


class Admission:
    """The in-flight / admitted counters of one worker process and its ready-made 429."""

    __slots__ = ("admitted", "inflight", "max_queue", "refusal_body", "refusal_headers")

    def __init__(self, max_queue: int, retry_after_s: float):
        self.max_queue = max_queue
        self.inflight = 0
        self.admitted = 0
        self.refusal_body = orjson.dumps(
            {"detail": overloaded_message(max_queue), "limit": max_queue}
        )
        self.refusal_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.refusal_body)).encode()),
            (b"retry-after", retry_after_header(retry_after_s)),
        ]

    def full(self) -> bool:
        return self.inflight >= self.max_queue or self.admitted >= self.max_queue
