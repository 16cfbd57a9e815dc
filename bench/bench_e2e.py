"""End-to-end encode + search under concurrency (issue 5): the compiled batcher vs the plain path.

Full table (what bench/results/e2e.md reports)::

    .venv/bin/python bench/bench_e2e.py --clients 1,4,16,64 --seconds 8

pytest-benchmark form (one 16-client round per mode, same run)::

    .venv/bin/python -m pytest bench/bench_e2e.py -q -s -p no:cacheprovider \
        --benchmark-columns=min,median,mean,rounds

Set-up (cached under ``runs/bench/e2e/``, gitignored; made in subprocesses so the measuring
process never imports torch):
  * engine: a ViT-B-32 UniVL-DR model with random weights (same cost as trained ones) exported
    with ``python -m univl_fast.export --precision fp32,int8``; searches use the int8 text tower;
  * corpus: the built-in benchmark at ``BENCH_E2E_SCALE`` (default ``medium``: 30,000 text
    and 15,000 image documents), encoded by that same engine (int8, resumable shards), so the
    index holds the engine's own embeddings and the queries fall in its IVF lists as real
    queries would;
  * index: ``BENCH_E2E_FACTORY`` (default: IVF-PQ with exact fp16 re-ranking, nlist the power
    of two nearest 4 sqrt(n), ``bench_factory``; Flat when the corpus is too small to train
    one) tuned to recall@10 0.95 on the dataset's dev/train questions;
  * queries: the same dataset's test questions (never used for tuning).

Each client thread loops ``engine.search([query], k=10)`` (one query per call, like a web
service handler) for ``--seconds``; throughput = queries / wall time, latency per call.
The baseline is the plain path (``batching=False``: every call encodes and searches on its own
thread) measured in the same run, interleaved with the batched runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
from engine_setup import exported_engine, random_checkpoint

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("BENCH_E2E_DIR", REPO / "runs/bench/e2e"))
SCALE = os.environ.get("BENCH_E2E_SCALE", "medium")
FACTORY = os.environ.get("BENCH_E2E_FACTORY")  # None: bench_factory(corpus size)
MODEL = os.environ.get("BENCH_E2E_MODEL", "ViT-B-32")  # univl-tiny: a quick check that it runs
K = 10


# ---------------------------------------------------------------------------- set-up (cached)
def ensure_engine(root: Path = ROOT) -> Path:
    tag = MODEL.lower().replace("-", "")
    ckpt = random_checkpoint(MODEL, root / f"ckpt_{tag}_random")
    return exported_engine(ckpt, root / f"engine_{tag}")


def _index_size(index_dir: Path) -> int:
    from univl_fast.index import read_manifest

    m = read_manifest(index_dir)
    return int(m["ntotal"])


def bench_dataset(root: Path = ROOT) -> Path:
    """The built-in benchmark at SCALE (generated once, cached)."""
    from univl_fast.data.synth import generate

    return generate(root / f"synth_{SCALE}", scale=SCALE, seed=0, progress=False)


def bench_factory(n: int) -> str:
    """IVF-PQ + fp16 re-ranking with nlist ~ 4 sqrt(n) (a power of two), without the OPQ
    rotation (its training alone takes tens of minutes on 2 shared cores; at search time it is
    one 512x512 product per query, negligible next to the text tower). Flat when n is below
    faiss's 39 training points per list."""
    nlist = 1 << max(4, round(np.log2(4 * np.sqrt(max(n, 1)))))
    return f"IVF{nlist},PQ64,Refine(SQfp16)" if n >= 39 * nlist else "Flat"


def ensure_index(engine: Path, root: Path = ROOT) -> Path:
    """The index over the engine's own encoding of the benchmark corpus (cached per engine)."""
    from univl_fast.data import DatasetDir
    from univl_fast.index import build_index, read_manifest, save_index
    from univl_fast.index.corpus import encode_corpus, encode_tune_queries
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.manifest import manifest_sha256

    sha = manifest_sha256(engine)
    out = root / f"index_{SCALE}_{(FACTORY or 'auto').replace(',', '_').replace('(', '_')}"
    if (out / "manifest.json").is_file() and read_manifest(out).get("engine_sha256") == sha:
        return out
    ds = DatasetDir(bench_dataset(root))
    enc = Encoder(engine, precision="int8")
    t0 = time.perf_counter()
    corpus = encode_corpus(enc, ds, root / f"corpus_{SCALE}_{sha[:12]}", batch_size=64)
    tune_q = encode_tune_queries(enc, ds)
    t_enc = time.perf_counter() - t0
    n = corpus.vectors.shape[0]
    idx = build_index(
        corpus.vectors,
        corpus.doc_ids,
        corpus.modalities,
        factory=FACTORY or bench_factory(n),
        target_recall=0.95,
        tune_queries=tune_q,
        engine_sha256=sha,
        progress=True,
    )
    save_index(idx, out)
    print(
        f"[setup] {n} docs encoded in {t_enc:.0f}s; index {idx!r} built in "
        f"{time.perf_counter() - t0 - t_enc:.0f}s",
        file=sys.stderr,
    )
    return out


def bench_queries(root: Path = ROOT) -> list[str]:
    """The benchmark dataset's test questions (the index was tuned on dev/train), shuffled."""
    from univl_fast.data import DatasetDir

    ds = DatasetDir(bench_dataset(root))
    qs = [q.text for q in ds.queries("test")]
    random.Random(0).shuffle(qs)
    return qs


# ---------------------------------------------------------------------------- measurement
def run_clients(
    engine, queries: list[str], clients: int, seconds: float, warmup: float = 1.0
) -> dict:
    """``clients`` threads each loop search([q], k=10) for ``seconds``; latency per call."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    t_measure = [0.0, 0.0]

    def client(c: int) -> None:
        rng = random.Random(c)
        mine = lat[c]
        try:
            start.wait()
            t_warm_end = t_measure[0]
            t_end = t_measure[1]
            while True:
                q = queries[rng.randrange(len(queries))]
                t = time.perf_counter()
                if t >= t_end:
                    break
                engine.search([q], k=K)
                done = time.perf_counter()
                if t >= t_warm_end:
                    mine.append(done - t)
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    now = time.perf_counter()
    t_measure[0] = now + warmup
    t_measure[1] = now + warmup + seconds
    start.wait()
    time.sleep(max(0.0, t_measure[0] - time.perf_counter()))
    cpu0 = os.times()
    for th in threads:
        th.join()
    cpu1 = os.times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]}")
    all_lat = np.array([x for per in lat for x in per]) * 1e3
    return summarize(clients, [all_lat], seconds, cpu_s)


def summarize(clients: int, lats: list[np.ndarray], seconds: float, cpu_s: float) -> dict:
    """Throughput (queries completed in the measured windows / their total length), latency
    percentiles over every call, and process CPU time per query (the load-independent cost)."""
    all_lat = np.concatenate(lats)
    return {
        "clients": clients,
        "queries": int(all_lat.size),
        "seconds": seconds,
        "cpu_s": cpu_s,
        "lat_ms": all_lat,
        "qps": float(all_lat.size / seconds),
        "p50_ms": float(np.percentile(all_lat, 50)),
        "p99_ms": float(np.percentile(all_lat, 99)),
        "mean_ms": float(all_lat.mean()),
        "cpu_ms_per_query": float(cpu_s * 1e3 / max(1, all_lat.size)),
    }


# The measured paths. plain: batching off, each call encodes and searches on its own thread (the
# baseline), with the engine's default threads; plain-nospin: the same with ONNX Runtime's
# threads blocking instead of spinning between ops; plain-1thread: one ONNX Runtime thread per
# call (no thread pool at all: with many concurrent calls the cores are used anyway). The
# speed-up is also reported against the best of the plain modes in the same run.
# batched: the default Engine (the
# compiled batcher, one batch worker); batched-2workers: two batch workers, each encoding on its
# own 1-thread text session while the other's batch runs.
MODES = ("plain", "plain-nospin", "plain-1thread", "batched", "batched-2workers")
PLAIN_MODES = ("plain", "plain-nospin", "plain-1thread")


def open_mode(mode: str, engine_dir, index_dir, precision: str, max_batch: int, max_wait_us: int):
    import univl_fast
    from univl_fast.runtime import ThreadSettings

    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    kw: dict = {"index": index_dir, "precision": precision}
    if mode in PLAIN_MODES:
        threads = {
            "plain-nospin": ThreadSettings(spin=False),
            "plain-1thread": ThreadSettings(intra_op=1),
        }.get(mode)
        return univl_fast.load(engine_dir, batching=False, threads=threads, **kw)
    return univl_fast.load(
        engine_dir,
        batching=True,
        max_batch=max_batch,
        max_wait_us=max_wait_us,
        workers=2 if mode == "batched-2workers" else 1,
        **kw,
    )


def measure(
    engine_dir: Path,
    index_dir: Path,
    queries: list[str],
    clients: list[int],
    seconds: float,
    precision: str,
    max_batch: int,
    max_wait_us: int,
    modes: tuple[str, ...] = MODES,
    rounds: int = 4,
) -> list[dict]:
    rows = []
    engines = {
        m: open_mode(m, engine_dir, index_dir, precision, max_batch, max_wait_us) for m in modes
    }
    try:
        for eng in engines.values():
            eng.search(queries[:8], k=K)  # load / warm the sessions
        for c in clients:
            # interleaved: `rounds` short windows per mode, alternating, so drift in the
            # machine's speed (shared caches, neighbours) hits every mode alike
            parts: dict[str, list[dict]] = {m: [] for m in modes}
            batches = {m: [0, 0] for m in modes}
            for _ in range(rounds):
                for mode in modes:
                    eng = engines[mode]
                    before = eng.batcher_stats()
                    parts[mode].append(run_clients(eng, queries, c, seconds / rounds, warmup=0.5))
                    after = eng.batcher_stats()
                    if after:
                        batches[mode][0] += after["batches"] - before["batches"]
                        batches[mode][1] += after["items"] - before["items"]
            for mode in modes:
                ps = parts[mode]
                r = summarize(
                    c,
                    [p["lat_ms"] for p in ps],
                    sum(p["seconds"] for p in ps),
                    sum(p["cpu_s"] for p in ps),
                )
                r["mode"] = mode
                r["qps_per_round"] = [round(p["qps"], 1) for p in ps]
                if batches[mode][0]:
                    r["mean_batch"] = batches[mode][1] / batches[mode][0]
                del r["lat_ms"]
                rows.append(r)
                print(
                    f"  {mode:<15} clients={c:<3d} {r['qps']:8.1f} q/s  p50 {r['p50_ms']:7.2f} "
                    f"ms  p99 {r['p99_ms']:7.2f} ms  cpu {r['cpu_ms_per_query']:.2f} ms/q"
                    + (f"  mean batch {r['mean_batch']:.1f}" if "mean_batch" in r else "")
                    + f"  rounds {r['qps_per_round']}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for eng in engines.values():
            eng.close()
    return rows


def serial_ceiling(
    engine_dir: Path,
    index_dir: Path,
    queries: list[str],
    precision: str,
    batch: int = 16,
    seconds: float = 4.0,
    rounds: int = 3,
) -> dict:
    """What any batcher can buy here: one thread encoding + searching in a loop, one query per
    call vs ``batch`` random queries per call (no concurrency, no batcher), interleaved.
    The ratio of the two per-query costs bounds the batched/unbatched throughput ratio."""
    import univl_fast

    rng = random.Random(0)
    out = {"batch": batch, "single_qps": [], "batched_qps": []}
    with univl_fast.load(engine_dir, index=index_dir, precision=precision, batching=False) as eng:
        enc, idx = eng.encoder, eng.index
        for size in (1, batch):
            idx.search(enc.encode_queries(queries[:size]), K)  # warm
        for _ in range(rounds):
            for size, key in ((1, "single_qps"), (batch, "batched_qps")):
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / rounds:
                    qs = [queries[rng.randrange(len(queries))] for _ in range(size)]
                    idx.search(enc.encode_queries(qs), K)
                    n += size
                out[key].append(n / (time.perf_counter() - t0))
    out["single"] = float(np.median(out["single_qps"]))
    out["batched"] = float(np.median(out["batched_qps"]))
    out["ratio"] = out["batched"] / out["single"]
    return out


def table(rows: list[dict]) -> str:
    """One line per client count: every mode's q/s and p50 / p99, then the default batched
    Engine's speed-up over the plain path and over the best plain mode of the same run."""
    by = {(r["mode"], r["clients"]): r for r in rows}
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    head = ["clients"] + [f"{m} q/s (p50 / p99 ms)" for m in modes]
    head += [
        "batched vs plain",
        "batched vs best plain",
        "batched p99/p50",
        "mean batch",
        "CPU ms/query " + " / ".join(modes),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sorted({r["clients"] for r in rows}):
        got = {m: by[(m, c)] for m in modes if (m, c) in by}
        cells = [str(c)]
        for m in modes:
            r = got.get(m)
            cells.append(f"{r['qps']:.1f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})" if r else "-")
        b = got.get("batched")
        plains = [got[m] for m in PLAIN_MODES if m in got]
        if b and "plain" in got:
            cells.append(f"{b['qps'] / got['plain']['qps']:.2f}x")
        else:
            cells.append("-")
        if b and plains:
            best = max(plains, key=lambda r: r["qps"])
            cells.append(f"{b['qps'] / best['qps']:.2f}x ({best['mode']})")
            cells.append(f"{b['p99_ms'] / b['p50_ms']:.2f}")
            cells.append(f"{b.get('mean_batch', 0):.1f}")
        else:
            cells += ["-", "-", "-"]
        cells.append(
            " / ".join(f"{got[m]['cpu_ms_per_query']:.2f}" if m in got else "-" for m in modes)
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    import onnxruntime

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU; "
        f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    from univl_fast.search.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_US

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per mode")
    p.add_argument(
        "--rounds", type=int, default=4, help="interleaved windows per mode (seconds split)"
    )
    p.add_argument("--precision", default="int8")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    p.add_argument("--max-wait-us", type=int, default=DEFAULT_MAX_WAIT_US)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument(
        "--sweep",
        default=None,
        help="tune: comma list of max_batch:max_wait_us pairs, batched mode only",
    )
    p.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the serial 1-query vs 16-query loop (what batching can buy at most)",
    )
    p.add_argument("--out", default=str(ROOT / "results.json"))
    args = p.parse_args(argv)

    engine = ensure_engine()
    index = ensure_index(engine)
    queries = bench_queries()
    clients = [int(x) for x in args.clients.split(",")]
    print(f"machine: {machine()}", file=sys.stderr)
    print(
        f"engine {engine} ({args.precision}), index {index}, {len(queries)} distinct queries",
        file=sys.stderr,
    )
    if sys.modules.get("torch") is not None:
        print("warning: torch got imported in the measuring process", file=sys.stderr)
    result: dict = {
        "machine": machine(),
        "argv": sys.argv,
        "n_docs": _index_size(index),
        "precision": args.precision,
    }

    def run(max_batch: int, max_wait_us: int, modes: tuple[str, ...]) -> list[dict]:
        return measure(
            engine,
            index,
            queries,
            clients,
            args.seconds,
            args.precision,
            max_batch,
            max_wait_us,
            modes=modes,
            rounds=args.rounds,
        )

    if args.sweep:
        sweep = []
        for pair in args.sweep.split(","):
            mb, mw = (int(x) for x in pair.split(":"))
            print(f"max_batch={mb} max_wait_us={mw}", file=sys.stderr)
            for r in run(mb, mw, ("batched",)):
                r.update(max_batch=mb, max_wait_us=mw)
                sweep.append(r)
        result["sweep"] = sweep
        print(
            "| max_batch | max_wait_us | clients | q/s | p50 ms | p99 ms | mean batch | CPU ms/q |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in sweep:
            print(
                f"| {r['max_batch']} | {r['max_wait_us']} | {r['clients']} | {r['qps']:.1f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r.get('mean_batch', 0):.1f} | "
                f"{r['cpu_ms_per_query']:.2f} |"
            )
    else:
        rows = run(args.max_batch, args.max_wait_us, tuple(args.modes.split(",")))
        result.update(rows=rows, max_batch=args.max_batch, max_wait_us=args.max_wait_us)
        print(table(rows))
        if args.ceiling:
            ceil = serial_ceiling(engine, index, queries, args.precision)
            result["serial_ceiling"] = ceil
            print(
                f"\nserial ceiling (one thread, encode + search per call, same run): "
                f"1 query/call {ceil['single']:.1f} q/s, {ceil['batch']} queries/call "
                f"{ceil['batched']:.1f} q/s: ratio {ceil['ratio']:.2f}x"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------- pytest-benchmark
def _fixture_setup():
    engine = ensure_engine()
    return engine, ensure_index(engine), bench_queries()


try:
    import pytest

    @pytest.fixture(scope="module")
    def e2e_setup():
        return _fixture_setup()

    @pytest.mark.parametrize("batching", [False, True], ids=["plain", "batched"])
    def test_e2e_16_clients(benchmark, e2e_setup, batching):
        """One round = 16 client threads x 25 single-query searches."""
        import univl_fast

        engine_dir, index_dir, queries = e2e_setup
        with univl_fast.load(
            engine_dir, index=index_dir, precision="int8", batching=batching
        ) as eng:
            eng.search(queries[:8], k=K)

            def round_16() -> None:
                def client(c: int) -> None:
                    rng = random.Random(c)
                    for _ in range(25):
                        eng.search([queries[rng.randrange(len(queries))]], k=K)

                ts = [threading.Thread(target=client, args=(c,)) for c in range(16)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()

            benchmark.pedantic(round_16, rounds=3, iterations=1, warmup_rounds=1)
except ImportError:  # pragma: no cover - the script does not need pytest
    pass


if __name__ == "__main__":
    sys.exit(main())
