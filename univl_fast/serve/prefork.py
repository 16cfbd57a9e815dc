"""Run the app under uvicorn: in this process, or pre-forked into N worker processes.

Pre-forking: the parent has already loaded (and warmed) the engine; it binds the listening
socket, then forks N children, each running ``uvicorn.Server`` on the inherited socket (the
kernel spreads connections over the processes accepting on it). The children share the
engine's read-only memory copy-on-write and nothing mutable (each makes its own thread pool,
and the library restarts its batcher after fork). The parent only supervises:

- a worker that dies (SIGKILL, crash) is replaced by a fresh fork, while the others go on
  serving; a worker that keeps dying at once is restarted at most once a second;
- SIGTERM / SIGINT: the parent closes its copy of the socket and sends SIGTERM to the workers,
  which stop accepting, finish their in-flight requests (``graceful_timeout_s``) and exit;
  new connections are then refused. Workers still alive after the grace period are killed.

With a GPU backend the engine is NOT loaded in the parent: CUDA cannot be used in a child of a
process that initialised it, so every worker would answer 500. ``engine_uses_gpu`` decides
that without touching CUDA in the parent (the driver is asked from a subprocess), and each
worker then builds its own app (``make_app``: load, warm up) after the fork. A worker that
cannot load exits with ``WORKER_LOAD_FAILED``; the parent then stops the others and fails
instead of restarting it forever. (Unverified on a GPU: tested with a fake backend that
records the process it was initialised in.)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("univl_fast.serve")

_POLL_S = 0.1  # how often the parent reaps and replaces workers
_MIN_RESTART_S = 1.0  # a worker that died this soon after its start is restarted this late
WORKER_LOAD_FAILED = 3  # exit code of a worker whose make_app() raised


def engine_uses_gpu(backend: str | None) -> tuple[bool, str]:
    """Whether loading an engine with ``backend`` (None/"auto", "onnxruntime", "tensorrt")
    may initialise CUDA, and why; asked without initialising CUDA in this process. Errs on
    the GPU side: loading after the fork is always safe, loading before it is not."""
    from univl_fast.utils.cuda_driver import driver_info

    if backend in ("cpu", "onnxruntime-cpu"):
        return False, f"backend {backend!r}"
    driver = driver_info(isolated=True)
    if driver.devices == 0:
        return False, f"no CUDA device ({driver.error or 'none visible'})"
    gpu = f"{driver.devices} CUDA device(s): {', '.join(driver.names)}"
    if backend == "tensorrt":
        return True, f"backend 'tensorrt' on {gpu}"
    from univl_fast.runtime.backends import _PROVIDER, _ort_providers, tensorrt_importable

    gpu_providers = [
        p for p in _ort_providers() if p in _PROVIDER.values() and p != "CPUExecutionProvider"
    ]
    if gpu_providers:
        return True, f"onnxruntime has {', '.join(gpu_providers)} and {gpu}"
    if backend in (None, "auto") and tensorrt_importable():
        return True, f"tensorrt is installed and {gpu}"
    return False, "onnxruntime has no GPU provider"


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket (port 0: any free port), inheritable by forked workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns Nagle off
    # (TCP_NODELAY) only on sockets that say TCP. With Nagle on, a keep-alive response's body
    # waits for the client's delayed ACK of its headers: +40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _uvicorn_server(app: Any, graceful_timeout_s: float, on_exit: Callable[[], None]):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            on_exit()  # /ready answers 503 from now on
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_config=None,  # the service logs through logging (JSON access lines of its own)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(graceful_timeout_s)),
        # idle keep-alive connections stay open this long: a client pool idle for a few seconds
        # (a load balancer, a benchmark between phases) must not find them closed under it
        timeout_keep_alive=20,
    )
    return Server(config)


def run_in_process(
    app: Any, sock: socket.socket, graceful_timeout_s: float, on_exit: Callable[[], None]
) -> int:
    """Serve on ``sock`` in this process until SIGTERM / SIGINT (then drain and return)."""
    server = _uvicorn_server(app, graceful_timeout_s, on_exit)
    server.run(sockets=[sock])
    return 0 if server.started else 1


class Prefork:
    """The supervising parent of N forked uvicorn workers.

    ``app``: one app loaded in the parent, shared copy-on-write; or ``make_app`` (then ``app``
    is None): called in each worker after the fork, returning ``(app, on_exit)``: for a GPU
    backend, whose state must not cross a fork."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        workers: int,
        graceful_timeout_s: float,
        on_exit: Callable[[], None],
        on_worker_exit: Callable[[int], None] | None = None,
        make_app: Callable[[], tuple[Any, Callable[[], None]]] | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if (app is None) == (make_app is None):
            raise ValueError("Prefork needs exactly one of app and make_app")
        self.app = app
        self.make_app = make_app
        self.load_failed = False
        self.sock = sock
        self.workers = workers
        self.graceful_timeout_s = graceful_timeout_s
        self.on_exit = on_exit
        self.on_worker_exit = on_worker_exit
        self.children: dict[int, float] = {}  # pid -> start time
        self._stopping = False

    def _fork_worker(self) -> int:
        pid = os.fork()
        if pid == 0:  # the worker: serve, then leave without running the parent's exit hooks
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                app, on_exit = self.app, self.on_exit
                if self.make_app is not None:
                    code = WORKER_LOAD_FAILED  # until the worker's own engine is loaded
                    app, on_exit = self.make_app()
                    code = 1
                code = run_in_process(app, self.sock, self.graceful_timeout_s, on_exit)
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                what = "could not load the engine" if code == WORKER_LOAD_FAILED else "failed"
                log.exception("worker %d %s", os.getpid(), what)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = time.monotonic()
        log.info("worker %d started", pid)
        return pid

    def _stop(self, signum: int, _frame: Any) -> None:
        if not self._stopping:
            log.info("received %s: draining workers", signal.Signals(signum).name)
        self._stopping = True

    def _reap(self) -> list[tuple[int, float]]:
        """Collect exited workers -> [(pid, seconds it lived)]."""
        dead = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            started = self.children.pop(pid, None)
            if started is None:
                continue
            how = (
                f"signal {signal.Signals(os.WTERMSIG(status)).name}"
                if os.WIFSIGNALED(status)
                else f"exit code {os.WEXITSTATUS(status)}"
            )
            lived = time.monotonic() - started
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_LOAD_FAILED:
                if not self._stopping:
                    log.error("worker %d could not load the engine: stopping the server", pid)
                self.load_failed = True
                self._stopping = True
            elif not self._stopping:
                log.warning("worker %d died (%s) after %.1f s; starting a new one", pid, how, lived)
            if self.on_worker_exit is not None:
                self.on_worker_exit(pid)
            dead.append((pid, lived))
        return dead

    def run(self) -> int:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.workers):
                self._fork_worker()
            while not self._stopping:
                for _pid, lived in self._reap():
                    if self._stopping:
                        break
                    if lived < _MIN_RESTART_S:
                        time.sleep(_MIN_RESTART_S - lived)  # a crash loop must not spin
                    self._fork_worker()
                time.sleep(_POLL_S)
            code = self._drain()
            return 1 if self.load_failed else code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _drain(self) -> int:
        # The parent's copy of the socket must go too, or connections would queue unanswered
        # in its backlog once the workers stop accepting.
        self.sock.close()
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.graceful_timeout_s + 5.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(_POLL_S)
        for pid in list(self.children):
            log.warning("worker %d did not finish within the grace period: killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.children:
            self._reap()
            time.sleep(_POLL_S)
        log.info("all workers stopped")
        return 0
