"""A process forked from one that ran the engine's ONNX Runtime sessions exits (gunicorn
``--preload`` workers and the like): ONNX Runtime's static destructors would wait forever in
the child for threads that exist only in the parent (univl_fast.utils.fork_exit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("univl_fast._C", reason="compiled core not built")

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import univl_fast

    engine = univl_fast.load(sys.argv[1], batching=False)
    engine.encode_queries(["the parent runs its sessions"])
    pid = os.fork()
    if pid == 0:
        engine.encode_queries(["the child runs its own"])
        sys.exit(int(sys.argv[2]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("exit", os.waitstatus_to_exitcode(status))
            sys.exit(0)
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("hung")
    """
)


@pytest.mark.parametrize("status", [0, 3])
def test_forked_child_exits_with_its_status(tiny_engine, tmp_path, status):
    script = tmp_path / "fork_exit.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tiny_engine), str(status)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["exit", str(status)], (out.stdout, out.stderr[-2000:])
