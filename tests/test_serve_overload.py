"""Overload on a real uvicorn (127.0.0.1, bounded counts and times): the 429 is decided at the
front, before the body is read or parsed, and a burst far over ``max_queue`` gets every request
answered (200 or 429 with Retry-After, or 504 within its deadline), none dropped."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import univl_fast
from tests.engine_helpers import PRECISION
from tests.serve_helpers import host_port, raw_request, read_response, thread_server
from univl_fast.serve import ServeConfig, create_app

pytest_plugins = ["tests.engine_fixtures"]

TIMEOUT_S = 5.0  # the server's request deadline in the burst


@pytest.fixture(scope="module")
def engine(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    yield eng
    eng.close()


def _server_total_ms(raw: bytes) -> float:
    m = re.search(rb"(?im)^server-timing:.*total;dur=([\d.]+)", raw)
    assert m, raw[:400]
    return float(m.group(1))


def test_429_is_decided_before_the_body_is_read(engine, queries):
    """The only slot is taken by admitted work; meanwhile a good request and a malformed one
    both get the ready-made 429, not a parse of their body (a 400), and nothing reaches the
    engine. Once the slot frees, requests are served again."""
    cfg = ServeConfig(max_queue=1, body_timeout_s=5.0, retry_after_s=3.0)
    good = json.dumps({"queries": [queries[0]], "k": 2}).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(good))}
    app = create_app(engine, cfg)
    admission = app.state.serve.admission
    with thread_server(app) as url:
        before = engine.batcher_stats()["requests"]
        admission.admitted = 1  # as while one request's engine work runs
        try:
            for body in (good, b'{"queries": ["a", '):
                h = {"Content-Type": "application/json", "Content-Length": str(len(body))}
                with socket.create_connection(host_port(url), timeout=10) as s:
                    t0 = time.perf_counter()
                    s.sendall(raw_request(url, "POST", "/v1/search", h, body))
                    status, raw = read_response(s, 10)
                    elapsed = time.perf_counter() - t0
                assert status == 429, raw[:400]
                assert re.search(rb"(?im)^retry-after: 3\r$", raw), raw[:400]
                assert b"max_queue" in raw and b'"code":"overloaded"' in raw
                assert elapsed < 1.0
                assert _server_total_ms(raw) < 10.0  # nothing but the refusal was done
            assert engine.batcher_stats()["requests"] == before  # no engine work for them
        finally:
            admission.admitted = 0
        with socket.create_connection(host_port(url), timeout=10) as s:
            s.sendall(raw_request(url, "POST", "/v1/search", head, good))
            status, raw = read_response(s, 30)
        assert status == 200, raw[:400]


def test_burst_every_request_answered(engine, queries):
    """48 keep-alive clients x 4 requests at once against max_queue=4: each of the 192 requests
    is answered 200 or 429 (with Retry-After), or 504 within the deadline: no connection error,
    no timeout, nothing dropped; the 429s leave the server in well under 10 ms."""
    cfg = ServeConfig(max_queue=4, request_timeout_s=TIMEOUT_S, max_inputs=64)
    body = json.dumps({"queries": [f"{q} burst" for q in queries[:8]], "k": 10}).encode()
    with thread_server(create_app(engine, cfg)) as url:
        host, port = host_port(url)

        def client(c: int) -> list[tuple[str, float, float | None, str | None]]:
            out = []
            conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S + 10)
            try:
                for _ in range(4):
                    t0 = time.perf_counter()
                    try:
                        conn.request(
                            "POST", "/v1/search", body, {"Content-Type": "application/json"}
                        )
                        r = conn.getresponse()
                        r.read()
                        m = re.search(r"total;dur=([\d.]+)", r.getheader("server-timing", ""))
                        server = float(m.group(1)) if m else None
                        out.append(
                            (
                                str(r.status),
                                time.perf_counter() - t0,
                                server,
                                r.getheader("retry-after"),
                            )
                        )
                    except (OSError, http.client.HTTPException) as exc:
                        out.append((type(exc).__name__, time.perf_counter() - t0, None, None))
                        conn.close()
                        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S + 10)
            finally:
                conn.close()
            return out

        with ThreadPoolExecutor(48) as pool:
            outcomes = [o for per in pool.map(client, range(48)) for o in per]
        statuses = [s for s, *_ in outcomes]
        assert len(outcomes) == 192
        assert set(statuses) <= {"200", "429", "504"}, sorted(set(statuses))
        assert "200" in statuses and "429" in statuses  # the burst really was over the bound
        for status, seconds, server_ms, retry in outcomes:
            if status == "429":
                assert retry == "1"
                assert server_ms is not None and server_ms < 10.0, server_ms
            if status == "504":
                assert seconds < TIMEOUT_S + 2.0
        refused = sorted(ms for s, _, ms, _ in outcomes if s == "429")
        assert refused[len(refused) // 2] < 2.0  # median server time of a refusal
        conn = http.client.HTTPConnection(host, port, timeout=30)
        deadline = time.monotonic() + 10
        while True:  # every slot comes back
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            if "univl_fast_queue_depth 0.0" in text:
                break
            assert time.monotonic() < deadline, "admitted slots were never freed"
            time.sleep(0.05)
        conn.close()
