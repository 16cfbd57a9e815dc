"""``univl-fast serve --workers 2`` as a subprocess with torch blocked: the engine is loaded once
in the parent and the workers are forked after it (fork safety under a real server). A worker
killed with SIGKILL is replaced while the other keeps serving; SIGTERM lets an in-flight
request finish, refuses new connections and exits 0; /metrics sums the workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import pytest

from tests.serve_helpers import CliServer, host_port, raw_request, read_response, wait_ready

pytest_plugins = ["tests.engine_fixtures"]


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prometheus_multiproc")


@pytest.fixture(scope="module")
def server(tiny_engine, flat_index, synth_tiny, metrics_dir):
    srv = CliServer(
        [
            "--engine",
            str(tiny_engine),
            "--index",
            str(flat_index),
            "--data",
            str(synth_tiny),
            "--workers",
            "2",
            "--graceful-timeout",
            "10",
        ],
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    try:
        wait_ready(srv.url)
        yield srv
    finally:
        srv.stop()  # also when the master died: its workers go with its process group


def _search(url: str, query: str) -> httpx.Response:
    # a new connection per request, so the kernel may hand it to either worker
    return httpx.post(
        f"{url}/v1/search",
        json={"queries": [query], "k": 3},
        headers={"connection": "close"},
        timeout=30,
    )


def _wait_workers(server: CliServer, n: int, timeout_s: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) == n:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"expected {n} workers, have {server.worker_pids()}\n{server.log_text()}")


def test_logs_url_and_docs(server):
    line = server.wait_log(r"listening on http://")
    assert f"{server.url}/docs" in line and "2 worker" in line


def test_workers_answer_and_metrics_sum(server, queries, metrics_dir):
    pids = _wait_workers(server, 2)
    seen = set()
    for i in range(12):
        r = _search(server.url, queries[i % len(queries)])
        assert r.status_code == 200, r.text
        assert len(r.json()["results"][0]["hits"]) == 3
        seen.add(httpx.get(f"{server.url}/health", timeout=10).json()["pid"])
    assert seen <= pids and seen  # answered by the forked workers, never the parent
    assert server.proc.pid not in seen
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("univl_fast_http_requests_total{")
        and 'route="/v1/search"' in line
        and 'status="200"' in line
    )
    assert total >= 12  # counted across both worker processes
    # both workers write their values where /metrics sums them (multiprocess mode): each one's
    # warm-up search observed the stage histograms
    writers = {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("histogram_*.db")}
    assert pids <= writers


def test_sigkilled_worker_is_replaced_while_the_other_serves(server, queries):
    before = _wait_workers(server, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    for i in range(8):  # the survivor answers at once
        assert _search(server.url, queries[i]).status_code == 200
    server.wait_log(rf"worker {victim} died \(signal SIGKILL\)")
    after = _wait_workers(server, 2)
    assert victim not in after and len(after - before) == 1
    wait_ready(server.url)
    for i in range(6):
        assert _search(server.url, queries[i]).status_code == 200


def test_sigterm_drains_in_flight_and_refuses_new(server, queries):
    """Last test of the module: it stops the server."""
    body = json.dumps({"queries": [queries[0]], "k": 2}).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    with socket.create_connection(host_port(server.url), timeout=10) as s:
        s.sendall(raw_request(server.url, "POST", "/v1/search", head, body[:5]))
        time.sleep(0.3)  # the request is in flight in a worker
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                socket.create_connection(host_port(server.url), timeout=1).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = True
        assert refused, "new connections still accepted after SIGTERM"
        s.sendall(body[5:])
        status, raw = read_response(s, 10)
    assert status == 200, raw[:300]
    answer = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert len(answer["results"][0]["hits"]) == 2
    assert server.proc.wait(timeout=30) == 0
    server.wait_log("all workers stopped")
