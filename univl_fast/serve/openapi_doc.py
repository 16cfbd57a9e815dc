"""What ``/openapi.json`` says a route can answer besides its 200: the statuses, each with the
one error body (``ErrorResponse``, OpenAI's shape) and what it means, for FastAPI's
``responses=``. tests/test_serve_openapi.py checks every answer of every route against it."""

from __future__ import annotations

from typing import Any

from univl_fast.serve.schemas import ErrorResponse

MEANING = {
    400: "bad request: the body is not valid JSON, an input cannot be used (named in param), "
    "or the Host header is not an allowed one",
    401: "missing or wrong API key (only when the service was started with --api-key-file)",
    404: "no such thing (model, document, image; or the service was started without --data)",
    408: "the request body did not arrive within body_timeout_s (the connection is closed)",
    413: "the request body is over max_body_bytes",
    415: "the Content-Type is not one the route parses",
    422: "a field has the wrong type or is over a limit (named in param)",
    429: "the worker is full (max_queue admitted, or too many body bytes in flight): retry after "
    "Retry-After seconds",
    500: "internal error (logged by the service; the body names no internals)",
    503: "not ready: warming up, or draining on shutdown",
    504: "the request's deadline (request_timeout_s) passed",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# Any route behind the key and the Host check can answer these.
GUARDED = (400, 401)
# The POST routes that read a body and run engine work.
ENGINE = (*GUARDED, 408, 413, 415, 422, 429, 500, 504)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": MEANING[status]}
        if status == 429:
            entry["headers"] = RETRY_AFTER
        out[status] = entry
    return out
