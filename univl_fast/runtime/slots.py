"""A bounded pool of per-call execution slots (e.g. TensorRT contexts), created on demand.

``SlotPool(factory, max_slots)``: ``with pool.take() as slot:`` hands the calling thread a slot
no other thread holds, creating one with ``factory()`` while fewer than ``max_slots`` exist and
otherwise waiting for one to come back. So a runner whose slot state (shapes, tensor
addresses, buffers, stream) must not be shared gets thread safety without one global lock,
and its device memory stays bounded by ``max_slots``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Slot = TypeVar("Slot")


class SlotPool(Generic[Slot]):
    def __init__(self, factory: Callable[[], Slot], max_slots: int):
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self._factory = factory
        self.max_slots = int(max_slots)
        self._free: list[Slot] = []
        self._created = 0
        self._cond = threading.Condition()

    @property
    def created(self) -> int:
        """Slots that exist now (idle or in use)."""
        with self._cond:
            return self._created

    @contextmanager
    def take(self) -> Iterator[Slot]:
        """The calling thread's slot for the duration of the ``with`` block."""
        slot = self._acquire()
        try:
            yield slot
        finally:
            with self._cond:
                self._free.append(slot)
                self._cond.notify()

    def _acquire(self) -> Slot:
        with self._cond:
            while not self._free and self._created >= self.max_slots:
                self._cond.wait()
            if self._free:
                return self._free.pop()  # most recently used first: its buffers are warm
            self._created += 1
        try:
            return self._factory()  # outside the lock: creating a context is slow
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def drain(self) -> list[Slot]:
        """Removes and returns the idle slots (to free them); slots in use are not touched."""
        with self._cond:
            idle, self._free = self._free, []
            self._created -= len(idle)
            return idle
