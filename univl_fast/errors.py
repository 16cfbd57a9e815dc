"""One error family for every public univl_fast exception.

Every exception the library raises on purpose derives from :class:`UnivlFastError`, so a
service can map errors to status codes with ``isinstance`` instead of parsing messages. Each
class also keeps the builtin base it had before this module existed (``ValueError`` for bad
input, ``RuntimeError`` for an unavailable part, ``TimeoutError`` for a deadline), so code that
caught those still works.

This module imports nothing from the package: any module may import it.
"""

from __future__ import annotations


class UnivlFastError(Exception):
    """Base class of every exception univl_fast raises on purpose."""


class Overloaded(UnivlFastError, RuntimeError):
    """The request queue is full: the call was refused at once instead of waiting.

    ``limit`` is the queue bound that was reached; ``retry_after_s`` a hint for clients (the
    HTTP service sends it as ``Retry-After``)."""

    def __init__(self, message: str, limit: int | None = None, retry_after_s: float = 1.0):
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s


class DeadlineExceeded(UnivlFastError, TimeoutError):
    """A call did not finish within its deadline (``timeout_s``, seconds)."""

    def __init__(self, message: str, timeout_s: float | None = None):
        super().__init__(message)
        self.timeout_s = timeout_s


__all__ = ["DeadlineExceeded", "Overloaded", "UnivlFastError"]
