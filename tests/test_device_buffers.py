"""The TensorRT runner's thread safety and buffer reuse: the parts that run on a CPU
(growth rule, reusable buffer, slot pool) for real, and the runner itself on a GPU host."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from univl_fast.runtime.backends import BackendUnavailable, TensorRTTower, tensorrt_importable
from univl_fast.runtime.device_buffers import GRANULE, GrowingBuffer, grown_capacity
from univl_fast.runtime.slots import SlotPool

MiB = 1 << 20


# ------------------------------------------------------------------ growth rule


def test_grown_capacity_never_shrinks_and_covers_the_request():
    assert grown_capacity(8 * MiB, 5) == 8 * MiB
    assert grown_capacity(8 * MiB, 8 * MiB) == 8 * MiB
    for current in (0, 1, GRANULE - 1, GRANULE, 3 * GRANULE, 1 << 40):
        for needed in (1, 1000, GRANULE + 1, 5 * GRANULE + 7, (1 << 40) + 1):
            cap = grown_capacity(current, needed)
            assert cap >= needed and cap >= current
            if needed > current:
                assert cap % GRANULE == 0, (current, needed, cap)
                assert cap >= 2 * current  # doubles: O(log n) reallocations


def test_grown_capacity_rejects_negative_and_reports_overflow():
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        grown_capacity(-1, 10)
    assert grown_capacity(0, (1 << 64) - 5) == 0


# ------------------------------------------------------------------ reusable buffer


class HostAllocator:
    """Real host memory standing where cudaMalloc / cudaFree go (the policy is what is tested):
    counts live allocations so leaks and double frees show."""

    def __init__(self):
        self.live: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> int:
        buf = np.empty(nbytes, np.uint8)
        self.live[buf.ctypes.data] = buf
        return buf.ctypes.data

    def free(self, ptr: int) -> None:
        del self.live[ptr]  # KeyError on a double free


def test_buffer_is_reused_and_grows_logarithmically():
    heap = HostAllocator()
    buf = GrowingBuffer(heap.alloc, heap.free)
    first = buf.reserve(1000)
    for n in (1, 999, 1000, 500):
        assert buf.reserve(n) == first  # same allocation, no new one
    assert buf.allocations == 1
    # A batch size that creeps up by one row of 2 KiB each call: 10,000 calls up to ~20 MiB.
    for rows in range(1, 10_001):
        buf.reserve(rows * 2048)
    assert buf.allocations <= 6, buf.allocations
    assert len(heap.live) == 1  # the old allocation was freed each time it grew
    assert buf.capacity >= 10_000 * 2048
    buf.release()
    assert heap.live == {} and buf.capacity == 0
    buf.release()  # idempotent


# ------------------------------------------------------------------ slot pool


def test_slot_pool_gives_each_thread_its_own_slot_and_bounds_their_number():
    made: list[dict] = []

    def factory():
        slot = {"id": len(made), "users": 0}
        made.append(slot)
        return slot

    pool = SlotPool(factory, max_slots=3)
    overlaps: list[str] = []
    peak = [0]
    active = [0]
    lock = threading.Lock()

    def worker():
        for _ in range(20):
            with pool.take() as slot:
                with lock:
                    slot["users"] += 1
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                    if slot["users"] != 1:
                        overlaps.append(f"slot {slot['id']} used by {slot['users']} threads")
                time.sleep(0.001)
                with lock:
                    slot["users"] -= 1
                    active[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a thread hung waiting for a slot"
    assert overlaps == []
    assert len(made) == 3 and pool.created == 3  # never more than max_slots
    assert peak[0] == 3  # and all of them were used at once


def test_slot_pool_factory_failure_frees_the_place():
    calls = [0]

    def factory():
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("context creation failed")
        return object()

    pool = SlotPool(factory, max_slots=1)
    with pytest.raises(RuntimeError, match="context creation failed"):
        with pool.take():
            pass
    assert pool.created == 0
    with pool.take() as slot:  # the failed attempt did not use up the only place
        assert pool.created == 1  # this take made the one context the failed one did not
    assert pool.drain() == [slot] and pool.created == 0
    with pytest.raises(ValueError, match="max_slots must be >= 1"):
        SlotPool(object, 0)


# ------------------------------------------------------------------ the runner


@pytest.mark.skipif(tensorrt_importable(), reason="tensorrt is installed here")
def test_tensorrt_tower_without_tensorrt_names_the_extra(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"univl-fast\[gpu\]"):
        TensorRTTower(tmp_path / "x.plan", "x", "y")


def _tiny_plan(path, d_in: int = 16, d_out: int = 8):
    """A TensorRT plan of y = x @ w (dynamic batch 1..64) built here; returns w."""
    import tensorrt as trt
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((d_in, d_out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", d_out])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, d_in), (8, d_in), (64, d_in))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    path.write_bytes(bytes(plan))
    return w


@pytest.mark.needs_tensorrt
def test_tensorrt_tower_concurrent_calls_reuse_buffers(tmp_path):
    plan = tmp_path / "tiny.plan"
    w = _tiny_plan(plan)
    tower = TensorRTTower(plan, "x", "y", max_contexts=2)
    errors: list[str] = []

    def worker(seed: int):
        rng = np.random.default_rng(seed)
        for _ in range(25):
            x = rng.standard_normal((int(rng.integers(1, 65)), 16)).astype(np.float32)
            y = tower.run(x)
            if not np.allclose(y, x @ w, rtol=1e-3, atol=1e-3):
                errors.append(f"thread {seed}: wrong result for batch {x.shape[0]}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert tower._slots.created <= 2
    tower.close()
