"""Fork safety: an Engine (compiled batcher, thread teams, ORT sessions, faiss) made and used
before fork() works in the child, as under gunicorn --preload or a multiprocessing fork pool.
Every wait is bounded: a child that hangs fails the test instead of hanging it."""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import univl_fast
from tests.engine_helpers import PRECISION, assert_same_ranking
from tests.host_routes import assert_int8_fallback, int8_route, native_text_written
from tests.process_helpers import group_members, pid_alive, process_group

pytest.importorskip("univl_fast._C", reason="compiled core not built")
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

pytest_plugins = ["tests.engine_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 60


def in_child(fn, timeout_s: float = CHILD_TIMEOUT_S):
    """Forks; the child runs fn() and pipes back its pickled result (or exception text). Kills
    the child and fails when nothing comes back within timeout_s."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        # A hang shows where it is: the child's stacks go to stderr before the parent gives up.
        faulthandler.dump_traceback_later(max(1.0, timeout_s - 5), exit=True)
        try:
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
            code = 1
        try:
            os.write(w, len(payload).to_bytes(8, "little") + payload)
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(0.0, left))
            if not ready:
                pytest.fail(f"the forked child did not answer within {timeout_s} s (hang)")
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    assert len(data) >= 8, "the child died without answering (a hang ends so: stacks on stderr)"
    status, value = pickle.loads(data[8:])
    assert status == "ok", f"the child raised: {value}"
    return value


# ------------------------------------------------------------------ the compiled parts alone


def test_batcher_restarts_its_workers_in_the_child():
    from univl_fast.search.batching import QueryBatcher

    with QueryBatcher(lambda items: [x * 2 for x in items], max_batch=4, max_wait_us=100) as b:
        assert b.submit([1, 2]) == [2, 4]

        def child():
            got = b.submit([3, 4, 5], timeout=20)
            return got, b.stats()["restarts_after_fork"]

        got, restarts = in_child(child)
        assert got == [6, 8, 10]
        assert restarts == 1
        assert b.submit([7]) == [14]  # the parent's workers still serve
        assert b.stats()["restarts_after_fork"] == 0


def test_batcher_forked_while_a_batch_is_running():
    """fork() while a worker is inside fn and other callers are queued: the child starts clean
    (the parent's queued requests are not run there) and the parent's callers all finish."""
    from univl_fast.search.batching import QueryBatcher

    release = threading.Event()
    entered = threading.Event()

    def fn(items):
        if "slow" in items:
            entered.set()
            release.wait(30)
        return [f"{x}!" for x in items]

    with QueryBatcher(fn, max_batch=1, max_wait_us=0) as b:
        results = {}
        callers = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, b.submit([i])))
            for i in range(4)
        ]
        slow = threading.Thread(target=lambda: results.__setitem__("slow", b.submit(["slow"])))
        slow.start()
        assert entered.wait(30)
        for t in callers:
            t.start()
        while b.stats()["queued_requests"] < 4:
            time.sleep(0.001)

        def child():
            return b.submit(["child"], timeout=20), b.stats()["queued_items"]

        got, queued = in_child(child)
        assert got == ["child!"]
        assert queued == 0
        release.set()
        for t in [slow, *callers]:
            t.join(30)
            assert not t.is_alive()
    assert results == {"slow": ["slow!"], **{i: [f"{i}!"] for i in range(4)}}


def test_combine_threads_work_in_the_child():
    """The combine kernel runs on its own threads; libgomp's (the previous implementation)
    hang in a child forked after the parent ran a parallel region."""
    from univl_fast import _C

    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512), dtype=np.float32)  # large enough to use every thread
    b = rng.standard_normal((512, 512), dtype=np.float32)
    want = _C.combine_image_docs(a, b)
    got = in_child(lambda: _C.combine_image_docs(a, b), timeout_s=30)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_C.combine_image_docs(a, b), want)


# ------------------------------------------------------------------ the whole Engine


@pytest.fixture(scope="module")
def parent_hits(tiny_engine, flat_index, queries):
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION) as eng:
        return {q: eng.search([q], k=20)[0] for q in queries[:6]}


@pytest.mark.parametrize(
    ("precision", "batching"),
    [(PRECISION, True), (PRECISION, False), ("int8", True)],  # int8: the native text tower
)
def test_engine_search_in_a_forked_child(
    tiny_engine, flat_index, queries, parent_hits, precision, batching
):
    """int8 runs the native text tower wherever the engine has it (by name: its portable
    kernels run on any CPU); an engine without a verified int8 route (this host's int8
    kernels missed parity at export) must fall back to fp32 and say why instead."""
    from PIL import Image

    runtime_asked = None
    if precision == "int8":
        if not int8_route(tiny_engine).verified:
            assert_int8_fallback(tiny_engine)
            return
        native = native_text_written(tiny_engine)
        runtime_asked = "native" if native.verified else "onnxruntime"
        if not native.verified:  # written where verified: the manifest must say why not
            assert native.reason
    qs = queries[:6]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    captions = ["a red roof", "two dogs"]
    with univl_fast.load(
        tiny_engine,
        index=flat_index,
        precision=precision,
        batching=batching,
        text_runtime=runtime_asked,
    ) as eng:
        # Batcher, ORT sessions, thread teams and combine threads all running before the fork.
        before = eng.search(qs, k=10)
        docs = eng.encode_image_docs(images, captions)
        parent_encoder = eng.encoder

        def child():
            hits = eng.search(qs, k=10, timeout=30)
            reopened = eng.encoder is not parent_encoder  # ORT sessions are not fork-safe
            return hits, eng.encode_image_docs(images, captions), eng.stats(), reopened

        got, child_docs, child_stats, reopened = in_child(child)
        assert eng.encoder is parent_encoder
        after = eng.search(qs, k=10)
        runtime = eng.encoder.text_runtime
    assert runtime == (runtime_asked or "onnxruntime")
    for q, g, b, a in zip(qs, got, before, after, strict=True):
        assert_same_ranking(g, b, 10, f"child {q!r}")
        assert_same_ranking(a, b, 10, f"parent after the fork {q!r}")
        if precision == PRECISION:
            assert_same_ranking(g, parent_hits[q], 10, f"child vs another engine {q!r}")
    np.testing.assert_allclose(child_docs, docs, atol=1e-6)
    assert reopened, "the child reused the parent's encoder sessions"
    assert child_stats["batching"] is batching
    assert child_stats["restarts_after_fork"] == (1 if batching else 0)


_POOL_ENGINE = None  # set before the pool forks; the workers inherit it


def _pool_search(query: str):
    return os.getpid(), _POOL_ENGINE.search([query], k=10, timeout=30)[0]


def test_multiprocessing_fork_pool(tiny_engine, flat_index, queries, parent_hits):
    global _POOL_ENGINE
    qs = list(parent_hits)
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION) as eng:
        eng.search(qs[:2], k=5)
        _POOL_ENGINE = eng
        try:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(2) as pool:
                # Two rounds of one query per worker at a time; bounded by get(timeout).
                answers = pool.map_async(_pool_search, qs * 2, chunksize=1).get(timeout=120)
        finally:
            _POOL_ENGINE = None
    assert len(answers) == 2 * len(qs)
    for (pid, hits), q in zip(answers, qs * 2, strict=True):
        assert pid != os.getpid()
        assert_same_ranking(hits, parent_hits[q], 10, f"pool worker {pid} {q!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gunicorn() -> str | None:
    exe = Path(sys.executable).with_name("gunicorn")
    return str(exe) if exe.exists() else shutil.which("gunicorn")


@pytest.mark.skipif(_gunicorn() is None, reason="gunicorn is not installed (scripts/setup.sh)")
def test_gunicorn_preload_workers_answer(tiny_engine, flat_index, queries, parent_hits, tmp_path):
    """A real pre-forking server: gunicorn --preload loads (and searches with) the engine in its
    master, forks 2 workers, and each worker answers a search over HTTP."""
    port = _free_port()
    env = dict(
        os.environ,
        UNIVL_TEST_ENGINE=str(tiny_engine),
        UNIVL_TEST_INDEX=str(flat_index),
        UNIVL_TEST_PRECISION=PRECISION,
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    log_path = tmp_path / "gunicorn.log"
    qs = list(parent_hits)
    answers: dict[int, list] = {}
    failures: list[str] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        q = qs[i % len(qs)]
        url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"q": q})
        try:
            with urllib.request.urlopen(url, timeout=20) as resp:
                body = json.loads(resp.read())
        except OSError as exc:  # not listening yet, or a worker that hangs (timeout)
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            return
        try:
            assert_same_ranking(
                [univl_fast.Hit(*h) for h in body["hits"]], parent_hits[q], 5, f"worker {q!r}"
            )
        except AssertionError as exc:
            with lock:
                wrong.append(f"pid {body['pid']}: {exc}")
        with lock:
            answers.setdefault(body["pid"], []).append(q)

    argv = [
        _gunicorn(),
        "--preload",
        "--workers=2",
        "--worker-class=sync",
        f"--bind=127.0.0.1:{port}",
        "--timeout=60",
        "--graceful-timeout=10",
        "tests.wsgi_search_app:app",
    ]
    # The master and its workers form one process group, stopped as a whole when the body
    # ends, failed or not: no worker outlives the test holding the port.
    with (
        log_path.open("w") as log,
        process_group(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) as proc,
    ):
        deadline = time.monotonic() + 150
        i = 0
        while len(answers) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            # A few requests at once, so that a busy worker leaves the next to the other one.
            batch = [threading.Thread(target=ask, args=(i + j,)) for j in range(4)]
            for t in batch:
                t.start()
            for t in batch:
                t.join(30)
            i += 4
            if len(answers) < 2:
                time.sleep(0.2)
        workers = group_members(proc.pid) - {proc.pid}
    assert not any(pid_alive(pid) for pid in workers), "gunicorn workers outlived the test"
    server_log = log_path.read_text()
    assert len(answers) == 2, (
        f"answers from {sorted(answers)}; failures {failures[-3:]}; log:\n{server_log[-3000:]}"
    )
    assert proc.pid not in answers  # workers answered, not the master
    assert not wrong, wrong[:3]
