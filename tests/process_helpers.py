"""Child processes of the tests that cannot outlive them (not a test module).

A server a test starts (``univl-fast serve --workers N``, ``gunicorn --preload``) forks workers
of its own. Stopping only the process the test started leaves those workers orphaned, holding
their port, whenever the master dies or is killed first. So every such process is started as
the leader of a new process group (``spawn``) and stopped as a group (``stop_group``: SIGTERM
to the group, then SIGKILL to whatever of the group is left), on success and on failure alike
(``process_group``, a context manager). The session's last fixture (``tests/conftest.py``)
kills any group still registered, should a test have bypassed both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

# process group ids started by spawn() and not yet stopped
_LIVE_GROUPS: set[int] = set()


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(argv, **kwargs)`` as the leader of a new process group (session)."""
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    _LIVE_GROUPS.add(proc.pid)
    return proc


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live (not zombie) process, from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), int(fields[1]), int(fields[2])


def group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    return {pid for pid, _, group in _live_processes() if group == pgid}


def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid``."""
    return {child for child, parent, _ in _live_processes() if parent == pid}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen, timeout_s: float = 30.0) -> int | None:
    """Stop ``proc`` (started by ``spawn``) and every process of its group: SIGTERM to the
    group, up to ``timeout_s`` for the leader to exit, then SIGKILL to the whole group
    (workers that outlived their master, or ignored SIGTERM). Returns the leader's exit code
    (None when it had to be killed). Never leaves a member of the group alive."""
    pgid = proc.pid
    code: int | None = None
    try:
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = proc.returncode
        deadline = time.monotonic() + timeout_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the members the leader is still stopping (graceful workers)
    finally:
        _signal_group(pgid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        _LIVE_GROUPS.discard(pgid)
    return code


@contextlib.contextmanager
def process_group(
    argv: list[str], stop_timeout_s: float = 30.0, **kwargs
) -> Iterator[subprocess.Popen]:
    """``spawn(argv)`` for the ``with`` body; its whole group is stopped when the body ends,
    also when it raises or fails an assertion."""
    proc = spawn(argv, **kwargs)
    try:
        yield proc
    finally:
        stop_group(proc, stop_timeout_s)


def kill_leftover_groups() -> list[int]:
    """SIGKILL every group ``spawn`` started that was never stopped; returns their ids."""
    left = sorted(_LIVE_GROUPS)
    for pgid in left:
        _signal_group(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()
    return left
