"""``univl-fast serve`` under load (issue 11): HTTP search vs in-process ``Engine.search`` with
the same number of client threads, in the same run, and a 4x-overload run.

Full table (what BENCHMARKS.md reports)::

    .venv/bin/python bench/bench_serve.py --clients 1,4,16,64 --seconds 8

Quick check of the harness (seconds, any engine + index, e.g. the demo's)::

    .venv/bin/python bench/bench_serve.py --engine runs/demo/engine \
        --index runs/demo/index_int8 --clients 1,4 --seconds 1 --overload-seconds 1

Set-up: by default the engine, index and questions of ``bench/bench_e2e.py`` (cached under
``runs/bench/e2e/``); ``--engine/--index`` use others. The server is ``univl-fast serve`` in a
subprocess on 127.0.0.1 (its own process, as in production; ``--workers``, ``--max-queue``).

Measured, per client count C, interleaved in ``--rounds`` windows so machine drift hits both:
  * in-process: C threads each loop ``engine.search([q], k=10)`` on an Engine in this process;
  * HTTP: C asyncio clients (one httpx connection each) each loop ``POST /v1/search`` with one
    query, k=10; latency is the client's (request sent -> JSON parsed).
Then the overload run: an open-loop client sends requests at 4x the best HTTP throughput
measured above (each with a client deadline of the server's ``--request-timeout`` + 2 s) for
``--overload-seconds``; it reports the status mix (200 / 429 / 504 / other / client timeout /
connection error), the offered and answered rates, and the 429s' latency p50/p99 as the client
saw it and as the server spent it (``Server-Timing`` total: arrival to answer, without the
client's own event-loop lag, which dominates when one Python client floods 2 cores).
Every loop is bounded in time and in outstanding requests; all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("BENCH_SERVE_DIR", REPO / "runs/bench/serve"))
K = 10
OPEN_LOOP_MAX_OUTSTANDING = 2048  # the overload client never holds more requests than this


# ---------------------------------------------------------------------------- server
class Server:
    """``univl-fast serve`` in a subprocess; ``url`` once it logged it and /ready said 200."""

    def __init__(
        self,
        engine: Path,
        index: Path,
        precision: str,
        workers: int,
        max_queue: int,
        request_timeout: float,
    ):
        cmd = [
            sys.executable, "-m", "univl_fast.cli", "serve",
            "--engine", str(engine), "--index", str(index), "--precision", precision,
            "--port", "0", "--workers", str(workers), "--max-queue", str(max_queue),
            "--request-timeout", str(request_timeout), "--no-access-log",
            "--log-level", "warning",
        ]  # fmt: skip
        # the URL line is logged at INFO: show it whatever --log-level says
        self.proc = subprocess.Popen(
            cmd[:-2] + ["--log-level", "info"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.url = self._wait_url(timeout_s=300)
        self._drain = threading.Thread(target=self._consume, daemon=True)
        self._drain.start()
        self._wait_ready(timeout_s=120)

    def _wait_url(self, timeout_s: float) -> str:
        if self.proc.stderr is None:  # started without stderr=PIPE: nothing to read
            raise RuntimeError("server process was started without a stderr pipe")
        deadline = time.monotonic() + timeout_s
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                return m.group(1)
        self.proc.kill()
        raise SystemExit("univl-fast serve did not start:\n" + "".join(lines[-30:]))

    def _consume(self) -> None:  # keep the pipe from filling up
        if self.proc.stderr is None:  # started without stderr=PIPE: nothing to read
            raise RuntimeError("server process was started without a stderr pipe")
        for _ in self.proc.stderr:
            pass

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.url}/ready not 200 within {timeout_s} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------- clients
def stats(lat_s: list[float], seconds: float, clients: int, **extra) -> dict:
    lat = np.asarray(lat_s, dtype=np.float64) * 1e3
    if lat.size == 0:
        return {"clients": clients, "queries": 0, "qps": 0.0, **extra}
    return {
        "clients": clients,
        "queries": int(lat.size),
        "seconds": seconds,
        "qps": float(lat.size / seconds),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        **extra,
    }


def in_process(engine, queries: list[str], clients: int, seconds: float) -> tuple[list[float], int]:
    """C threads loop engine.search([q], k) for ``seconds`` -> (latencies, errors)."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    start = threading.Barrier(clients + 1)
    end = [0.0]

    def client(c: int) -> None:
        rng = random.Random(c)
        start.wait()
        while (t := time.perf_counter()) < end[0]:
            try:
                engine.search([queries[rng.randrange(len(queries))]], k=K)
            except Exception:  # noqa: BLE001 - counted, reported
                errors[0] += 1
                continue
            lat[c].append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    end[0] = time.perf_counter() + seconds
    start.wait()
    for th in threads:
        th.join(timeout=seconds + 60)
    return [x for per in lat for x in per], errors[0]


async def _http_closed_loop(
    url: str, queries: list[str], clients: int, seconds: float, timeout_s: float
) -> tuple[list[float], dict[str, int]]:
    import httpx

    lat: list[float] = []
    status: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as http:
        end = time.perf_counter() + seconds

        async def client(c: int) -> None:
            rng = random.Random(1000 + c)
            while (t := time.perf_counter()) < end:
                q = queries[rng.randrange(len(queries))]
                try:
                    r = await http.post("/v1/search", json={"queries": [q], "k": K})
                    r.json()
                    key = str(r.status_code)
                except httpx.TimeoutException:
                    key = "client-timeout"
                except httpx.TransportError:
                    key = "connection-error"
                status[key] = status.get(key, 0) + 1
                if key == "200":
                    lat.append(time.perf_counter() - t)

        await asyncio.gather(*(client(c) for c in range(clients)))
    return lat, status


async def _http_open_loop(
    url: str, queries: list[str], rate: float, seconds: float, timeout_s: float
) -> dict:
    """Requests sent at ``rate``/s regardless of answers (bounded outstanding)."""
    import httpx

    by_status: dict[str, list[float]] = {}
    server_s: dict[str, list[float]] = {}  # the server's own time (Server-Timing total)
    sent = 0
    skipped = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as http:
        outstanding: set[asyncio.Task] = set()

        async def one(q: str) -> None:
            t = time.perf_counter()
            try:
                r = await http.post("/v1/search", json={"queries": [q], "k": K})
                key = str(r.status_code)
                total = re.search(r"total;dur=([\d.]+)", r.headers.get("server-timing", ""))
                if total:
                    server_s.setdefault(key, []).append(float(total.group(1)) / 1e3)
            except httpx.TimeoutException:
                key = "client-timeout"
            except httpx.TransportError:
                key = "connection-error"
            by_status.setdefault(key, []).append(time.perf_counter() - t)

        t0 = time.perf_counter()
        interval = 1.0 / rate
        while (now := time.perf_counter()) - t0 < seconds:
            due = int((now - t0) / interval) + 1
            while sent + skipped < due:
                if len(outstanding) >= OPEN_LOOP_MAX_OUTSTANDING:
                    skipped += 1
                    continue
                task = asyncio.create_task(one(queries[rng.randrange(len(queries))]))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
                sent += 1
            await asyncio.sleep(min(interval, 0.002))
        elapsed = time.perf_counter() - t0
        if outstanding:
            await asyncio.wait(outstanding, timeout=timeout_s + 5)
    answered = sum(len(v) for v in by_status.values())
    out = {
        "offered_rate": rate,
        "sent_rate": sent / elapsed,
        "sent": sent,
        "not_sent_client_bound": skipped,
        "answered": answered,
        "lost": sent - answered,
        "status": {k: len(v) for k, v in sorted(by_status.items())},
    }
    for key in ("200", "429"):
        if by_status.get(key):
            lat = np.asarray(by_status[key]) * 1e3
            out[f"{key}_p50_ms"] = float(np.percentile(lat, 50))
            out[f"{key}_p99_ms"] = float(np.percentile(lat, 99))
            out[f"{key}_max_ms"] = float(lat.max())
        if server_s.get(key):
            lat = np.asarray(server_s[key]) * 1e3
            out[f"{key}_server_p50_ms"] = float(np.percentile(lat, 50))
            out[f"{key}_server_p99_ms"] = float(np.percentile(lat, 99))
    return out


# ---------------------------------------------------------------------------- main
def table(rows: list[dict]) -> str:
    head = (
        "| clients | in-process q/s (p50 / p95 / p99 ms) | HTTP q/s (p50 / p95 / p99 ms) | "
        "HTTP / in-process | HTTP p99/p50 | HTTP non-200 |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        a, h = r["in_process"], r["http"]

        def cell(x: dict) -> str:
            if not x.get("queries"):
                return "-"
            return f"{x['qps']:.1f} ({x['p50_ms']:.2f} / {x['p95_ms']:.2f} / {x['p99_ms']:.2f})"

        ratio = f"{h['qps'] / a['qps']:.2f}x" if a.get("qps") and h.get("qps") else "-"
        tail = f"{h['p99_ms'] / h['p50_ms']:.2f}" if h.get("queries") else "-"
        bad = {k: v for k, v in h.get("status", {}).items() if k != "200"}
        lines.append(f"| {r['clients']} | {cell(a)} | {cell(h)} | {ratio} | {tail} | {bad or 0} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", help="engine dir (default: bench_e2e's cached ViT-B-32 engine)")
    p.add_argument("--index", help="index dir (default: bench_e2e's cached index)")
    p.add_argument("--precision", default="int8")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per mode")
    p.add_argument("--rounds", type=int, default=2, help="interleaved windows per mode")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--max-queue", type=int, default=64, help="server admission bound")
    p.add_argument("--request-timeout", type=float, default=2.0, help="server deadline, s")
    p.add_argument("--overload", type=float, default=4.0, help="x the best HTTP q/s")
    p.add_argument("--overload-seconds", type=float, default=8.0)
    p.add_argument("--out", default=str(ROOT / "results.json"))
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_e2e

    import univl_fast

    if args.engine and args.index:
        engine_dir, index_dir = Path(args.engine), Path(args.index)
    else:
        engine_dir = bench_e2e.ensure_engine()
        index_dir = bench_e2e.ensure_index(engine_dir)
    queries = bench_e2e.bench_queries(ROOT)
    clients = [int(x) for x in args.clients.split(",")]
    print(f"machine: {bench_e2e.machine()}", file=sys.stderr)
    print(f"engine {engine_dir} ({args.precision}), index {index_dir}", file=sys.stderr)

    server = Server(
        engine_dir, index_dir, args.precision, args.workers, args.max_queue, args.request_timeout
    )
    rows = []
    client_timeout = args.request_timeout + 2.0
    try:
        with univl_fast.load(engine_dir, index=index_dir, precision=args.precision) as eng:
            eng.search(queries[:8], k=K)
            for c in clients:
                lat_a: list[float] = []
                lat_h: list[float] = []
                status: dict[str, int] = {}
                errors = 0
                window = args.seconds / args.rounds
                for _ in range(args.rounds):
                    got, err = in_process(eng, queries, c, window)
                    lat_a += got
                    errors += err
                    got_h, st = asyncio.run(
                        _http_closed_loop(server.url, queries, c, window, client_timeout)
                    )
                    lat_h += got_h
                    for k, v in st.items():
                        status[k] = status.get(k, 0) + v
                row = {
                    "clients": c,
                    "in_process": stats(lat_a, args.seconds, c, errors=errors),
                    "http": stats(lat_h, args.seconds, c, status=status),
                }
                rows.append(row)
                print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
        best = max((r["http"].get("qps", 0.0) for r in rows), default=0.0)
        overload = None
        if best > 0 and args.overload_seconds > 0:
            rate = args.overload * best
            print(f"overload: {rate:.0f} requests/s offered for {args.overload_seconds} s",
                  file=sys.stderr)  # fmt: skip
            overload = asyncio.run(
                _http_open_loop(server.url, queries, rate, args.overload_seconds, client_timeout)
            )
    finally:
        server.stop()

    print(table(rows))
    if overload:
        print(
            f"\n{args.overload:g}x overload ({overload['offered_rate']:.0f}/s offered, "
            f"{overload['sent_rate']:.0f}/s sent): status {overload['status']}, "
            f"lost {overload['lost']}, 429 p50/p99 "
            f"{overload.get('429_p50_ms', float('nan')):.2f}/"
            f"{overload.get('429_p99_ms', float('nan')):.2f} ms at the client, "
            f"{overload.get('429_server_p50_ms', float('nan')):.2f}/"
            f"{overload.get('429_server_p99_ms', float('nan')):.2f} ms in the server; 200 p99 "
            f"{overload.get('200_p99_ms', float('nan')):.2f} ms"
        )
    result = {
        "machine": bench_e2e.machine(),
        "argv": sys.argv,
        "engine": str(engine_dir),
        "index": str(index_dir),
        "precision": args.precision,
        "workers": args.workers,
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout,
        "rows": rows,
        "overload": overload,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
