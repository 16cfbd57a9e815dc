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
  * HTTP: C keep-alive connections spread over ``--client-procs`` client processes (each its
    own event loop and a lean raw-socket HTTP/1.1 client, ``bench/http_load.py``) each loop
    ``POST /v1/search`` with one query, k=10; latency is the client's (sent -> body read).
Then the overload run: the client processes send requests open-loop at 4x the best HTTP
throughput measured above (each with a client deadline of the server's ``--request-timeout`` +
2 s) for ``--overload-seconds``; it reports the status mix (200 / 429 / 504 / other / client
timeout / connection error), the offered and the sent rate, requests never answered, and the
429s' latency p50/p99 as the client saw it and as the server spent it (``Server-Timing``).

CPU accounting, so a reader can tell whether the client or the server is the limit: per window
the CPU seconds of the client processes, of the server process(es) (``/proc``) and of this
process for the in-process baseline, each per request and as cores used. On a box where client
and server share the cores, "server CPU ms/request" is the figure that carries over; pin them
apart with ``--client-cpus`` / ``--server-cpus`` where there are cores to spare.
Every loop is bounded in time and in outstanding requests; all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
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
        cpus: list[int] | None = None,
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
        if cpus:  # before it forks its workers: they inherit the mask
            os.sched_setaffinity(self.proc.pid, cpus)
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

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the server process and its live worker processes."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        pids = [self.proc.pid]
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(x) for x in kids.split()]
        except OSError:
            pass
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

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


def overload_summary(raw: dict, rate: float) -> dict:
    """The open-loop run's figures from ``ClientPool.open``'s raw result."""
    import numpy as np

    by_status, server_s = raw["by_status"], raw["server_s"]
    answered = sum(len(v) for v in by_status.values())
    out = {
        "offered_rate": rate,
        "sent_rate": raw["sent"] / raw["elapsed"],
        "sent": raw["sent"],
        "not_sent_client_bound": raw["skipped"],
        "answered": answered,
        "lost": raw["sent"] - answered,
        "unanswered_at_client_deadline": raw["unanswered"],
        "status": {k: len(v) for k, v in sorted(by_status.items())},
        "client_processes": raw["processes"],
        "client_cpu_s": raw["client_cpu_s"],
        "client_cores": raw["client_cpu_s"] / raw["wall_s"],
        "client_cpu_ms_per_request": 1e3 * raw["client_cpu_s"] / max(1, raw["sent"]),
    }
    for key in ("200", "429", "504"):
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
        "HTTP / in-process | HTTP p99/p50 | HTTP non-200 | CPU ms/request: in-process / "
        "server / client | cores used: server / client |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, h = r["in_process"], r["http"]

        def cell(x: dict) -> str:
            if not x.get("queries"):
                return "-"
            return f"{x['qps']:.1f} ({x['p50_ms']:.2f} / {x['p95_ms']:.2f} / {x['p99_ms']:.2f})"

        def ms(x: dict, key: str) -> str:
            return f"{x[key]:.2f}" if x.get(key) is not None else "-"

        ratio = f"{h['qps'] / a['qps']:.2f}x" if a.get("qps") and h.get("qps") else "-"
        tail = f"{h['p99_ms'] / h['p50_ms']:.2f}" if h.get("queries") else "-"
        bad = {k: v for k, v in h.get("status", {}).items() if k != "200"}
        cpu = (
            f"{ms(a, 'cpu_ms_per_query')} / {ms(h, 'server_cpu_ms_per_request')} / "
            f"{ms(h, 'client_cpu_ms_per_request')}"
        )
        cores = f"{h.get('server_cores', 0):.3f} / {h.get('client_cores', 0):.3f}"
        lines.append(
            f"| {r['clients']} | {cell(a)} | {cell(h)} | {ratio} | {tail} | {bad or 0} | "
            f"{cpu} | {cores} |"
        )
    return "\n".join(lines)


def _cpus(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


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
    p.add_argument(
        "--client-procs", type=int, default=2, help="load-generator processes (default 2)"
    )
    p.add_argument("--client-cpus", help="pin the client processes to these CPUs, e.g. 2,3")
    p.add_argument("--server-cpus", help="pin the server (and its workers) to these CPUs")
    p.add_argument("--out", default=str(ROOT / "results.json"))
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_e2e
    from http_load import ClientPool

    import univl_fast

    if args.engine and args.index:
        engine_dir, index_dir = Path(args.engine), Path(args.index)
    else:
        engine_dir = bench_e2e.ensure_engine()
        index_dir = bench_e2e.ensure_index(engine_dir)
    queries = bench_e2e.bench_queries(ROOT)
    bodies = [json.dumps({"queries": [q], "k": K}).encode() for q in queries]
    clients = [int(x) for x in args.clients.split(",")]
    print(f"machine: {bench_e2e.machine()}", file=sys.stderr)
    print(f"engine {engine_dir} ({args.precision}), index {index_dir}", file=sys.stderr)

    # the client processes first: spawned before this process loads an engine
    pool = ClientPool(args.client_procs, _cpus(args.client_cpus))
    server = Server(
        engine_dir,
        index_dir,
        args.precision,
        args.workers,
        args.max_queue,
        args.request_timeout,
        _cpus(args.server_cpus),
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
                cpu_a = cpu_srv = cpu_cli = wall_cli = 0.0
                window = args.seconds / args.rounds
                for _ in range(args.rounds):
                    t_cpu = time.process_time()
                    got, err = in_process(eng, queries, c, window)
                    cpu_a += time.process_time() - t_cpu
                    lat_a += got
                    errors += err
                    s0 = server.cpu_s()
                    res = pool.closed(server.url, bodies, c, window, client_timeout)
                    cpu_srv += server.cpu_s() - s0
                    cpu_cli += res["client_cpu_s"]
                    wall_cli += res["wall_s"]
                    lat_h += res["lat"]
                    for k, v in res["status"].items():
                        status[k] = status.get(k, 0) + v
                sent = sum(status.values())
                row = {
                    "clients": c,
                    "in_process": stats(
                        lat_a,
                        args.seconds,
                        c,
                        errors=errors,
                        cpu_ms_per_query=1e3 * cpu_a / max(1, len(lat_a)),
                    ),
                    "http": stats(
                        lat_h,
                        args.seconds,
                        c,
                        status=status,
                        client_processes=min(args.client_procs, c),
                        server_cpu_ms_per_request=1e3 * cpu_srv / max(1, sent),
                        client_cpu_ms_per_request=1e3 * cpu_cli / max(1, sent),
                        server_cores=cpu_srv / max(1e-9, wall_cli),
                        client_cores=cpu_cli / max(1e-9, wall_cli),
                    ),
                }
                rows.append(row)
                print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
        best = max((r["http"].get("qps", 0.0) for r in rows), default=0.0)
        overload = None
        if best > 0 and args.overload_seconds > 0:
            rate = args.overload * best
            print(f"overload: {rate:.0f} requests/s offered for {args.overload_seconds} s",
                  file=sys.stderr)  # fmt: skip
            s0 = server.cpu_s()
            raw = pool.open(server.url, bodies, rate, args.overload_seconds, client_timeout)
            overload = overload_summary(raw, rate)
            overload["server_cores"] = (server.cpu_s() - s0) / raw["wall_s"]
    finally:
        server.stop()
        pool.close()

    print(table(rows))
    if overload:
        print(
            f"\n{args.overload:g}x overload ({overload['offered_rate']:.0f}/s offered, "
            f"{overload['sent_rate']:.0f}/s sent by {overload['client_processes']} client "
            f"processes using {overload['client_cores']:.2f} cores, "
            f"{overload['client_cpu_ms_per_request']:.3f} CPU ms/request; server "
            f"{overload['server_cores']:.2f} cores): status {overload['status']}, "
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
        "client_processes": args.client_procs,
        "client_cpus": _cpus(args.client_cpus),
        "server_cpus": _cpus(args.server_cpus),
        "rows": rows,
        "overload": overload,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
