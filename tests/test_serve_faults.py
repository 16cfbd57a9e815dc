"""Fault tests of the HTTP service, on a real uvicorn (127.0.0.1, bounded counts and timeouts):
bad bodies, limits, disconnecting and trickling clients, a full queue (429 + Retry-After), a
missed deadline (504) and auth (401, no work done). After each, the server still answers."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import univl_fast
from tests.engine_helpers import PRECISION
from tests.serve_helpers import host_port, raw_request, read_response, thread_server
from univl_fast.serve import ServeConfig, create_app

pytest_plugins = ["tests.engine_fixtures"]

LIMITS = ServeConfig(
    max_body_bytes=4096,
    max_inputs=4,
    max_k=20,
    max_query_chars=200,
    body_timeout_s=0.6,
)


@pytest.fixture(scope="module")
def engine(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def url(engine):
    with thread_server(create_app(engine, LIMITS)) as base:
        yield base


def _still_serving(url: str, query: str) -> None:
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    r = httpx.post(f"{url}/v1/search", json={"queries": [query], "k": 2}, timeout=30)
    assert r.status_code == 200 and len(r.json()["results"][0]["hits"]) == 2


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"queries": ["a", ', 400, "not valid JSON"),
        (b"\xff\xfe garbage", 400, "not valid JSON"),
        (b'{"queries": "one string"}', 422, "queries"),
        (b'{"queries": ["a"], "k": "10"}', 422, "k"),
        (b'{"queries": ["a"], "k": true}', 422, "k"),
        (b'{"queries": [1, 2]}', 422, "queries"),
        (b'{"queries": ["a"], "modality": "video"}', 422, "modality"),
        (b'{"queries": ["a"], "unknown": 1}', 422, "unknown"),
        (b'{"k": 3}', 422, "queries"),
        (b'{"queries": ["a", "b", "c", "d", "e"]}', 422, "limit of 4"),
        (b'{"queries": ["a"], "k": 21}', 422, "1..20"),
        (b'{"queries": ["a"], "k": 0}', 422, "1..20"),
        (json.dumps({"queries": ["x" * 201]}).encode(), 422, "limit of 200"),
        (b'{"input": [{"image": "@@@", "caption": "c"}]}', 422, "base64"),
    ],
)
def test_bad_bodies(url, queries, body, status, needle):
    path = "/v1/embeddings" if b'"input"' in body else "/v1/search"
    r = httpx.post(
        f"{url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == status, r.text
    assert needle in r.text


def test_oversized_bodies_413(url, queries):
    big = json.dumps({"queries": ["x" * 5000]}).encode()
    r = httpx.post(
        f"{url}/v1/search", content=big, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and "4096" in r.text

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b"x" * 1000

    r = httpx.post(
        f"{url}/v1/search",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    _still_serving(url, queries[0])


def test_client_disconnects_mid_request(url, queries):
    body = json.dumps({"queries": [queries[0]], "k": 2}).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    # 1. half the body, then gone
    with socket.create_connection(host_port(url), timeout=5) as s:
        s.sendall(raw_request(url, "POST", "/v1/search", head, body[: len(body) // 2]))
    # 2. the whole request, gone before the answer
    with socket.create_connection(host_port(url), timeout=5) as s:
        s.sendall(raw_request(url, "POST", "/v1/search", head, body))
    time.sleep(0.3)
    _still_serving(url, queries[1])


def test_slow_client_trickling_body_is_cut_off(url, queries):
    body = json.dumps({"queries": [queries[0]]}).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    with socket.create_connection(host_port(url), timeout=5) as s:
        s.sendall(raw_request(url, "POST", "/v1/search", head, body[:2]))
        t0 = time.monotonic()
        status = None
        for i in range(2, len(body)):  # one byte every 0.1 s: the body would take seconds
            try:
                s.sendall(body[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            s.settimeout(0.1)
            try:
                status, _raw = read_response(s, 0.1)
            except TimeoutError:
                continue
            if status is not None or time.monotonic() - t0 > 5:
                break
        elapsed = time.monotonic() - t0
    assert status == 408, f"expected 408 after the 0.6 s body timeout, got {status}"
    assert elapsed < 3.0
    _still_serving(url, queries[1])


def test_full_queue_answers_429_at_once(engine, queries):
    cfg = ServeConfig(max_queue=1, max_inputs=64, retry_after_s=2.0)
    heavy = {"queries": [f"{q} {i}" for i, q in enumerate(queries[:32] * 2)], "k": 10}
    with thread_server(create_app(engine, cfg)) as base, httpx.Client(timeout=30) as client:

        def one(_: int) -> tuple[int, float, str | None]:
            t0 = time.perf_counter()
            r = client.post(f"{base}/v1/search", json=heavy)
            return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, range(24)))
        statuses = [s for s, _, _ in outcomes]
        assert set(statuses) == {200, 429}, statuses
        for status, seconds, retry in outcomes:
            if status == 429:
                assert retry == "2"
                assert seconds < 2.0  # refused at once, not queued behind the running ones
        metrics = client.get(f"{base}/metrics").text
        assert "univl_fast_queue_depth 0.0" in metrics
        assert client.post(f"{base}/v1/search", json=heavy).status_code == 200


def test_deadline_answers_504(engine, queries):
    cfg = ServeConfig(request_timeout_s=0.0005)
    with thread_server(create_app(engine, cfg)) as base:
        many = {"queries": [f"{q} {i}" for i, q in enumerate(queries[:16])], "k": 50}
        r = httpx.post(f"{base}/v1/search", json=many, timeout=30)
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert "deadline of 0.0005 s" in err["message"] and err["type"] == "timeout_error"
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while "univl_fast_queue_depth 0.0" not in httpx.get(f"{base}/metrics").text:
            assert time.monotonic() < deadline, "the timed-out request's slot was never freed"
            time.sleep(0.05)


def test_api_key_401_and_no_work(engine, queries):
    cfg = ServeConfig(api_key="s3cret-key")
    good = {"authorization": "Bearer s3cret-key"}
    with thread_server(create_app(engine, cfg)) as base:
        before = engine.batcher_stats()["requests"]
        body = {"queries": [queries[0]], "k": 2}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-key"}):
            r = httpx.post(f"{base}/v1/search", json=body, headers=headers, timeout=30)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{base}/v1/embeddings", json={"input": "x"}, timeout=30)
        assert r.status_code == 401
        assert engine.batcher_stats()["requests"] == before  # nothing reached the engine
        assert httpx.get(f"{base}/info", timeout=10).status_code == 401
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert httpx.get(f"{base}/ready", timeout=10).status_code == 200
        for open_path in ("/", "/docs", "/openapi.json"):  # no data in these
            assert httpx.get(f"{base}{open_path}", timeout=10).status_code == 200
        r = httpx.post(f"{base}/v1/search", json=body, headers=good, timeout=30)
        assert r.status_code == 200
        assert engine.batcher_stats()["requests"] == before + 1


def test_engine_queue_full_answers_429(tiny_engine, flat_index, queries):
    """The engine's own bound (queries waiting for its batcher) also answers 429 at once."""
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, max_queue=4)
    cfg = ServeConfig(max_queue=64, max_inputs=64)
    heavy = {"queries": [f"{q} {i}" for i, q in enumerate(queries[:4])], "k": 10}
    with eng, thread_server(create_app(eng, cfg)) as base, httpx.Client(timeout=30) as client:

        def one(_: int) -> httpx.Response:
            return client.post(f"{base}/v1/search", json=heavy)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(36)))
        refused = [r for r in answers if r.status_code == 429]
        assert {r.status_code for r in answers} == {200, 429}
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all("(limit 4)" in r.json()["error"]["message"] for r in refused)
        assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
        assert eng.stats()["rejected_requests"] >= len(refused)
