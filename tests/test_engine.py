"""Engine: search through the exported tiny engine and a Flat index over synth_tiny, plain and
through the compiled batcher (coalescing, per-item k, error isolation, shutdown)."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

import univl_fast
from tests.engine_helpers import PRECISION, assert_same_ranking, exact_hits
from univl_fast.errors import DeadlineExceeded, Overloaded
from univl_fast.search.engine import DEFAULT_QUEUE_FACTOR
from univl_fast.types import Hit

# session fixtures shared by the engine / CLI tests: corpus, flat_index, queries
pytest_plugins = ["tests.engine_fixtures"]


def run_clients(n_threads: int, client, timeout_s: float) -> None:
    """Runs client(t) on n_threads threads; fails if one is still running after timeout_s."""
    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout_s
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    assert not any(th.is_alive() for th in threads), "a client thread hung"


@pytest.fixture(scope="module")
def plain(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(plain, queries) -> dict[str, list[Hit]]:
    """Each query searched alone on the plain path, top 40 (resolves ties at any k <= 20)."""
    return {q: plain.search([q], k=40)[0] for q in set(queries)}


def test_search_equals_exact_search(plain, corpus, queries):
    k = 10
    got = plain.search(queries, k=k)
    qv = plain.encode_queries(queries)
    ref = exact_hits(qv, corpus["vecs"], corpus["ids"], corpus["mods"], k + 10)
    assert len(got) == len(queries)
    for q, g, r in zip(queries, got, ref, strict=True):
        assert_same_ranking(g, r, k, q)
        assert all(isinstance(h, Hit) and h.modality in ("text", "image") for h in g)
        assert all(a.score >= b.score for a, b in zip(g, g[1:], strict=False))


def test_modality_restricted_search(plain, corpus, queries):
    for modality in ("text", "image"):
        rows = [i for i, m in enumerate(corpus["mods"]) if m == modality]
        ref = exact_hits(
            plain.encode_queries(queries[:10]),
            corpus["vecs"][rows],
            [corpus["ids"][i] for i in rows],
            [modality] * len(rows),
            15,
        )
        got = plain.search(queries[:10], k=5, modality=modality)
        for g, r in zip(got, ref, strict=True):
            assert {h.modality for h in g} == {modality}
            assert_same_ranking(g, r, 5, modality)


def test_batched_equals_plain(tiny_engine, flat_index, queries, reference):
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION) as eng:
        got = eng.search(queries, k=7)
        for q, g in zip(queries, got, strict=True):
            assert_same_ranking(g, reference[q], 7, q)


def test_empty_query_list(plain, tiny_engine, flat_index):
    assert plain.search([], k=5) == []
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION) as eng:
        assert eng.search([], k=5) == []


@pytest.mark.parametrize("batching", [False, True])
def test_mixed_empty_and_normal_queries(tiny_engine, flat_index, queries, reference, batching):
    batch = ["", queries[0], "   \t\n", queries[1], ""]
    with univl_fast.load(
        tiny_engine, index=flat_index, precision=PRECISION, batching=batching
    ) as eng:
        got = eng.search(batch, k=5)
    assert len(got) == 5
    assert got[0] == [] and got[2] == [] and got[4] == []
    assert_same_ranking(got[1], reference[queries[0]], 5, "q0")
    assert_same_ranking(got[3], reference[queries[1]], 5, "q1")


def test_k_larger_than_corpus(plain, corpus, queries):
    n = len(corpus["ids"])
    got = plain.search(queries[:3], k=n + 1000)
    for g in got:
        assert len(g) == n
        assert {h.doc_id for h in g} == set(corpus["ids"])
    n_img = corpus["mods"].count("image")
    got = plain.search(queries[:1], k=n + 1000, modality="image")
    assert len(got[0]) == n_img


def test_bad_arguments(plain, tiny_engine, queries):
    with pytest.raises(ValueError, match="k must be >= 1"):
        plain.search(queries[:1], k=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        plain.search(queries[:1], k=-3)
    with pytest.raises(TypeError, match="list of strings"):
        plain.search("one string", k=3)
    with pytest.raises(TypeError, match="query 1 must be a string"):
        plain.search(["ok", None], k=3)
    with pytest.raises(ValueError, match="modality"):
        plain.search(queries[:1], k=3, modality="audio")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        univl_fast.load(tiny_engine, precision=PRECISION, workers=0)
    with univl_fast.load(tiny_engine, precision=PRECISION) as no_index:
        with pytest.raises(RuntimeError, match="no index loaded"):
            no_index.search(queries[:1], k=3)
        # encoding works without an index
        assert no_index.encode_queries(queries[:2]).shape == (2, no_index.dim)


def test_encode_delegates_to_encoder(plain, tiny_engine, queries):
    from univl_fast.runtime import Encoder

    enc = Encoder(tiny_engine, precision=PRECISION)
    a = plain.encode_queries(queries[:4])
    b = enc.encode_queries(queries[:4])
    assert a.dtype == np.float32 and a.shape == (4, plain.dim)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)


def test_engine_index_mismatch_refused(tmp_path, tiny_engine, corpus):
    from univl_fast.index import EngineMismatchError, build_index, save_index

    other = tmp_path / "other_engine_index"
    save_index(
        build_index(
            corpus["vecs"],
            corpus["ids"],
            corpus["mods"],
            factory="Flat",
            engine_sha256="0" * 64,
            progress=False,
        ),
        other,
    )
    with pytest.raises(EngineMismatchError, match="engine"):
        univl_fast.load(tiny_engine, index=other, precision=PRECISION)


def test_concurrent_callers_with_different_k(tiny_engine, flat_index, queries, plain):
    """8 callers with different k and modality restrictions coalesced into one batch (max_batch
    = number of callers, long wait); each gets exactly its own unbatched answer."""
    n = 8
    mods = [None, "text", "image"]
    with univl_fast.load(
        tiny_engine,
        index=flat_index,
        precision=PRECISION,
        max_batch=n,
        max_wait_us=5_000_000,
        workers=1,
    ) as eng:
        barrier = threading.Barrier(n)
        results: dict[int, list[list[Hit]]] = {}
        errors: list[BaseException] = []

        def call(i: int) -> None:
            try:
                barrier.wait()
                results[i] = eng.search([queries[i]], k=i + 1, modality=mods[i % 3])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        stats = eng.batcher_stats()
    for i in range(n):
        assert len(results[i]) == 1
        ref = plain.search([queries[i]], k=40, modality=mods[i % 3])[0]
        assert_same_ranking(results[i][0], ref, i + 1, f"caller {i}")
        if mods[i % 3]:
            assert {h.modality for h in results[i][0]} == {mods[i % 3]}
    assert stats["max_batch_size"] == n, stats  # really coalesced


@pytest.mark.parametrize("workers", [1, 2])
def test_batcher_stress_64_threads(tiny_engine, flat_index, queries, reference, workers):
    """64 threads, thousands of queries, every result checked against an unbatched search;
    with one batch worker and with two (each its own text session, batches run concurrently)."""
    n_threads, calls_per_thread = 64, 30
    with univl_fast.load(
        tiny_engine,
        index=flat_index,
        precision=PRECISION,
        max_batch=64,
        max_wait_us=500,
        workers=workers,
    ) as eng:
        assert eng.workers == workers
        errors: list[str] = []
        counted = [0] * n_threads
        start = threading.Barrier(n_threads)

        def client(t: int) -> None:
            rng = random.Random(t)
            try:
                start.wait()
                for _ in range(calls_per_thread):
                    batch = [rng.choice(queries) for _ in range(rng.randint(1, 4))]
                    if rng.random() < 0.1:
                        batch.insert(rng.randint(0, len(batch)), "  ")
                    k = rng.randint(1, 20)
                    got = eng.search(batch, k=k)
                    assert len(got) == len(batch)
                    for q, hits in zip(batch, got, strict=True):
                        if not q.strip():
                            assert hits == []
                        else:
                            assert_same_ranking(hits, reference[q], k, f"thread {t} {q!r}")
                    counted[t] += len(batch)
            except BaseException as exc:  # noqa: BLE001
                errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

        run_clients(n_threads, client, timeout_s=120)
        stats = eng.batcher_stats()
    assert not errors, errors[:5]
    total = sum(counted)
    assert total >= 2000
    assert stats["failed_batches"] == 0 and stats["num_workers"] == workers
    assert stats["mean_batch_size"] > 1.0, stats  # 64 clients: batches did coalesce


def test_close_with_calls_in_flight(tiny_engine, flat_index, queries, reference):
    eng = univl_fast.load(
        tiny_engine, index=flat_index, precision=PRECISION, max_batch=16, max_wait_us=2000
    )
    n_threads = 16
    ok = [0] * n_threads
    refused = [0] * n_threads
    errors: list[str] = []
    running = threading.Event()

    def client(t: int) -> None:
        rng = random.Random(100 + t)
        try:
            while True:
                q = rng.choice(queries)
                try:
                    got = eng.search([q], k=5)
                except RuntimeError as exc:
                    assert "closed" in str(exc), exc
                    refused[t] += 1
                    return
                assert_same_ranking(got[0], reference[q], 5, q)
                ok[t] += 1
                running.set()
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    assert running.wait(60)
    eng.close()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "a caller hung across close()"
    assert not errors, errors[:5]
    assert sum(refused) == n_threads  # every client eventually saw the clean refusal
    assert sum(ok) > 0
    assert eng.closed
    eng.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        eng.search([queries[0]], k=3)


def test_bad_query_fails_only_its_call(tiny_engine, flat_index, queries, reference):
    """A query the encoder rejects (a lone surrogate is not valid Unicode) fails its own call
    with SearchError (carrying the call's other results); concurrent calls coalesced into the
    same batch get their results."""
    from univl_fast.search.engine import SearchError

    bad = "tower \ud800 roof"
    with univl_fast.load(
        tiny_engine, index=flat_index, precision=PRECISION, max_batch=5, max_wait_us=5_000_000
    ) as eng:
        barrier = threading.Barrier(4)
        out: dict[int, object] = {}

        def call(i: int) -> None:
            barrier.wait()
            batch = [queries[i], bad] if i == 2 else [queries[i]]
            try:
                out[i] = eng.search(batch, k=3)
            except SearchError as exc:
                out[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        stats = eng.batcher_stats()
    assert stats["max_batch_size"] == 5  # all four calls shared one batch
    err = out[2]
    assert isinstance(err, SearchError) and isinstance(err, ValueError)
    assert err.errors[0][0] == 1 and "surrogate" in str(err)
    assert err.results[1] is None
    assert_same_ranking(err.results[0], reference[queries[2]], 3, "partial result")
    for i in (0, 1, 3):
        assert isinstance(out[i], list), out[i]
        assert_same_ranking(out[i][0], reference[queries[i]], 3, f"caller {i}")
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False) as eng:
        with pytest.raises(SearchError, match="query 0"):
            eng.search([bad, queries[0]], k=3)


def test_repr_and_properties(plain):
    assert plain.dim > 0
    assert len(plain.manifest_sha256) == 64
    assert "Engine(" in repr(plain)
    assert plain.batcher_stats() == {}


# ------------------------------------------------------------------ backpressure and deadlines


def test_stress_256_threads_against_max_queue_32(tiny_engine, flat_index, queries, reference):
    """Each call gets its own correct hits or Overloaded (at once, naming the limit); none
    hangs, none is answered twice, and the queue never holds more than 32 queries."""
    n_threads, calls = 256, 3
    with univl_fast.load(
        tiny_engine, index=flat_index, precision=PRECISION, max_batch=8, max_queue=32
    ) as eng:
        outcomes: dict[tuple[int, int], str] = {}
        errors: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(n_threads)

        def client(t: int) -> None:
            rng = random.Random(1000 + t)
            try:
                start.wait()
                for c in range(calls):
                    batch = [rng.choice(queries) for _ in range(rng.randint(1, 2))]
                    try:
                        got = eng.search(batch, k=5, timeout=120)
                        for q, hits in zip(batch, got, strict=True):
                            assert_same_ranking(hits, reference[q], 5, f"thread {t} {q!r}")
                        outcome = "ok"
                    except Overloaded as exc:
                        assert exc.limit == 32 and "max_queue=32" in str(exc)
                        outcome = "overloaded"
                    with lock:
                        assert (t, c) not in outcomes, "answered twice"
                        outcomes[(t, c)] = outcome
            except BaseException as exc:  # noqa: BLE001
                errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

        run_clients(n_threads, client, timeout_s=180)
        stats = eng.stats()
    assert not errors, errors[:5]
    assert len(outcomes) == n_threads * calls
    n_over = sum(1 for o in outcomes.values() if o == "overloaded")
    assert 0 < n_over < len(outcomes), n_over
    assert stats["rejected_requests"] == n_over
    assert stats["requests"] == len(outcomes) - n_over  # every admitted call was answered
    assert stats["max_queued_items"] <= 32, stats
    assert stats["queued_items"] == 0 and stats["max_queue"] == 32


@pytest.mark.parametrize("batching", [True, False])
def test_deadline_exceeded(tiny_engine, flat_index, queries, batching):
    with univl_fast.load(
        tiny_engine, index=flat_index, precision=PRECISION, batching=batching
    ) as eng:
        eng.search(queries[:2], k=3)  # warm
        with pytest.raises(DeadlineExceeded, match=r"timeout=1e-06 s") as info:
            eng.search(queries[:32], k=3, timeout=1e-6)
        assert info.value.timeout_s == 1e-6
        assert isinstance(info.value, TimeoutError)
        assert len(eng.search(queries[:2], k=3, timeout=60)) == 2  # still serving
        stats = eng.stats()
    assert stats["batching"] is batching
    assert stats["expired_in_queue"] + stats["expired_running"] == 1


def test_timeout_and_max_queue_are_checked(plain, tiny_engine, flat_index, queries):
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout must be a positive"):
            plain.search(queries[:1], k=3, timeout=bad)
    with pytest.raises(TypeError, match="timeout must be a number"):
        plain.search(queries[:1], k=3, timeout="1")
    with pytest.raises(ValueError, match="max_queue must be >= 1"):
        univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, max_queue=0)
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, max_batch=8) as eng:
        assert eng.config.queue_limit == DEFAULT_QUEUE_FACTOR * 8
        assert eng.stats()["max_queue"] == DEFAULT_QUEUE_FACTOR * 8


def test_stats_have_the_same_keys_on_both_paths(plain, tiny_engine, flat_index, queries):
    plain.search(queries[:3], k=3)
    with univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION) as eng:
        eng.search(queries[:3], k=3)
        batched = eng.stats()
    unbatched = plain.stats()
    assert set(batched) == set(unbatched)
    assert batched["batching"] is True and unbatched["batching"] is False
    for s in (batched, unbatched):
        assert s["items"] >= 3 and s["batches"] >= 1
        assert s["batch_size_buckets"][-1] == (float("inf"), s["batches"])


@pytest.mark.parametrize("batching", [True, False])
def test_search_reports_its_stage_times(tiny_engine, flat_index, queries, batching):
    with univl_fast.load(
        tiny_engine, index=flat_index, precision=PRECISION, batching=batching
    ) as eng:
        t = {}
        t0 = time.perf_counter()
        eng.search(queries[:3], k=3, timings=t)
        wall = time.perf_counter() - t0
    assert set(t) == {"queue_s", "encode_s", "search_s", "total_s", "batch_items"}
    assert t["encode_s"] > 0 and t["search_s"] > 0 and t["batch_items"] == 3
    assert t["queue_s"] + t["encode_s"] + t["search_s"] <= t["total_s"] <= wall
    if not batching:
        assert t["queue_s"] < t["encode_s"]  # no queue: only argument checks before encoding
