"""univl_fast.search.batching.QueryBatcher (compiled worker): coalescing, isolation, lifecycle."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("univl_fast._C", reason="compiled core not built")

from univl_fast import _C  # noqa: E402
from univl_fast.errors import DeadlineExceeded, Overloaded, UnivlFastError  # noqa: E402
from univl_fast.search.batching import DEFAULT_QUEUE_FACTOR, QueryBatcher  # noqa: E402


def square_items(items):
    """The batched function of most tests: one result per item, computed per item."""
    return [(caller, seq, value * value + 1) for caller, seq, value in items]


def run_threads(n_threads, target):
    """Starts n_threads running target(i) together; returns {i: result or exception}."""
    results: dict[int, object] = {}
    start = threading.Barrier(n_threads)

    def body(i):
        start.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a submit call never returned"
    return results


def test_results_equal_direct_calls():
    items = [(0, i, i) for i in range(10)]
    with QueryBatcher(square_items, max_batch=4, max_wait_us=100) as batcher:
        assert batcher.submit(items) == square_items(items)
        assert batcher.submit(items[:1]) == square_items(items[:1])
        assert batcher.submit(iter(items[:3])) == square_items(items[:3])  # any iterable


def test_empty_submit_returns_empty_list_without_calling_fn():
    calls = []
    with QueryBatcher(lambda items: calls.append(items) or items, 8, 100) as batcher:
        assert batcher.submit([]) == []
    assert calls == []


@pytest.mark.parametrize("num_workers", [1, 3])
def test_stress_many_threads_each_caller_gets_its_own_rows(num_workers):
    n_threads, requests_per_thread = 64, 40
    seen_batches = []

    def fn(items):
        seen_batches.append(len(items))
        return square_items(items)

    def caller(cid):
        got_all = []
        for seq in range(requests_per_thread):
            # 1..7 items per request; each item encodes (caller id, request, position)
            n = 1 + (cid + seq) % 7
            items = [(cid, seq * 10 + k, cid * 1000 + seq * 10 + k) for k in range(n)]
            got = batcher.submit(items)
            assert got == square_items(items), (cid, seq)
            got_all.extend(got)
        return got_all

    with QueryBatcher(fn, max_batch=32, max_wait_us=2000, num_workers=num_workers) as batcher:
        results = run_threads(n_threads, caller)
        stats = batcher.stats()
    assert stats["num_workers"] == num_workers

    total = 0
    for cid, got in results.items():
        assert not isinstance(got, BaseException), got
        assert all(row[0] == cid for row in got), f"caller {cid} got another caller's rows"
        total += len(got)
    assert total >= 2000
    assert stats["items"] == total == sum(seen_batches)
    assert stats["requests"] == n_threads * requests_per_thread
    assert stats["max_batch_size"] <= 32 and max(seen_batches) <= 32
    assert stats["mean_batch_size"] > 1, f"requests were never coalesced: {stats}"
    assert stats["batches"] < stats["requests"]


def test_request_larger_than_max_batch_runs_alone():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        return square_items(items)

    items = [(0, i, i) for i in range(100)]
    with QueryBatcher(fn, max_batch=8, max_wait_us=100) as batcher:
        assert batcher.submit(items) == square_items(items)
    assert sizes == [100]


class PoisonError(Exception):
    pass


def test_error_reaches_only_the_caller_whose_items_fail():
    raised = []

    def fn(items):
        if any(value == "poison" for _caller, _seq, value in items):
            exc = PoisonError(f"poisoned batch of {len(items)}")
            raised.append(exc)
            raise exc
        return square_items(items)

    poisoned = 7

    def caller(cid):
        items = [(cid, 0, cid), (cid, 1, "poison" if cid == poisoned else cid + 1)]
        return batcher.submit(items)

    # A long max_wait so the simultaneous requests are coalesced into shared batches.
    with QueryBatcher(fn, max_batch=64, max_wait_us=200_000) as batcher:
        results = run_threads(20, caller)
        stats = batcher.stats()

    err = results.pop(poisoned)
    assert isinstance(err, PoisonError), err
    assert err is raised[-1], "the caller must get the exception object fn raised"
    assert str(err) == "poisoned batch of 2"  # from its own, un-coalesced re-run
    for cid, got in results.items():
        assert got == [(cid, 0, cid * cid + 1), (cid, 1, (cid + 1) ** 2 + 1)], cid
    assert stats["failed_batches"] >= 1
    assert stats["retried_requests"] >= 2, f"the failing batch was not coalesced: {stats}"


def test_wrong_result_length_is_an_error_for_that_caller():
    with QueryBatcher(lambda items: items[:-1], max_batch=8, max_wait_us=100) as batcher:
        with pytest.raises(ValueError, match="returned 2 results for 3 items"):
            batcher.submit([1, 2, 3])
        with pytest.raises(TypeError):
            QueryBatcher(lambda items: 42, 8, 100).submit([1])  # not a sequence


def test_close_with_calls_in_flight_finishes_them():
    release = threading.Event()
    entered = threading.Event()

    def fn(items):
        entered.set()
        release.wait(timeout=30)
        return square_items(items)

    batcher = QueryBatcher(fn, max_batch=4, max_wait_us=1000)

    def caller(cid):
        return batcher.submit([(cid, 0, cid)])

    results: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, caller(i))) for i in range(12)
    ]
    for t in threads:
        t.start()
    assert entered.wait(timeout=30)  # one batch is inside fn
    while batcher.stats()["requests"] < 12:  # and the other callers are queued behind it
        threading.Event().wait(0.001)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    release.set()  # the main thread runs Python meanwhile: waiting callers hold no GIL
    closer.join(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert not closer.is_alive()
    assert batcher.closed
    for i in range(12):
        assert results[i] == [(i, 0, i * i + 1)]
    with pytest.raises(RuntimeError, match="batcher is closed"):
        batcher.submit([(0, 0, 1)])
    with pytest.raises(RuntimeError, match="batcher is closed"):
        batcher.submit([])
    batcher.close()  # idempotent


def test_close_from_several_threads_and_context_manager():
    batcher = QueryBatcher(square_items, max_batch=4, max_wait_us=100)
    results = run_threads(8, lambda _i: batcher.close())
    assert all(r is None for r in results.values())
    with QueryBatcher(square_items, 4, 100) as b2:
        assert b2.submit([(0, 0, 2)]) == [(0, 0, 5)]
    assert b2.closed


def test_close_flushes_without_waiting_for_max_wait():
    batcher = QueryBatcher(square_items, max_batch=1000, max_wait_us=60_000_000)  # one minute
    got = []
    t = threading.Thread(target=lambda: got.append(batcher.submit([(0, 0, 3)])))
    t.start()
    while batcher.stats()["queued_items"] == 0 and not got:
        threading.Event().wait(0.001)
    batcher.close()
    t.join(timeout=30)
    assert got == [[(0, 0, 10)]]


def test_lone_caller_does_not_wait_for_max_wait():
    """A caller whose previous batch was its own single request is run at once: max_wait_us
    (here one minute) only applies when there is concurrency to wait for. The very first batch
    still waits for company, so the first request fills max_batch and ends that wait."""
    with QueryBatcher(square_items, max_batch=2, max_wait_us=60_000_000) as batcher:
        done = threading.Event()
        got = []

        def lone() -> None:
            got.append(batcher.submit([(0, 0, 5), (0, 1, 6)]))  # a full batch: no wait
            for i in range(3):
                got.append(batcher.submit([(0, i, i)]))  # one item: would wait a minute
            done.set()

        threading.Thread(target=lone, daemon=True).start()
        assert done.wait(timeout=20), "a lone caller waited for max_wait_us"
        assert got == [[(0, 0, 26), (0, 1, 37)]] + [[(0, i, i * i + 1)] for i in range(3)]
        assert batcher.stats()["batches"] == 4


def test_workers_run_batches_concurrently():
    """With two workers, a second batch starts while the first is still inside fn."""
    inside = threading.Semaphore(0)
    release = threading.Event()

    def fn(items):
        inside.release()
        release.wait(30)
        return square_items(items)

    with QueryBatcher(fn, max_batch=1, max_wait_us=0, num_workers=2) as batcher:
        results = {}
        threads = [
            threading.Thread(target=lambda c=c: results.__setitem__(c, batcher.submit([(c, 0, c)])))
            for c in range(2)
        ]
        for t in threads:
            t.start()
        both = inside.acquire(timeout=30) and inside.acquire(timeout=30)
        release.set()
        for t in threads:
            t.join(30)
    assert both, "the second batch did not start while the first was running"
    assert results == {0: [(0, 0, 1)], 1: [(1, 0, 2)]}


def test_submit_from_inside_fn_is_refused():
    def fn(items):
        try:
            batcher.submit(items)
        except RuntimeError as exc:
            return [str(exc)] * len(items)
        return ["no error"] * len(items)

    with QueryBatcher(fn, 4, 100) as batcher:
        assert "inside the batch function" in batcher.submit([1])[0]


def test_stats_and_argument_checks():
    with QueryBatcher(square_items, max_batch=5, max_wait_us=10) as batcher:
        batcher.submit([(0, 0, 1), (0, 1, 2)])
        stats = batcher.stats()
    assert stats["batches"] == 1 and stats["items"] == 2 and stats["requests"] == 1
    assert stats["mean_batch_size"] == 2.0 and stats["max_batch_size"] == 2
    assert stats["max_batch"] == 5 and stats["max_wait_us"] == 10
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        QueryBatcher(square_items, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_us must be >= 0"):
        QueryBatcher(square_items, max_wait_us=-1)
    assert stats["num_workers"] == 1
    with pytest.raises(ValueError, match="num_workers must be in 1..256"):
        QueryBatcher(square_items, num_workers=0)
    with pytest.raises(TypeError, match="callable"):
        _C.QueryBatcher(42, 4, 10)


def test_safe_at_interpreter_exit():
    # Batchers left open, one with daemon callers still waiting on a slow fn: the process must
    # exit cleanly (atexit closes them; no worker left waiting for the GIL).
    script = textwrap.dedent(
        """
        import threading, time
        from univl_fast.search.batching import QueryBatcher

        def slow(items):
            time.sleep(0.05)
            return items

        idle = QueryBatcher(lambda items: items, 4, 100)
        idle.submit([1])
        busy = QueryBatcher(slow, 2, 1000)
        for i in range(6):
            threading.Thread(target=busy.submit, args=([i],), daemon=True).start()
        time.sleep(0.01)
        print("exiting")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "exiting" in proc.stdout


def test_owner_cycle_is_collected():
    # owner -> batcher -> fn (a bound method) -> owner: the garbage collector must free it.
    import gc
    import weakref

    class Owner:
        def __init__(self):
            self.batcher = QueryBatcher(self.run, max_batch=4, max_wait_us=100)

        def run(self, items):
            return [x + 1 for x in items]

    owner = Owner()
    assert owner.batcher.submit([1, 2]) == [2, 3]
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None, "the owner <-> batcher cycle was not collected"


def test_last_reference_dropped_inside_fn():
    # fn drops the only reference to its batcher: it must not be destroyed on its own worker
    # thread (which it would have to join); the main thread frees it later.
    import gc
    import weakref

    holder = {}

    def fn(items):
        holder.clear()  # drops the last reference to the batcher while it runs this batch
        return items

    holder["b"] = _C.QueryBatcher(fn, 4, 100)
    ref = weakref.ref(holder["b"])
    result = []
    t = threading.Thread(target=lambda: result.append(ref().submit([1, 2])))
    t.start()
    t.join(timeout=30)
    assert result == [[1, 2]]
    for _ in range(100):  # the pending call runs on the main thread at its next check
        gc.collect()
        if ref() is None:
            break
        threading.Event().wait(0.01)
    assert ref() is None


# ------------------------------------------------------------------ backpressure and deadlines


def blocked_batcher(max_queue, max_batch=1, num_workers=1):
    """A batcher whose fn blocks on 'hold' items until release is set; records what fn saw."""
    release = threading.Event()
    entered = threading.Event()
    seen: list = []

    def fn(items):
        seen.extend(items)
        if any(isinstance(x, str) and x.startswith("hold") for x in items):
            entered.set()
            release.wait(30)
        return [("done", x) for x in items]

    b = QueryBatcher(
        fn, max_batch=max_batch, max_wait_us=0, num_workers=num_workers, max_queue=max_queue
    )
    return b, release, entered, seen


def start_call(batcher, items, timeout=None):
    """Runs batcher.submit on a thread; returns (thread, box) with the result or the error."""
    box: dict = {}

    def body():
        try:
            box["result"] = batcher.submit(items, timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, box


def wait_for(cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def test_full_queue_raises_overloaded_at_once():
    b, release, entered, seen = blocked_batcher(max_queue=3)
    with b:
        running, _ = start_call(b, ["hold"])
        assert entered.wait(30)  # taken by the worker: no longer queued
        queued = [start_call(b, [i]) for i in range(3)]
        wait_for(lambda: b.stats()["queued_items"] == 3)
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match=r"max_queue=3") as info:
            b.submit(["refused"])
        assert time.monotonic() - t0 < 1.0, "Overloaded must come at once, not after a wait"
        assert info.value.limit == 3
        assert 0 < info.value.retry_after_s <= 60
        assert isinstance(info.value, RuntimeError) and isinstance(info.value, UnivlFastError)
        with pytest.raises(Overloaded):  # two items do not fit either
            b.submit(["x", "y"])
        release.set()
        for t, _box in [(running, None), *queued]:
            t.join(30)
            assert not t.is_alive()
        assert [box["result"] for _t, box in queued] == [[("done", i)] for i in range(3)]
        stats = b.stats()
    assert "refused" not in seen
    assert stats["rejected_requests"] == 2
    assert stats["max_queued_items"] == 3 and stats["max_queue"] == 3
    assert b.max_queue == 3


def test_request_larger_than_max_queue_runs_when_the_queue_is_empty():
    with QueryBatcher(square_items, max_batch=4, max_wait_us=0, max_queue=2) as b:
        items = [(0, i, i) for i in range(10)]
        assert b.submit(items) == square_items(items)


def test_default_max_queue_is_sized_from_max_batch():
    with QueryBatcher(square_items, max_batch=8) as b:
        assert b.max_queue == DEFAULT_QUEUE_FACTOR * 8 == b.stats()["max_queue"]
    with pytest.raises(ValueError, match="max_queue must be >= 1"):
        QueryBatcher(square_items, max_queue=0)


def test_deadline_while_queued_removes_the_request():
    b, release, entered, seen = blocked_batcher(max_queue=8)
    with b:
        running, box = start_call(b, ["hold"])
        assert entered.wait(30)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"timeout=0\.2 s.*queue") as info:
            b.submit(["late"], timeout=0.2)
        waited = time.monotonic() - t0
        assert 0.15 <= waited < 5, waited
        assert info.value.timeout_s == 0.2
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, UnivlFastError)
        assert b.stats()["queued_items"] == 0  # removed from the queue at once
        release.set()
        running.join(30)
        assert box["result"] == [("done", "hold")]
        assert b.submit(["after"], timeout=10) == [("done", "after")]
        stats = b.stats()
    assert "late" not in seen, "a request whose deadline passed while queued was run"
    assert stats["expired_in_queue"] == 1 and stats["expired_running"] == 0


def test_deadline_while_running_discards_the_result():
    b, release, entered, seen = blocked_batcher(max_queue=8)
    with b:
        with pytest.raises(DeadlineExceeded, match=r"timeout=0\.2 s.*running") as info:
            b.submit(["hold-me"], timeout=0.2)
        assert info.value.timeout_s == 0.2
        release.set()
        # The worker finishes the abandoned batch and serves the next caller.
        assert b.submit(["next"], timeout=10) == [("done", "next")]
        stats = b.stats()
    assert seen == ["hold-me", "next"]
    assert stats["expired_running"] == 1 and stats["expired_in_queue"] == 0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_timeout_is_refused(bad):
    with QueryBatcher(square_items, 4, 100) as b:
        with pytest.raises(ValueError, match="timeout must be"):
            b.submit([(0, 0, 1)], timeout=bad)


def test_stress_256_threads_against_a_queue_of_32():
    """Every call either gets its own correct rows or Overloaded; none hangs, every admitted
    item reaches fn exactly once, and the queue never holds more than max_queue items."""
    n_threads, calls = 256, 4
    fn_items: list = []

    def fn(items):
        fn_items.extend(items)
        time.sleep(0.0005)  # a batch takes time: the queue fills
        return square_items(items)

    outcomes: dict[tuple[int, int], object] = {}
    lock = threading.Lock()

    def caller(cid):
        for seq in range(calls):
            items = [
                (cid, seq * 10 + k, cid * 100 + seq * 10 + k) for k in range(1 + (cid + seq) % 3)
            ]
            try:
                got = b.submit(items, timeout=60)
                assert got == square_items(items), (cid, seq)
                outcome = ("ok", len(items))
            except Overloaded as exc:
                assert exc.limit == 32
                outcome = ("overloaded", len(items))
            with lock:
                assert (cid, seq) not in outcomes, "answered twice"
                outcomes[(cid, seq)] = outcome

    with QueryBatcher(fn, max_batch=8, max_wait_us=200, max_queue=32) as b:
        results = run_threads(n_threads, caller)
        stats = b.stats()
    assert all(r is None for r in results.values()), [r for r in results.values() if r][:3]
    assert len(outcomes) == n_threads * calls
    ok_items = sum(n for kind, n in outcomes.values() if kind == "ok")
    rejected = sum(1 for kind, _n in outcomes.values() if kind == "overloaded")
    assert rejected > 0, "256 threads never filled a queue of 32"
    assert ok_items > 0
    assert len(fn_items) == ok_items == stats["items"], "an admitted item was lost or run twice"
    assert len(set(fn_items)) == len(fn_items)
    assert stats["rejected_requests"] == rejected
    assert stats["max_queued_items"] <= 32, stats
    assert stats["queued_items"] == 0
    buckets = stats["batch_size_buckets"]
    assert buckets[-1] == (float("inf"), stats["batches"])
    assert [le for le, _c in buckets[:-1]] == [1.0, 2.0, 4.0, 8.0]
    assert all(c1 <= c2 for (_a, c1), (_b, c2) in zip(buckets, buckets[1:], strict=False))


def test_huge_timeout_is_no_deadline():
    with QueryBatcher(square_items, 4, 100) as b:
        assert b.submit([(0, 0, 2)], timeout=1e300) == [(0, 0, 5)]
