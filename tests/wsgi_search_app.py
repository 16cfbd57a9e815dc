"""A tiny WSGI app over a preloaded Engine, for tests/test_fork.py under gunicorn --preload.

The engine is loaded (and searched once, so its batcher, thread teams and sessions are running)
when gunicorn imports this module in its master process; the workers are forked from it.
``GET /?q=text`` answers ``{"pid": worker pid, "hits": [[doc_id, modality, score], ...]}``.
Configured by environment: UNIVL_TEST_ENGINE, UNIVL_TEST_INDEX, UNIVL_TEST_PRECISION.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

import univl_fast
from univl_fast.errors import UnivlFastError

ENGINE = univl_fast.load(
    os.environ["UNIVL_TEST_ENGINE"],
    index=os.environ["UNIVL_TEST_INDEX"],
    precision=os.environ.get("UNIVL_TEST_PRECISION", "fp32"),
)
ENGINE.search(["a warm-up query in the master"], k=5, timeout=60)


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", "")).get("q", [""])[0]
    try:
        hits = ENGINE.search([query], k=5, timeout=30)[0]
        status, body = "200 OK", {"pid": os.getpid(), "hits": [list(h) for h in hits]}
    except UnivlFastError as exc:
        status, body = "503 Service Unavailable", {"pid": os.getpid(), "error": str(exc)}
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
