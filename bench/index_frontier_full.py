"""Every index candidate measured at full size (issue 13, "the picture").

    BENCH_INDEX_N=1177447 .venv/bin/python bench/index_frontier_full.py [--only SUBSTR]
        [--rounds 300] [--batch-rounds 20] [--target 0.955] [--remeasure]

``bench/bench_index.py`` draws the frontier the builder measured on its selection sample
(131,072 of 1,177,447 rows at the paper's size) and measures only the chosen index at N. This
script takes the candidates that builder listed (``selection.frontier`` in the manifest
bench_index wrote to ``ROOT/auto_{N}x{D}_t{TARGET}/``; run bench_index first), builds each one
at N with the project's builder (``build_index(factory=<candidate>, target_recall=TARGET)``:
trained, filled and tuned on the tune queries at full size, the way an explicit ``--factory``
build is), and measures it on bench_index's 1,000 benchmark queries: tie-aware recall@10 vs
exact, single-query median latency (``--rounds`` queries after a warm-up), batch-64 median
latency, memory (the builder's ``memory_figures``: codes + coarse structures vs the re-ranking
store), build seconds. Exact Flat is measured in the same run before and after the candidates
(this VM's speed drifts); ratios use the mean of the two.

Same corpus and queries as bench_index (``bench_index.benchmark_corpus``, env
BENCH_INDEX_N / BENCH_INDEX_D / BENCH_INDEX_DIR / BENCH_INDEX_TARGET). Each candidate's index
and result JSON go to ``ROOT/full_frontier/{N}x{D}_t{TARGET}/<factory>/``: a re-run skips the
finished candidates (their figures, with the Flat baseline of the run that measured them, are
reused; ``--remeasure`` re-times them from the saved indexes without rebuilding). Results:
``bench/results/index_frontier_full.md`` and ``.png`` (``..._n{N}`` when N is not the paper's
1,177,447). Disk: every candidate's index is kept (at 1.17M up to ~2.5 GB each).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from bench_index import (
    BATCH,
    N_SINGLE_FLAT,
    N_SINGLE_TUNED,
    ROOT,
    TARGET,
    D,
    K,
    N,
    benchmark_corpus,
)

from univl_fast.index import build_index, load_index, save_index
from univl_fast.index.select import pareto
from univl_fast.index.steps import add_in_chunks, new_index
from univl_fast.index.tune import tie_aware_recall
from univl_fast.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

PAPER_N = 1_177_447
RESULTS = Path(__file__).resolve().parent / "results"
RESULT_FILE = "result.json"
FLAT_SECONDS = 10.0  # time given to each Flat timing (rounds between the minimum and --rounds)
FLAT_MIN_BATCH_ROUNDS = 3
DRIFT = 1.3  # Flat after / before beyond this: the report says the ratios are unreliable


# ---------------------------------------------------------------------------- timing
def latencies(search, queries: np.ndarray, per_call: int, rounds: int, warmup: int) -> list:
    """Seconds per ``search(batch)`` call over ``rounds`` calls, cycling through ``queries``
    ``per_call`` rows at a time, after ``warmup`` untimed calls."""
    n_batches = max(1, queries.shape[0] // per_call)
    out = []
    for i in range(warmup + rounds):
        j = (i % n_batches) * per_call
        batch = queries[j : j + per_call]
        t0 = time.perf_counter()
        search(batch)
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def timing(lat: list) -> dict:
    a = np.asarray(lat)
    return {
        "median_s": float(np.median(a)),
        "p90_s": float(np.percentile(a, 90)),
        "min_s": float(a.min()),
        "rounds": len(lat),
    }


def measure_flat(vectors, queries: np.ndarray, max_rounds: int, label: str) -> dict:
    """Exact Flat, built here (and freed on return): single-query and batch-64 medians."""
    index = new_index("Flat", D)
    add_in_chunks(index, vectors, 262_144)
    out = {
        "single": timing(_flat_latencies(index, queries, 1, N_SINGLE_FLAT, max_rounds)),
        "batch64": timing(
            _flat_latencies(index, queries, BATCH, FLAT_MIN_BATCH_ROUNDS, max_rounds)
        ),
    }
    print(
        f"Flat ({label}): single {out['single']['median_s'] * 1e3:.2f} ms "
        f"({out['single']['rounds']} rounds), batch-64 {out['batch64']['median_s'] * 1e3:.1f} ms "
        f"({out['batch64']['rounds']} rounds)",
        file=sys.stderr,
    )
    return out


def _flat_latencies(index, queries: np.ndarray, per_call: int, least: int, most: int) -> list:
    """As many rounds as fit FLAT_SECONDS (one untimed call first, to size them), between
    ``least`` (bench_index's own Flat round counts) and ``most``."""

    def search(q):
        return index.search(q, K)

    one = latencies(search, queries, per_call, 1, 0)[0]
    rounds = max(least, min(most, int(FLAT_SECONDS / max(one, 1e-6))))
    return latencies(search, queries, per_call, rounds, 0)


def flat_baseline(before: dict, after: dict) -> dict:
    return {
        part: (before[part]["median_s"] + after[part]["median_s"]) / 2
        for part in ("single", "batch64")
    }


# ---------------------------------------------------------------------------- candidates
def safe_name(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", factory).strip("_")


def listed_candidates(manifest: dict) -> tuple[list[dict], list[dict]]:
    """(candidates to build at N, entries not built: skipped by the builder), from the
    manifest's ``selection.frontier``; exact Flat is the baseline, measured separately."""
    frontier = manifest["selection"]["frontier"]
    build = [r for r in frontier if "skipped" not in r and r["factory"] != "Flat"]
    skipped = [r for r in frontier if "skipped" in r]
    return build, skipped


def measure_candidate(idx, corpus: dict, rounds: int, batch_rounds: int) -> dict:
    q, v = corpus["bench_q"], corpus["vectors"]
    _, rows = idx.search_arrays(q, K)
    recall = tie_aware_recall(v, q, rows, corpus["gt_scores"], K)
    top1 = float(np.mean(rows[:, 0] == corpus["gt_rows"][:, 0]))
    single = latencies(lambda x: idx.search_arrays(x, K), q, 1, rounds, 5)
    batch = latencies(lambda x: idx.search_arrays(x, K), q, BATCH, batch_rounds, 2)
    m = idx.manifest
    return {
        "recall_at_10": recall,
        "top1_agreement": top1,
        "single": timing(single),
        "batch64": timing(batch),
        "search_params": {k: x for k, x in m["search_params"].items() if x is not None},
        "tune_recall": m["tuning"]["recall_at_k"],
        "held_out_recall": m["tuning"]["held_out_recall_at_k"],
        "target_met_on_tune": m["tuning"]["target_met"],
        "memory": m["memory"],
        "build_seconds": m["build_seconds"],
    }


def run_candidate(entry: dict, corpus: dict, out_dir: Path, args, flat: dict) -> dict:
    """Build (or load) one candidate at N, measure it, write its result JSON."""
    factory = entry["factory"]
    idx_dir = out_dir / "index"
    if (idx_dir / "manifest.json").exists():
        print(f"{factory}: loading the index built earlier", file=sys.stderr)
        idx = load_index(idx_dir, verify=False)
    else:
        print(f"{factory}: building at N={N:,}", file=sys.stderr)
        idx = build_index(
            corpus["vectors"],
            [str(i) for i in range(N)],
            corpus["modalities"],
            factory=factory,
            tune_queries=corpus["tune_q"],
            target_recall=args.target,
            k=K,
        )
        save_index(idx, idx_dir)
    result = {
        "factory": factory,
        "family": entry.get("family"),
        "n": N,
        "d": D,
        "target": args.target,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "flat_before": flat,
        **measure_candidate(idx, corpus, args.rounds, args.batch_rounds),
    }
    del idx
    atomic_write_json(out_dir / RESULT_FILE, result)
    print(
        f"{factory}: recall@10 {result['recall_at_10']:.4f}, single "
        f"{result['single']['median_s'] * 1e3:.3f} ms, batch-64 "
        f"{result['batch64']['median_s'] * 1e3:.2f} ms, build "
        f"{result['build_seconds'].get('total', float('nan')):.1f} s",
        file=sys.stderr,
    )
    return result


# ---------------------------------------------------------------------------- report
def _qps(seconds: float, per_call: int = 1) -> float:
    return per_call / seconds


def summarize(results: list[dict], flat: dict, sample: dict) -> list[dict]:
    """Per candidate: full-size q/s, the ratio vs the Flat of the run that measured it, the
    sample figures; Pareto marks over the candidates and Flat (recall 1) at full size."""
    rows = []
    for r in results:
        base = r["flat_baseline"]
        rows.append(
            {
                **r,
                "single_qps": _qps(r["single"]["median_s"]),
                "batch_qps": _qps(r["batch64"]["median_s"], BATCH),
                "single_ratio": base["single"] / r["single"]["median_s"],
                "batch_ratio": base["batch64"] / r["batch64"]["median_s"],
                "sample": sample.get(r["factory"], {}),
            }
        )
    points = [(r["recall_at_10"], r["single_qps"]) for r in rows]
    points.append((1.0, _qps(flat["single"])))
    on = set(pareto(points))
    for i, r in enumerate(rows):
        r["pareto"] = i in on
    return rows


def fastest_meeting(rows: list[dict], target: float) -> dict | None:
    meeting = [r for r in rows if r["recall_at_10"] >= target]
    return max(meeting, key=lambda r: r["single_qps"]) if meeting else None


def report(rows, skipped, missing, flat_runs, chosen, manifest, args, load, out_md, out_png):
    flat = flat_baseline(flat_runs[0], flat_runs[1])
    sel = manifest["selection"]
    best = fastest_meeting(rows, args.target)
    chosen_row = next((r for r in rows if r["factory"] == chosen), None)
    env = f"BENCH_INDEX_N={N}"
    if D != 512:
        env += f" BENCH_INDEX_D={D}"
    if os.environ.get("BENCH_INDEX_DIR"):
        env += f" BENCH_INDEX_DIR={os.environ['BENCH_INDEX_DIR']}"
    mem_flat = N * D * 4
    lines = [
        "# Index frontier at full size (issue 13, the picture)",
        "",
        "Command (repo root; bench/bench_index.py run first at the same N and target):",
        "```",
        f"{env} .venv/bin/python bench/index_frontier_full.py {' '.join(args.argv)}".rstrip(),
        "```",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; faiss "
        f"{faiss.__version__}, OMP threads {faiss.omp_get_max_threads()}. 1-minute load "
        f"average {load[0]:.2f} at start, {load[1]:.2f} at the end. Run finished "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Corpus: bench_index's synthetic {N:,} x {D} (`synthetic_corpus`); "
        f"{args.n_queries:,} benchmark queries, exact ground truth cached by bench_index. Each "
        "candidate the builder listed was built at N by `build_index(factory=<candidate>, "
        f"target_recall={args.target})` (trained, filled and tuned at full size on the tune "
        f"queries, target + margin {manifest['tuning'].get('margin')}). Recall@10 is "
        "tie-aware vs exact on the benchmark queries; single-query and batch-64 q/s are "
        f"1 / and {BATCH} / the median latency ({args.rounds} single queries after 5 warm-up, "
        f"{args.batch_rounds} batches); ratios are against exact Flat measured in the same run "
        "as the candidate (the mean of Flat before and after the candidates). Bytes: the "
        "builder's `memory_figures` (codes + ids, coarse centroids / transforms / PQ tables / "
        "graphs, re-ranking store reported separately), fraction of Flat's "
        f"{mem_flat:,} bytes.",
        "",
        f"Exact Flat this run: single {flat_runs[0]['single']['median_s'] * 1e3:.2f} ms before, "
        f"{flat_runs[1]['single']['median_s'] * 1e3:.2f} ms after "
        f"({flat_runs[0]['single']['rounds']} / {flat_runs[1]['single']['rounds']} rounds), "
        f"baseline {flat['single'] * 1e3:.2f} ms = {_qps(flat['single']):.1f} q/s; batch-64 "
        f"{flat_runs[0]['batch64']['median_s'] * 1e3:.1f} / "
        f"{flat_runs[1]['batch64']['median_s'] * 1e3:.1f} ms, baseline "
        f"{_qps(flat['batch64'], BATCH):.0f} q/s.{drift_note(flat_runs)}",
        "",
        "| candidate | params (tuned at N) | recall@10 at N | tune / held-out recall | "
        "single q/s | x Flat | batch-64 q/s | x Flat | codes + coarse (of Flat) | "
        "re-rank store (of Flat) | build s | Pareto at N | on the sample (tune queries): "
        "recall, single q/s | "
        "measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["single_qps"]):
        mem = r["memory"]
        coarse = mem["codes_bytes"] + mem.get("coarse_and_transform_bytes", 0)
        name = f"**{r['factory']}** (builder's choice)" if r["factory"] == chosen else r["factory"]
        s = r["sample"]
        sample_txt = (
            f"{s['recall_at_k']:.4f}, {s['single_query_qps']:.0f}" if "recall_at_k" in s else ""
        )
        held = r["held_out_recall"]
        lines.append(
            f"| {name} | {r['search_params']} | {r['recall_at_10']:.4f} | "
            f"{r['tune_recall']:.4f} / {'n/a' if held is None else f'{held:.4f}'} | "
            f"{r['single_qps']:.0f} | {r['single_ratio']:.0f}x | {r['batch_qps']:.0f} | "
            f"{r['batch_ratio']:.0f}x | {coarse:,} ({coarse / mem_flat:.4f}) | "
            f"{mem['refine_bytes']:,} ({mem['refine_bytes'] / mem_flat:.3f}) | "
            f"{r['build_seconds'].get('total', float('nan')):.1f} | "
            f"{'yes' if r['pareto'] else ''} | {sample_txt} | "
            f"{'this run' if r['this_run'] else r['measured_at']} |"
        )
    lines.append(
        f"| exact Flat (baseline) | | 1.0000 | | {_qps(flat['single']):.1f} | 1x | "
        f"{_qps(flat['batch64'], BATCH):.0f} | 1x | {mem_flat:,} (1) | | | "
        f"{'yes' if rows and _flat_on_pareto(rows, flat) else ''} | | this run |"
    )
    for r in skipped:
        lines.append(f"| {r['factory']} | skipped by the builder: {r['skipped']} |" + " |" * 12)
    for f in missing:
        lines.append(f"| {f} | not measured ({missing[f]}) |" + " |" * 12)
    lines += [
        "",
        f"Builder's choice on the {sel['sample_rows']:,}-row sample: `{chosen}` ({sel['why']}).",
    ]
    if chosen_row is None:
        lines.append("It was not measured at full size in this table.")
    elif best is None:
        lines.append(f"No candidate reaches recall@10 {args.target} at full size.")
    elif best["factory"] == chosen:
        lines.append(
            f"At full size it is also the fastest single-query candidate reaching recall@10 "
            f">= {args.target} of the {len(rows)} measured ({best['single_qps']:.0f} q/s, "
            f"recall {best['recall_at_10']:.4f})."
        )
    else:
        lines.append(
            f"At full size the fastest single-query candidate reaching recall@10 >= "
            f"{args.target} of the {len(rows)} measured is `{best['factory']}` ({best['single_qps']:.0f} q/s, recall "
            f"{best['recall_at_10']:.4f}), not the choice ({chosen_row['single_qps']:.0f} q/s, "
            f"recall {chosen_row['recall_at_10']:.4f})."
        )
    try:
        draw(rows, flat, chosen, args.target, out_png)
        lines += ["", f"Picture: `bench/results/{out_png.name}`."]
    except ImportError as exc:  # matplotlib is in the [report] extra
        lines += ["", f"(no picture: {exc})"]
    atomic_write_text(out_md, "\n".join(lines) + "\n")
    print(f"wrote {out_md}", file=sys.stderr)
    print("\n".join(lines))


def drift_note(flat_runs) -> str:
    """A warning when Flat before and after the candidates differ by more than DRIFT."""
    worst = max(
        max(a, b) / min(a, b)
        for a, b in (
            (flat_runs[0][p]["median_s"], flat_runs[1][p]["median_s"])
            for p in ("single", "batch64")
        )
    )
    if worst <= DRIFT:
        return ""
    return (
        f" **Flat before and after differ by {worst:.1f}x: the machine's speed changed during "
        "the run (load, drift); the ratios below are not reliable.**"
    )


def _flat_on_pareto(rows: list[dict], flat: dict) -> bool:
    points = [(r["recall_at_10"], r["single_qps"]) for r in rows] + [(1.0, _qps(flat["single"]))]
    return len(points) - 1 in pareto(points)


def draw(rows: list[dict], flat: dict, chosen: str, target: float, out: Path) -> None:
    """Log q/s vs recall at N: one colour per candidate (named in the legend, the builder's
    choice a star), a faint arrow from where the selection sample put it, the Pareto line,
    Flat, the target. The recall axis starts near the target; a candidate far below it is
    drawn on the bottom edge as a triangle, its recall in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = min(target - 0.05, 0.9)
    below = floor + 0.004  # where a candidate under the axis is drawn

    def clip(y: float) -> float:
        return max(y, below)

    fig, ax = plt.subplots(figsize=(11, 6.5))
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # 3: red
    for i, r in enumerate(sorted(rows, key=lambda r: -r["single_qps"])):
        is_chosen = r["factory"] == chosen
        color = "tab:red" if is_chosen else palette[i % len(palette)]
        x, y = r["single_qps"], r["recall_at_10"]
        s = r["sample"]
        if "recall_at_k" in s:  # where the selection sample put it: a faint arrow to N
            sx, sy = s["single_query_qps"], clip(s["recall_at_k"])
            ax.annotate(
                "",
                (x, clip(y)),
                (sx, sy),
                arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.35, "lw": 0.8},
            )
            ax.scatter(sx, sy, facecolors="none", edgecolors=color, alpha=0.5, s=25)
        label = f"{r['factory']}: {y:.4f}, {x:,.0f} q/s" + (
            " (builder's choice)" if is_chosen else ""
        )
        ax.scatter(
            x,
            clip(y),
            color=color,
            marker="*" if is_chosen else ("v" if y < below else "o"),
            s=220 if is_chosen else 45,
            zorder=3,
            label=label,
        )
    flat_qps = _qps(flat["single"])
    front = sorted(
        [(r["single_qps"], clip(r["recall_at_10"])) for r in rows if r["pareto"]]
        + ([(flat_qps, 1.0)] if _flat_on_pareto(rows, flat) else [])
    )
    if front:
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "--",
            color="gray",
            label="Pareto frontier at N",
        )
    ax.scatter(
        flat_qps,
        1.0,
        marker="s",
        color="black",
        label=f"exact Flat at N: 1.0, {flat_qps:,.1f} q/s (same run)",
    )
    ax.scatter(
        [],
        [],
        facecolors="none",
        edgecolors="gray",
        label="on the builder's selection sample (tune queries)",
    )
    ax.set_ylim(floor, 1.005)
    ax.axhline(target, color="tab:green", lw=0.8, label=f"target {target}")
    ax.set_xscale("log")
    ax.set_xlabel(f"single-query queries/s (log scale), measured at N={N:,}")
    ax.set_ylabel(f"recall@10 vs exact, measured at N={N:,}")
    earlier = sum(not r["this_run"] for r in rows)
    ax.set_title(
        f"Index frontier, every candidate built at full size ({N:,} x {D})"
        + (f"\n{earlier} of {len(rows)} candidates timed in earlier runs" if earlier else "")
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}", file=sys.stderr)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="measure only candidates whose factory contains SUBSTR")
    ap.add_argument(
        "--rounds",
        type=int,
        default=N_SINGLE_TUNED,
        help="timed single queries per candidate (median; default %(default)s)",
    )
    ap.add_argument("--batch-rounds", type=int, default=20, help="timed batch-64 calls")
    ap.add_argument(
        "--target",
        type=float,
        default=TARGET,
        help="recall target (default BENCH_INDEX_TARGET or 0.955); also picks "
        "bench_index's manifest auto_{N}x{D}_t{target}",
    )
    ap.add_argument(
        "--manifest",
        type=Path,
        help="bench_index's manifest.json (default: ROOT/auto_{N}x{D}_t{target}/manifest.json)",
    )
    ap.add_argument(
        "--remeasure",
        action="store_true",
        help="re-time finished candidates from their saved indexes (no rebuild)",
    )
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.rounds < 1 or args.batch_rounds < 1:
        ap.error("--rounds and --batch-rounds must be >= 1")
    if not 0.0 < args.target <= 1.0:
        ap.error(f"--target must be in (0, 1], got {args.target}")
    path = args.manifest or ROOT / f"auto_{N}x{D}_t{args.target}" / "manifest.json"
    if not path.exists():
        ap.error(f"{path} not found: run bench/bench_index.py at BENCH_INDEX_N={N} first")
    manifest = read_json(path)
    if "selection" not in manifest:
        ap.error(
            f"{path} has no 'selection' (factory {manifest.get('factory')!r} was not "
            "chosen by the budget builder): nothing to compare"
        )
    to_build, skipped = listed_candidates(manifest)
    sample = {r["factory"]: r for r in to_build}
    chosen = manifest["factory"]
    missing = {}
    if args.only:
        missing = {r["factory"]: "--only" for r in to_build if args.only not in r["factory"]}
        to_build = [r for r in to_build if args.only in r["factory"]]
        if not to_build:
            ap.error(f"--only {args.only!r} matches none of {sorted(sample)}")

    load0 = os.getloadavg()[0]
    corpus = benchmark_corpus()
    vectors, bench_q = corpus["vectors"], corpus["bench_q"]
    args.n_queries = bench_q.shape[0]
    work = ROOT / "full_frontier" / f"{N}x{D}_t{args.target}"

    flat_before = measure_flat(vectors, bench_q, args.rounds, "before")
    results = []
    for entry in to_build:
        out_dir = work / safe_name(entry["factory"])
        done = out_dir / RESULT_FILE
        if done.exists() and not args.remeasure:
            r = read_json(done)
            print(
                f"{entry['factory']}: finished earlier ({r['measured_at']}), reused",
                file=sys.stderr,
            )
            r["this_run"] = False
            results.append(r)
            continue
        try:
            r = run_candidate(entry, corpus, out_dir, args, flat_before)
        except (RuntimeError, ValueError) as exc:  # a factory faiss cannot build at N
            print(f"{entry['factory']}: FAILED: {exc}", file=sys.stderr)
            missing[entry["factory"]] = f"failed: {exc}"
            continue
        r["this_run"] = True
        results.append(r)
    flat_after = measure_flat(vectors, bench_q, args.rounds, "after")
    flat = flat_baseline(flat_before, flat_after)
    for r in results:
        if r["this_run"]:  # this run's baseline, stored with the result for later re-runs
            r["flat_baseline"] = flat
            atomic_write_json(
                work / safe_name(r["factory"]) / RESULT_FILE,
                {k: v for k, v in r.items() if k != "this_run"},
            )
    for r in results:  # a result from a run that stopped before its Flat-after
        r.setdefault("flat_baseline", flat_baseline(r["flat_before"], r["flat_before"]))
    # the rest of the candidates listed: measured earlier, outside --only
    for f in list(missing):
        done = work / safe_name(f) / RESULT_FILE
        if missing[f] == "--only" and done.exists():
            r = read_json(done)
            r["this_run"] = False
            r.setdefault("flat_baseline", flat_baseline(r["flat_before"], r["flat_before"]))
            results.append(r)
            del missing[f]
    rows = summarize(results, flat, sample)
    suffix = "" if N == PAPER_N else f"_n{N}"
    report(
        rows,
        skipped,
        missing,
        (flat_before, flat_after),
        chosen,
        manifest,
        args,
        (load0, os.getloadavg()[0]),
        RESULTS / f"index_frontier_full{suffix}.md",
        RESULTS / f"index_frontier_full{suffix}.png",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
