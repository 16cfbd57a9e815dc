"""``univl-fast serve --workers N`` with a GPU backend loads the engine in each worker after
the fork, never in the parent (CUDA does not survive a fork) (issue 22, item 7). Tested with
fake backends that record the process they were initialised in; unverified on a GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.gpu_fakes import build_fake_libcuda, fake_onnxruntime
from tests.serve_helpers import REPO, CliServer, wait_ready
from univl_fast.runtime import backends
from univl_fast.serve import prefork
from univl_fast.utils import cuda_driver

pytest_plugins = ["tests.engine_fixtures"]

PREFORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from univl_fast.serve.prefork import Prefork, bind_socket, url_of

    log, fail = sys.argv[1], sys.argv[2] == "fail"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})

    def make_app():  # the fake GPU backend: records where it is initialised
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        if fail:
            raise RuntimeError("fake backend: no GPU for this worker")
        return app, lambda: None

    sock = bind_socket("127.0.0.1", 0)
    print(url_of(sock), flush=True)
    sys.exit(Prefork(None, sock, 2, 5.0, lambda: None, make_app=make_app).run())
    """
)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, str, Path]:
    log = tmp_path / "init_pids.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", PREFORK_SCRIPT, str(log), mode],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])},
    )
    url = proc.stdout.readline().strip()
    return proc, url, log


def _pids(log: Path, n: int, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().split()) >= n:
            return [int(p) for p in log.read_text().split()]
        time.sleep(0.05)
    raise AssertionError(f"{log}: fewer than {n} initialisations within {timeout_s} s")


def test_workers_initialise_their_own_backend_after_the_fork(tmp_path):
    proc, url, log = _start(tmp_path, "ok")
    try:
        pids = _pids(log, 2)
        assert len(set(pids)) == 2 and proc.pid not in pids
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(url, headers={"connection": "close"}, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "workers did not serve"
                time.sleep(0.05)
        assert int(answer.text) in pids  # a worker that loaded its own backend answered
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_worker_that_cannot_load_stops_the_server(tmp_path):
    proc, _url, log = _start(tmp_path, "fail")
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 1, err
    assert "could not load the engine" in err and "fake backend: no GPU" in err
    assert len(log.read_text().split()) <= 2  # stopped, not restarted in a loop


# ------------------------------------------------------------------ the decision in the parent


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    lib = build_fake_libcuda(tmp_path)
    monkeypatch.setattr(cuda_driver, "LIBCUDA_NAMES", (str(lib),))
    cuda_driver.driver_info.cache_clear()
    yield monkeypatch
    cuda_driver.driver_info.cache_clear()


def test_engine_uses_gpu_asks_without_cuda_in_this_process(fake_gpu):
    fake_gpu.setenv("FAKE_CUDA_DEVICES", "1")
    cpu_only = fake_onnxruntime(["CPUExecutionProvider"], set())
    fake_gpu.setattr(backends, "import_onnxruntime", lambda: cpu_only)
    fake_gpu.setattr(backends, "tensorrt_importable", lambda: False)
    assert prefork.engine_uses_gpu("onnxruntime")[0] is False
    azure = fake_onnxruntime(["AzureExecutionProvider", "CPUExecutionProvider"], set())
    fake_gpu.setattr(backends, "import_onnxruntime", lambda: azure)
    assert prefork.engine_uses_gpu(None)[0] is False  # not a GPU provider
    assert prefork.engine_uses_gpu("tensorrt") == (
        True,
        "backend 'tensorrt' on 1 CUDA device(s): Fake GPU 0",
    )
    gpu_ort = fake_onnxruntime(["CUDAExecutionProvider", "CPUExecutionProvider"], set())
    fake_gpu.setattr(backends, "import_onnxruntime", lambda: gpu_ort)
    assert prefork.engine_uses_gpu(None)[0] is True
    assert gpu_ort.sessions == []  # no session (no CUDA context) opened to decide
    # the driver was asked from a subprocess: this process's cache holds only the isolated answer
    assert cuda_driver.driver_info.cache_info().currsize == 1
    fake_gpu.setenv("FAKE_CUDA_DEVICES", "0")
    cuda_driver.driver_info.cache_clear()
    assert prefork.engine_uses_gpu("tensorrt")[0] is False


SITE_PATCH = textwrap.dedent(
    """
    # test_gpu_prefork: a GPU backend that is not there, and ORT sessions that record their pid
    import os
    import univl_fast.runtime.backends as b
    import univl_fast.serve.prefork as p

    p.engine_uses_gpu = lambda backend: (True, "fake GPU for the test")
    _init = b.OrtTower.__init__

    def _recording_init(self, *args, **kwargs):
        with open(os.environ["UNIVL_TEST_INIT_LOG"], "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        _init(self, *args, **kwargs)

    b.OrtTower.__init__ = _recording_init
    """
)


@pytest.mark.slow
def test_serve_with_a_gpu_backend_loads_in_the_workers(tmp_path, tiny_engine, flat_index):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_PATCH)
    log = tmp_path / "sessions.txt"
    (tmp_path / "metrics").mkdir()
    srv = CliServer(
        ["--engine", str(tiny_engine), "--index", str(flat_index), "--workers", "2"],
        env={
            "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
            "UNIVL_TEST_INIT_LOG": str(log),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            # ONNX Runtime sessions for both towers (what is recorded): auto would otherwise
            # run native towers where they are fast here, the image tower's choice depending
            # on a speed measured at export (the test was flaky)
            "UNIVL_FAST_NATIVE_TEXT": "0",
            "UNIVL_FAST_NATIVE_IMAGE": "0",
        },
    )
    try:
        wait_ready(srv.url)
        srv.wait_log("each of the 2 workers loads its own engine after the fork")
        r = httpx.post(
            f"{srv.url}/v1/search", json={"queries": ["a lighthouse"], "k": 2}, timeout=30
        )
        assert r.status_code == 200, r.text
        pids = {int(p) for p in log.read_text().split()}
        workers = srv.worker_pids()
        assert srv.proc.pid not in pids  # no session in the parent
        assert pids and pids <= workers, (pids, workers)
    finally:
        assert srv.stop() == 0
