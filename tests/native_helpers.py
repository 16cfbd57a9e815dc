"""Helpers shared by the native tower tests (not a test module)."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable

import numpy as np
import pytest


def assert_forked_child_runs(run: Callable[[], np.ndarray], want: np.ndarray) -> None:
    """``run()`` in a child forked after the tower's thread team exists (a pre-forking server):
    the child has no team workers and must run on its own thread, equal to ``want``, within
    60 s (a hang is killed and fails); the parent's team still works afterwards."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, never return into pytest
        code = 1
        try:
            code = 0 if np.array_equal(run(), want) else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 60)
    if not ready:  # the child hangs waiting for team workers that do not exist in it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish one run within 60 s")
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"\x00", got
    np.testing.assert_array_equal(run(), want)
