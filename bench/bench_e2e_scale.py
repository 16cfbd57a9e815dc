"""End-to-end single-query latency at the paper's corpus size (issue 13): ``Engine.search``
(the int8 engine: native int8 text tower + the index the budget builder chooses) beside
open_clip eager + exact ``Flat`` search over the same corpus, in the same run.

    .venv/bin/python bench/bench_e2e_scale.py [--n 1177447] [--queries 200] [--flat-queries 20]

What is measured, per query (one client, one query per call, as a web handler would):
  * ours: ``engine.search([q], k=10)`` from the string to ranked hits, default engine
    (batching on) and ``batching=False``; ``timings`` gives the encode / search split;
  * baseline: open_clip eager ``encode_text`` (2 torch threads, padded to 77 tokens, as
    bench_encode's eager) + L2 normalisation + ``faiss.IndexFlatIP.search`` over the same
    N vectors (2 faiss threads).
Ours and the baseline alternate in blocks so that drift hits both; medians per block are
printed, the table gives p50 over all blocks.

Corpus: bench_index's synthetic corpus (``bench_index.synthetic_corpus``: the same N vectors,
cached under its directory, and its tune queries), indexed in the engine's embedding space. They are not
the engine's encodings of documents (encoding 1.17M documents takes hours on this machine),
so no recall of the engine's queries is reported: recall at this size is bench_index's
(same generator, its own queries). The cost of one search at the tuned point depends on N,
the list sizes the query probes and k_factor, which these vectors give the index; where the
engine's (random-weight) queries fall among the lists is not like real queries, which the
spread over queries shows. Engine: bench_e2e's cached ViT-B-32 (random weights) export.
Writes ``bench/results/e2e_scale.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from bench_e2e import ROOT, bench_queries, ensure_engine

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "e2e_scale.md"
K = 10


def p50_ms(xs: list[float]) -> float:
    return float(np.median(xs) * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_177_447, help="corpus rows")
    ap.add_argument("--queries", type=int, default=200, help="queries for ours, per mode")
    ap.add_argument("--flat-queries", type=int, default=20, help="queries for the baseline")
    ap.add_argument("--blocks", type=int, default=2, help="alternating blocks per side")
    ap.add_argument("--target-recall", type=float, default=0.955)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.n < 1000 or args.queries < args.blocks or args.flat_queries < args.blocks:
        ap.error("--n >= 1000 and at least one query per block on each side")

    import faiss

    import univl_fast
    from univl_fast.index import build_index, save_index

    faiss.omp_set_num_threads(2)
    load0 = os.getloadavg()[0]
    engine_dir = ensure_engine()
    plain = univl_fast.load(engine_dir, precision="int8", batching=False)
    d = int(plain.encoder.dim)
    from bench_index import ROOT as INDEX_ROOT
    from bench_index import synthetic_corpus

    vectors, modalities, tune_q, _ = synthetic_corpus(INDEX_ROOT, args.n, d)
    ids = [f"d{i}" for i in range(args.n)]
    t0 = time.perf_counter()
    index = build_index(
        vectors,
        ids,
        modalities,
        target_recall=args.target_recall,
        tune_queries=tune_q,
        encoder=plain.encoder,
    )
    build_s = time.perf_counter() - t0
    index_dir = ROOT / f"index_scale_{args.n}"
    save_index(index, index_dir)
    factory = index.manifest["factory"]
    params = index.manifest["search_params"]
    del index
    engines = {
        "Engine.search (batching on, default)": univl_fast.load(
            engine_dir, index=index_dir, precision="int8"
        ),
        "Engine.search (batching=False)": univl_fast.load(
            engine_dir, index=index_dir, precision="int8", batching=False
        ),
    }
    text_runtime = engines["Engine.search (batching=False)"].encoder.text_runtime

    from bench_encode import Eager

    eager = Eager(ROOT / "ckpt_vitb32_random")  # the checkpoint the engine was exported from
    flat = faiss.IndexFlatIP(d)
    flat.add(np.ascontiguousarray(vectors))
    del vectors

    qs = bench_queries()
    need = args.queries + args.flat_queries + 16
    qs = (qs * (need // max(1, len(qs)) + 1))[:need]
    warm, ours_q, base_q = qs[:16], qs[16 : 16 + args.queries], qs[16 + args.queries :]
    for eng in engines.values():
        for q in warm:
            eng.search([q], k=K)
    for q in warm[:3]:
        flat.search(eager.encode_queries([q]), K)

    lat: dict[str, list[float]] = {name: [] for name in engines}
    split: dict[str, list[float]] = {"encode": [], "search": []}
    base: dict[str, list[float]] = {"total": [], "encode": [], "search": []}
    blocks: list[str] = []
    per_o = args.queries // args.blocks
    per_b = args.flat_queries // args.blocks
    for b in range(args.blocks):
        for name, eng in engines.items():
            xs = []
            for q in ours_q[b * per_o : (b + 1) * per_o]:
                tm: dict[str, float] = {}
                t = time.perf_counter()
                eng.search([q], k=K, timings=tm)
                xs.append(time.perf_counter() - t)
                if "False" in name:
                    split["encode"].append(tm.get("encode_s", float("nan")))
                    split["search"].append(tm.get("search_s", float("nan")))
            lat[name] += xs
            blocks.append(f"block {b + 1} {name}: p50 {p50_ms(xs):.2f} ms")
        xs = []
        for q in base_q[b * per_b : (b + 1) * per_b]:
            t = time.perf_counter()
            v = eager.encode_queries([q]).astype(np.float32)
            t1 = time.perf_counter()
            flat.search(v, K)
            t2 = time.perf_counter()
            base["encode"].append(t1 - t)
            base["search"].append(t2 - t1)
            xs.append(t2 - t)
        base["total"] += xs
        blocks.append(f"block {b + 1} eager + Flat: p50 {p50_ms(xs):.1f} ms")
        print(blocks[-1], file=sys.stderr, flush=True)

    base_p50 = p50_ms(base["total"])
    rows = [
        "| path | queries | p50 ms | p95 ms | encode p50 ms | search p50 ms | x eager + Flat (p50) |",
        "|---|---|---|---|---|---|---|",
        f"| open_clip eager + exact Flat (baseline) | {len(base['total'])} | {base_p50:.1f} | "
        f"{np.percentile(base['total'], 95) * 1e3:.1f} | {p50_ms(base['encode']):.1f} | "
        f"{p50_ms(base['search']):.1f} | 1.0 |",
    ]
    for name, xs in lat.items():
        enc = f"{p50_ms(split['encode']):.2f}" if "False" in name else "-"
        sea = f"{p50_ms(split['search']):.2f}" if "False" in name else "-"
        rows.append(
            f"| {name} | {len(xs)} | {p50_ms(xs):.2f} | {np.percentile(xs, 95) * 1e3:.2f} | "
            f"{enc} | {sea} | **{base_p50 / p50_ms(xs):.0f}x** |"
        )
    text = "\n".join(
        [
            "# End-to-end single-query latency at paper scale (issue 13)",
            "",
            "Command: `.venv/bin/python bench/bench_e2e_scale.py"
            + ("" if args.n == 1_177_447 else f" --n {args.n}")
            + f" --queries {args.queries} --flat-queries {args.flat_queries}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; 1-minute load "
            f"{load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            "",
            f"Corpus: {args.n:,} x {d} synthetic unit vectors (bench_index's corpus and tune queries) "
            f"in the engine's embedding space; engine {engine_dir.name} (ViT-B-32, random "
            f"weights, int8, text runtime {text_runtime}); index chosen by the budget builder "
            f"for target {args.target_recall}: `{factory}` {params} (built in {build_s:.0f} s). "
            "Queries: the e2e benchmark's test questions, one per call, one client.",
            "",
            *rows,
            "",
            "Blocks (ours and the baseline alternate):",
            "",
            *[f"- {b}" for b in blocks],
            "",
        ]
    )
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
