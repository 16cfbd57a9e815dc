"""Reusable device buffers: the growth rule shared by the TensorRT runner and the CUDA kernel.

A buffer keeps its allocation across calls and grows only when a call needs more than any
earlier one: to the larger of the request and twice the old capacity, rounded up to 2 MiB. So
steady traffic allocates nothing, and a batch size that creeps up reallocates O(log n) times.
``csrc/cuda/buffer_policy.h`` is the same rule in C++ (tests/test_build.py checks they agree).
Torch-free and CUDA-free: the allocator is passed in, so the policy runs and is tested on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

GRANULE = 2 << 20  # bytes: the CUDA allocator's large-page size
_SIZE_MAX = (1 << 64) - 1  # size_t on the 64-bit hosts CUDA supports

Handle = TypeVar("Handle")


def grown_capacity(current: int, needed: int) -> int:
    """Capacity (bytes) a buffer of ``current`` bytes must have to hold ``needed`` bytes.

    ``current`` when it is enough (never shrinks); else max(needed, 2 * current) rounded up to
    :data:`GRANULE`. 0 when that would not fit a 64-bit size (the caller reports it).
    """
    if current < 0 or needed < 0:
        raise ValueError(f"sizes must be >= 0, got current={current}, needed={needed}")
    if needed <= current:
        return current
    want = max(needed, 2 * current)
    want = -(-want // GRANULE) * GRANULE
    return want if want <= _SIZE_MAX else 0


class GrowingBuffer(Generic[Handle]):
    """One device allocation reused across calls.

    alloc(nbytes) -> handle and free(handle) are the device allocator (e.g. cudaMalloc /
    cudaFree). Not thread-safe on its own: each TensorRT execution slot owns its buffers.
    """

    def __init__(self, alloc: Callable[[int], Handle], free: Callable[[Handle], None]):
        self._alloc, self._free = alloc, free
        self.handle: Handle | None = None
        self.capacity = 0
        self.allocations = 0  # how many times the device allocator was called

    def reserve(self, nbytes: int) -> Handle:
        """A handle to at least ``nbytes`` bytes, allocating only if the buffer must grow."""
        if self.handle is not None and nbytes <= self.capacity:
            return self.handle
        want = grown_capacity(self.capacity, max(int(nbytes), 1))
        if want == 0:
            raise MemoryError(f"a device buffer of {nbytes} bytes cannot be allocated")
        self.release()
        self.handle = self._alloc(want)
        self.capacity = want
        self.allocations += 1
        return self.handle

    def release(self) -> None:
        """Frees the allocation (the next reserve allocates again)."""
        if self.handle is not None:
            handle, self.handle, self.capacity = self.handle, None, 0
            self._free(handle)
