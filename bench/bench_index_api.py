"""Per-call cost of the index search API (the Python layer around faiss) for single queries:
``Index.search`` on an exact and an IVF index, and a 2-shard ``ShardedIndex``. Works on this
tree and on older ones (before ``index/base.py``), so two checkouts compare in one run::

    python bench/bench_index_api.py --trees OLD_CHECKOUT,. --rounds 5

runs each tree in its own subprocess, interleaved round by round, and prints the median
microseconds per call of each (``--one`` measures the tree on ``sys.path`` once, as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

N, D, CALLS = 20_000, 128, 2_000


def _corpus():
    import numpy as np

    rng = np.random.default_rng(0)
    v = rng.normal(size=(N, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = rng.normal(size=(CALLS, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(N)]
    mods = ["text" if i % 3 else "image" for i in range(N)]
    return v, q, ids, mods


def _sharded(v, ids, mods, out):
    from univl_fast.index import IndexConfig

    cfg = IndexConfig("IVF64,Flat", D, tune_by="cost")
    try:  # this tree: build_index(shards=N)
        from univl_fast.index.build import build_sharded_index
    except ImportError:  # before: scale/build.py
        from univl_fast.scale.build import build_sharded_index
    return build_sharded_index(
        v, ids, mods, out, 2, factory="IVF64,Flat", progress=False, config=cfg
    )


def measure_once() -> dict[str, float]:
    from univl_fast.index import IndexConfig, build_index

    v, q, ids, mods = _corpus()
    flat = build_index(v, ids, mods, factory="Flat", progress=False, device="cpu")
    cfg = IndexConfig("IVF64,Flat", D, tune_by="cost")
    ivf = build_index(v, ids, mods, factory="IVF64,Flat", progress=False, device="cpu", config=cfg)
    with tempfile.TemporaryDirectory() as tmp:
        sharded = _sharded(v, ids, mods, os.path.join(tmp, "s"))
        out = {}
        for name, index, modality in (
            ("flat", flat, None),
            ("ivf", ivf, None),
            ("ivf_image_only", ivf, "image"),
            ("sharded2_ivf", sharded, None),
        ):
            rows = [q[i : i + 1] for i in range(CALLS)]
            for r in rows[:100]:
                index.search(r, 10, modality=modality)
            t0 = time.perf_counter()
            for r in rows:
                index.search(r, 10, modality=modality)
            out[name] = (time.perf_counter() - t0) / CALLS * 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", action="store_true", help="measure the tree on sys.path, print JSON")
    p.add_argument("--trees", default=".", help="comma list of checkouts to compare")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if args.one:
        import faiss

        faiss.omp_set_num_threads(1)
        print(json.dumps(measure_once()))
        return 0
    trees = [os.path.abspath(t) for t in args.trees.split(",")]
    got: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for t in trees if r % 2 == 0 else trees[::-1]:
            env = {**os.environ, "PYTHONPATH": t}
            res = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--one"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                cwd=t,
            )
            got[t].append(json.loads(res.stdout.strip().splitlines()[-1]))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"median us per single-query search call, {args.rounds} interleaved rounds, load {load}")
    names = list(got[trees[0]][0])
    base = {n: statistics.median(x[n] for x in got[trees[0]]) for n in names}
    for t in trees:
        med = {n: statistics.median(x[n] for x in got[t]) for n in names}
        cells = ", ".join(f"{n} {med[n]:.1f} ({med[n] / base[n]:.3f}x)" for n in names)
        print(f"{t}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
