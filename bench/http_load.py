"""A lean HTTP/1.1 load generator for ``bench/bench_serve.py``: several client processes, each
with its own asyncio loop (uvloop when installed) and a hand-written keep-alive client over raw
streams, so the client's own CPU per request is small and measured.

``ClientPool(processes, cpus)`` starts the processes once (before the engine is loaded, so the
start-up is not timed) and hands them jobs over pipes:

- ``closed(url, bodies, clients, seconds, timeout_s)``: ``clients`` connections spread over the
  processes, each sending its next request when the last one is answered;
- ``open(url, bodies, rate, seconds, timeout_s)``: requests sent at ``rate``/s in total,
  whatever the answers (bounded outstanding per process), the open-loop overload test.

Every result carries the client processes' CPU seconds (``time.process_time`` in each) and the
wall time, so a report can say how much of the machine the client itself used, and the offered
vs the sent rate (a client that cannot keep up sends less than it was asked to).
All traffic stays on loopback; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

if sys.version_info < (3, 11):
    raise ImportError("bench/http_load.py needs Python >= 3.11 (asyncio.timeout)")

MAX_OUTSTANDING_PER_PROCESS = 1024  # open loop: a process never holds more requests than this
PATH = "/v1/search"


# ---------------------------------------------------------------------------- one connection
class Conn:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read status + headers + body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes):
        self.reader = reader
        self.writer = writer
        self.head = head  # request line + fixed headers, up to Content-Length's value

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        return cls(reader, writer, head)

    async def post(self, body: bytes) -> tuple[int, float | None, bool]:
        """-> (status, Server-Timing total in s or None, whether the server keeps it open)."""
        self.writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        server_s = None
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"server-timing":
                at = value.rfind(b"total;dur=")
                if at >= 0:
                    server_s = float(value[at + 10 :].split(b",")[0]) / 1e3
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if length:
            await self.reader.readexactly(length)
        return status, server_s, keep

    def close(self) -> None:
        self.writer.close()


def _classify(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "client-timeout"
    return "connection-error"


# ---------------------------------------------------------------------------- jobs
async def _closed(job: dict[str, Any]) -> dict[str, Any]:
    host, port = job["host"], job["port"]
    bodies: list[bytes] = job["bodies"]
    lat: list[float] = []
    status: dict[str, int] = {}
    end = time.perf_counter() + job["seconds"]

    async def client(c: int) -> None:
        rng = random.Random(job["seed"] + c)
        conn: Conn | None = None
        while (t := time.perf_counter()) < end:
            try:
                async with asyncio.timeout(job["timeout_s"]):
                    if conn is None:
                        conn = await Conn.open(host, port)
                    code, _server, keep = await conn.post(bodies[rng.randrange(len(bodies))])
                key = str(code)
                if not keep:
                    conn.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                key = _classify(exc)
                if conn is not None:
                    conn.close()
                    conn = None
            status[key] = status.get(key, 0) + 1
            if key == "200":
                lat.append(time.perf_counter() - t)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client(c) for c in range(job["clients"])))
    return {"lat": lat, "status": status}


async def _open(job: dict[str, Any]) -> dict[str, Any]:
    host, port = job["host"], job["port"]
    bodies: list[bytes] = job["bodies"]
    rng = random.Random(job["seed"])
    idle: list[Conn] = []
    by_status: dict[str, list[float]] = {}
    server_s: dict[str, list[float]] = {}
    outstanding: set[asyncio.Task] = set()
    sent = skipped = 0

    async def one(body: bytes) -> None:
        t = time.perf_counter()
        conn = idle.pop() if idle else None
        try:
            async with asyncio.timeout(job["timeout_s"]):
                if conn is None:
                    conn = await Conn.open(host, port)
                code, srv, keep = await conn.post(body)
            key = str(code)
            if srv is not None:
                server_s.setdefault(key, []).append(srv)
            if keep:
                idle.append(conn)
            else:
                conn.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            key = _classify(exc)
            if conn is not None:
                conn.close()
        by_status.setdefault(key, []).append(time.perf_counter() - t)

    interval = 1.0 / job["rate"]
    t0 = time.perf_counter()
    while (now := time.perf_counter()) - t0 < job["seconds"]:
        due = int((now - t0) / interval) + 1
        while sent + skipped < due:
            if len(outstanding) >= MAX_OUTSTANDING_PER_PROCESS:
                skipped += 1
                continue
            task = asyncio.create_task(one(bodies[rng.randrange(len(bodies))]))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            sent += 1
        await asyncio.sleep(min(interval, 0.001))
    elapsed = time.perf_counter() - t0
    if outstanding:  # every request has its own timeout: this wait is bounded by it
        await asyncio.wait(outstanding, timeout=job["timeout_s"] + 5)
    unanswered = len(outstanding)
    for task in outstanding:
        task.cancel()
    for conn in idle:
        conn.close()
    return {
        "by_status": by_status,
        "server_s": server_s,
        "sent": sent,
        "skipped": skipped,
        "elapsed": elapsed,
        "unanswered": unanswered,
    }


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = runner(_closed(job) if job["kind"] == "closed" else _open(job))
    out["cpu_s"] = time.process_time() - cpu0
    out["wall_s"] = time.perf_counter() - wall0
    return out


def _worker(conn: Any, cpus: Sequence[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(_run_job(job))


# ---------------------------------------------------------------------------- the pool
class ClientPool:
    """``processes`` client processes (spawned, so nothing of the parent's engine comes along),
    optionally pinned to ``cpus``."""

    def __init__(self, processes: int, cpus: Sequence[int] | None = None):
        if processes < 1:
            raise ValueError(f"client processes must be >= 1, got {processes}")
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, list(cpus) if cpus else None))
            proc.daemon = True
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def _run(self, jobs: list[dict[str, Any]], limit_s: float) -> list[dict[str, Any]]:
        for pipe, job in zip(self.pipes, jobs, strict=False):
            pipe.send(job)
        out = []
        for pipe in self.pipes[: len(jobs)]:
            if not pipe.poll(limit_s):
                raise TimeoutError(f"a client process did not report within {limit_s:.0f} s")
            out.append(pipe.recv())
        return out

    def closed(
        self, url: str, bodies: list[bytes], clients: int, seconds: float, timeout_s: float
    ) -> dict[str, Any]:
        host, port = _host_port(url)
        n = min(len(self.pipes), clients)
        jobs = [
            {
                "kind": "closed",
                "host": host,
                "port": port,
                "bodies": bodies,
                "clients": clients // n + (1 if i < clients % n else 0),
                "seconds": seconds,
                "timeout_s": timeout_s,
                "seed": 1000 + 100 * i,
            }
            for i in range(n)
        ]
        parts = self._run(jobs, seconds + timeout_s + 60)
        status: dict[str, int] = {}
        for p in parts:
            for k, v in p["status"].items():
                status[k] = status.get(k, 0) + v
        return {
            "lat": [x for p in parts for x in p["lat"]],
            "status": status,
            "client_cpu_s": sum(p["cpu_s"] for p in parts),
            "wall_s": max(p["wall_s"] for p in parts),
            "processes": n,
        }

    def open(
        self, url: str, bodies: list[bytes], rate: float, seconds: float, timeout_s: float
    ) -> dict[str, Any]:
        host, port = _host_port(url)
        n = len(self.pipes)
        jobs = [
            {
                "kind": "open",
                "host": host,
                "port": port,
                "bodies": bodies,
                "rate": rate / n,
                "seconds": seconds,
                "timeout_s": timeout_s,
                "seed": 7 + i,
            }
            for i in range(n)
        ]
        parts = self._run(jobs, seconds + timeout_s + 60)
        by_status: dict[str, list[float]] = {}
        server_s: dict[str, list[float]] = {}
        for p in parts:
            for k, v in p["by_status"].items():
                by_status.setdefault(k, []).extend(v)
            for k, v in p["server_s"].items():
                server_s.setdefault(k, []).extend(v)
        return {
            "by_status": by_status,
            "server_s": server_s,
            "sent": sum(p["sent"] for p in parts),
            "skipped": sum(p["skipped"] for p in parts),
            "elapsed": max(p["elapsed"] for p in parts),
            "unanswered": sum(p["unanswered"] for p in parts),
            "client_cpu_s": sum(p["cpu_s"] for p in parts),
            "wall_s": max(p["wall_s"] for p in parts),
            "processes": n,
        }

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not a http://host:port URL: {url!r}")
    return parts.hostname, parts.port
