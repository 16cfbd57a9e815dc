"""Exit of a process forked from one that ran ONNX Runtime (gunicorn ``--preload`` workers,
other pre-forking servers): skip the C-level exit handlers there.

ONNX Runtime's static destructors, run by ``exit()`` after Python's finalization, destroy
condition variables that threads of the parent were waiting on; in the child those threads
do not exist and ``pthread_cond_destroy`` waits for them forever (seen: a gunicorn worker that
never exits after SIGTERM, outliving its master). The child's exit status is recorded when it
calls ``sys.exit`` (or dies of an uncaught exception) on its main thread; the last Python
exit handler then runs the others, flushes the standard streams and ends the process with
``os._exit(status)``. A child whose status is unknown (``raise SystemExit`` without
``sys.exit``, or the end of the script) exits the ordinary way.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

_status: int | None = None
_installed = False


def _record(status: object) -> None:
    global _status
    if threading.current_thread() is not threading.main_thread():
        return  # SystemExit on another thread ends only that thread
    if status is None:
        _status = 0
    elif isinstance(status, int):
        _status = status
    else:  # Python prints the object to stderr and exits with 1
        _status = 1


def _exit_now() -> None:
    if _status is None:
        return
    atexit.unregister(_exit_now)
    atexit._run_exitfuncs()  # the handlers registered before this one (logging's flush, ...)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001,S110 - a closed stream has nothing left to flush
            pass
    os._exit(_status & 0xFF)


def install_in_forked_child() -> None:
    """Record this child's exit status and end it without the C exit handlers (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    real_exit, real_hook = sys.exit, sys.excepthook

    def exit_recording(status: object = None) -> None:
        _record(status)
        real_exit(status)

    def hook_recording(kind, value, tb) -> None:
        _record(1)
        real_hook(kind, value, tb)

    sys.exit = exit_recording
    sys.excepthook = hook_recording
    atexit.register(_exit_now)
