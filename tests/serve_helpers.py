"""Helpers of the serve tests (not a test module): a real uvicorn server on 127.0.0.1 with an
ephemeral port, in a thread of the test process or as a ``univl-fast serve`` subprocess, and
raw-socket HTTP for the fault tests. Every wait is bounded, so a regression fails, not hangs."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.process_helpers import children, spawn, stop_group
from tests.test_torch_free import BLOCKER

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0  # loading the tiny engine + importing fastapi on a busy 2-core box


@contextlib.contextmanager
def thread_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on 127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    from univl_fast.serve.prefork import bind_socket, url_of

    sock = bind_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "uvicorn thread died while starting"
            assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.02)
        wait_ready(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn thread did not stop within 30 s"


def wait_ready(url: str, timeout_s: float = 60.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/ready", timeout=5, headers=headers)
            if last.status_code == 200:
                return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{url}/ready not 200 within {timeout_s} s (last: {last})")


class CliServer:
    """``univl-fast serve`` in a subprocess with torch, torchvision and open_clip blocked
    (the service must run torch-free). stderr is collected line by line in a thread. The server
    leads its own process group: ``stop`` ends it and its pre-forked workers together, also
    when the master died first (``tests.process_helpers``)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        code = (
            BLOCKER
            + "\nfrom univl_fast.cli import main\nsys.exit(main(['serve', *sys.argv[1:]]))\n"
        )
        self.proc = spawn(
            [sys.executable, "-c", code, *args, "--port", "0"],
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_url()

    def _read(self) -> None:
        if self.proc.stderr is None:  # started without stderr=PIPE: nothing to read
            raise RuntimeError("server process was started without a stderr pipe")
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    def _wait_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                return m.group(1)
        self.stop()
        raise AssertionError("univl-fast serve did not log its URL:\n" + self.log_text())

    def log_text(self) -> str:
        return "\n".join(self.lines[-60:])

    def worker_pids(self) -> set[int]:
        """Live child processes of the server (its pre-forked workers)."""
        return children(self.proc.pid)

    def wait_log(self, pattern: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + self.log_text())

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM to the server's group; its exit code. The group's last members are
        killed in any case; AssertionError when the master had to be killed."""
        code = stop_group(self.proc, timeout_s)
        if code is None:
            raise AssertionError("univl-fast serve did not stop on SIGTERM:\n" + self.log_text())
        return code


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def raw_request(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """The request head (and body) as bytes, for a raw socket."""
    host, port = host_port(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket, timeout_s: float) -> tuple[int | None, bytes]:
    """(status, raw response) read until the server closes or the response is complete; status
    None when the server closed without answering."""
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m and len(rest) >= int(m.group(1)):
                break
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), data


@contextlib.contextmanager
def cli_server(args: list[str], env: dict[str, str] | None = None) -> Iterator[CliServer]:
    """A ready ``univl-fast serve`` subprocess, stopped (SIGTERM, then SIGKILL) however the
    test ends, so a failing test leaves no server running."""
    srv = CliServer(args, env)
    try:
        wait_ready(srv.url)
        yield srv
    finally:
        if srv.proc.poll() is None:
            try:
                srv.stop()
            finally:
                if srv.proc.poll() is None:
                    srv.proc.kill()
                    srv.proc.wait(timeout=10)


def png_bytes(side: int, color: tuple[int, int, int] = (20, 90, 200)) -> bytes:
    """A side x side single-colour PNG file."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buf, format="PNG")
    return buf.getvalue()
