"""Scale-out costs on one machine (issue 12), both parts in the same run:

1. corpus encoding: Ray Data with ``--actors`` x ``--cpus-per-actor`` encoder actors vs the
   single-process ``encode_corpus`` with ``--actors * --cpus-per-actor`` threads, on the built-in
   synthetic benchmark (``--scale``), the same engine, fresh work dirs; documents/s of each and
   their ratio (target: Ray >= 0.85x). Ray's start-up is timed apart (a cluster is up already).
2. sharded search: one IVF-PQ index vs the same index cut into 2 and 4 local shards (filled
   from one trained index, so results are identical), at the tuned parameters: queries/s with
   batches of 64 queries and p50 latency of single queries.

    .venv/bin/python bench/bench_scale.py                      # ViT-B-32, scale small, 300k
    .venv/bin/python bench/bench_scale.py --model univl-tiny --scale tiny --vectors 20000 \
        --factory IVF64,PQ16,Refine(SQfp16) --rounds 1            # smoke run (a minute)

Set-up cached under ``runs/bench/scale/`` (gitignored): random checkpoint + export (in
subprocesses: this process never imports torch), dataset, vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from engine_setup import exported_engine, random_checkpoint

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("BENCH_SCALE_DIR", REPO / "runs/bench/scale"))


def encode_part(args) -> dict:
    import ray

    from univl_fast.data import DatasetDir
    from univl_fast.data.synth import generate
    from univl_fast.index.corpus import encode_corpus
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.backends import ThreadSettings
    from univl_fast.scale.ray_encode import encode_corpus_ray
    from univl_fast.scale.ray_runtime import init_ray

    ckpt = random_checkpoint(args.model, ROOT / f"ckpt_{args.model}")
    engine = exported_engine(ckpt, ROOT / f"engine_{args.model}")
    data_dir = ROOT / f"synth_{args.scale}"
    if not (data_dir / "all_docs.json").is_file():
        generate(data_dir, scale=args.scale, seed=0, progress=False)
    ds = DatasetDir(data_dir)
    threads = args.actors * args.cpus_per_actor
    enc = Encoder(engine, threads=ThreadSettings(intra_op=threads))
    n_docs = len(ds.text_docs()) + len(ds.image_docs())
    t0 = time.perf_counter()
    init_ray("local", num_cpus=threads)
    ray_start = time.perf_counter() - t0
    single_s, ray_s = [], []
    for r in range(args.rounds):  # interleaved: machine load hits both sides alike
        work = ROOT / "work"
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        a = encode_corpus(enc, ds, work / "single", shard_size=args.shard_size, progress=False)
        single_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = encode_corpus_ray(
            enc,
            ds,
            work / "ray",
            shard_size=args.shard_size,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            progress=False,
        )
        ray_s.append(time.perf_counter() - t0)
        assert a.doc_ids == b.doc_ids, "Ray and single-process encodings differ"
        print(
            f"[encode] round {r}: single {single_s[-1]:.1f}s ray {ray_s[-1]:.1f}s", file=sys.stderr
        )
    ray.shutdown()
    s, rr = statistics.median(single_s), statistics.median(ray_s)
    return {
        "model": args.model,
        "precision": enc.precision,
        "documents": n_docs,
        "single_threads": threads,
        "ray_actors": f"{args.actors} x {args.cpus_per_actor} CPU",
        "single_docs_per_s": n_docs / s,
        "ray_docs_per_s": n_docs / rr,
        "ray_vs_single": s / rr,
        "ray_start_s": ray_start,
        "rounds": args.rounds,
    }


def search_part(args) -> list[dict]:
    import faiss
    from bench_index import synthetic_corpus

    from univl_fast.index import load_index
    from univl_fast.index.build import build_sharded_index
    from univl_fast.index.search import Index
    from univl_fast.index.sharded import ShardedIndex, shard_dir_name
    from univl_fast.index.sharded_build import fill_local, row_ranges

    # the index benchmark's CLIP-like synthetic corpus (cached under runs/bench/scale/vectors)
    vecs, codes, tune, _ = synthetic_corpus(ROOT / "vectors", args.vectors, 512)
    docs = np.ascontiguousarray(vecs)
    ids = [f"d{i}" for i in range(len(docs))]
    base = ROOT / f"sharded_{args.vectors}"
    # trained once and tuned on the 2-shard build; 1 index and 4 shards are filled from the
    # same trained index, so all three return the same top-k (checked below)
    two = build_sharded_index(
        docs, ids, codes, base / "2", 2, factory=args.factory, tune_queries=tune, progress=False
    )
    trained = faiss.serialize_index(two.trained).tobytes()
    jobs = [
        (str(base / "4" / shard_dir_name(i)), a, b)
        for i, (a, b) in enumerate(row_ranges(len(docs), 4))
    ]
    shard_manifest = {"format": 1, "factory": args.factory, "search_params": None}
    fill_local(trained, jobs, docs, ids, codes, shard_manifest, 65_536)
    shards = [load_index(d, device="cpu", verify=False) for d, _a, _b in jobs]
    four = ShardedIndex(shards, [a for _d, a, _b in jobs], two.manifest, two.trained)
    one_faiss = faiss.clone_index(two.trained)
    one_faiss.add(docs)
    one = Index(one_faiss, ids, codes, dict(two.manifest), device="cpu")
    rng = np.random.default_rng(1)
    q = tune[rng.choice(len(tune), 256, replace=False)]
    rows = []
    for name, idx in (("1 index", one), ("2 shards", two), ("4 shards", four)):
        idx.search_arrays(q[:64], 10)  # warm
        t0 = time.perf_counter()
        for s in range(0, len(q), 64):
            idx.search_arrays(q[s : s + 64], 10)
        qps = len(q) / (time.perf_counter() - t0)
        lat = []
        for i in range(100):
            t0 = time.perf_counter()
            idx.search_arrays(q[i : i + 1], 10)
            lat.append(time.perf_counter() - t0)
        rows.append(
            {"index": name, "qps_batch64": qps, "p50_ms_single": 1e3 * float(np.median(lat))}
        )
    _, r1 = one.search_arrays(q, 10)
    for idx in (two, four):
        assert np.array_equal(idx.search_arrays(q, 10)[1], r1), "sharded top-k differs"
    for r in rows:
        r.update(vectors=args.vectors, factory=args.factory, params=str(one.default_params))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--scale", default="small", help="synthetic benchmark scale")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus-per-actor", type=int, default=1)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vectors", type=int, default=300_000)
    ap.add_argument("--factory", default="IVF2048,PQ64,Refine(SQfp16)")
    ap.add_argument("--skip", choices=("encode", "search"), default=None)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    ROOT.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs"}
    if args.skip != "encode":
        e = encode_part(args)
        res["encode"] = e
        print(
            f"| encode ({e['model']} {e['precision']}, {e['documents']} docs) | single process "
            f"{e['single_threads']} threads: {e['single_docs_per_s']:.1f} docs/s | Ray "
            f"{e['ray_actors']}: {e['ray_docs_per_s']:.1f} docs/s | ratio "
            f"{e['ray_vs_single']:.2f}x | Ray start {e['ray_start_s']:.1f}s |"
        )
    if args.skip != "search":
        rows = search_part(args)
        res["search"] = rows
        print(
            f"\n| index ({args.vectors} x 512, {args.factory}) | q/s (batch 64) | p50 ms (1 query) |"
        )
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['index']} | {r['qps_batch64']:.0f} | {r['p50_ms_single']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
