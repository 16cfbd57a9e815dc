"""A test that starts a server leaves nothing running, also when it fails
(``tests.process_helpers``): the server's workers go with it, whether the body raised, the
master ignored nothing or died first. The stand-in server forks one worker that ignores
SIGTERM (a hung or slow-to-stop worker) and prints both pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.process_helpers import group_members, pid_alive, process_group, spawn, stop_group

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SERVER = """
import os, signal, sys, time
worker = os.fork()
if worker == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    os._exit(0)
print(os.getpid(), worker, flush=True)
time.sleep(600)
"""


def _pids(proc: subprocess.Popen) -> tuple[int, int]:
    line = proc.stdout.readline()
    master, worker = (int(x) for x in line.split())
    assert master == proc.pid and pid_alive(worker)
    return master, worker


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not pid_alive(pid)


def test_stopping_only_the_master_orphans_its_worker():
    """The failure this module guards against (what tests/test_fork.py's gunicorn test did):
    SIGTERM, then SIGKILL, to the process the test started leaves its worker running."""
    proc = spawn([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        _, worker = _pids(proc)
        proc.terminate()
        proc.wait(10)
        time.sleep(0.2)
        assert pid_alive(worker), "the stand-in's worker died with its master: no orphan to test"
    finally:
        stop_group(proc, timeout_s=5)
    assert _gone(worker)


def test_a_failing_body_leaves_no_child_alive():
    with pytest.raises(RuntimeError, match="the test body failed"):
        with process_group(
            [sys.executable, "-c", SERVER], stop_timeout_s=5, stdout=subprocess.PIPE, text=True
        ) as proc:
            master, worker = _pids(proc)
            raise RuntimeError("the test body failed")
    assert _gone(master) and _gone(worker)
    assert not group_members(master)


def test_workers_of_a_master_that_died_first_are_stopped():
    proc = spawn([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    master, worker = _pids(proc)
    os.kill(master, signal.SIGKILL)
    proc.wait(10)
    assert pid_alive(worker)  # orphaned, still in the master's process group
    assert stop_group(proc, timeout_s=5) == -signal.SIGKILL
    assert _gone(worker) and not group_members(master)
