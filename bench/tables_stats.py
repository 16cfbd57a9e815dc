"""Error bars and paired tests for the Table 3 / Table 4 rows of ``bench/run_tables.py --seeds``.

    .venv/bin/python bench/tables_stats.py --work /work/main/runs/tables_seeds \
        --out runs/tables_stats [--publish bench/results] [--threads 1]

``--work`` is read only. For every finished checkpoint (``WORK/seed{S}/checkpoints/NAME/DONE``)
the test split is re-evaluated with ``univl-fast eval --by-modality --per-query`` into
``OUT/per_query/seed{S}/NAME.json`` (skipped when that file exists; a few seconds each), and
checked against the run's own ``WORK/seed{S}/eval/NAME.json`` when present. Then:

- per row and metric (Text / Image / Multi MRR@10, Multi NDCG@10, Multi Recall@20, image
  share of the top 10): mean and sample standard deviation over the seeds that finished it
  (n shown per row);
- per comparison RESULTS.md draws (balanced + in-batch vs in-batch stage 1, vs random,
  vs only texts, vs only images; verbalized vs plain captions): a paired randomization
  (sign-flip) test on per-query MRR@10 (``univl_fast.evaluation.significance``): per seed, and combined
  over seeds (each query's difference averaged over the seeds, then the sign-flip test over
  the test queries; 10,000 flips; two-sided);
- per model the routing numbers behind Figure 4: mean cosine of a query to its nearest text
  and nearest image doc, share of image-answerable queries whose nearest doc is an image and
  of text-answerable queries whose nearest doc is a text.

Once the four Figure 4 checkpoints of ``--figure-seed`` are done, draws the paper's Figure 4
(``univl-fast plot embeddings``: in-batch, only texts, only images, balanced + in-batch) into
``OUT/embeddings.png``. Writes ``OUT/tables_stats.json`` and ``OUT/tables_seeds.md``;
``--publish DIR`` copies the markdown and the figure there. ``univl-fast report --workdir OUT``
makes the HTML page of it all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from run_tables import eval_args  # noqa: E402

from univl_fast.evaluation.significance import mean_sd, paired_test_across_seeds  # noqa: E402

# (label, run_tables checkpoint / eval name, captions)
TABLE3 = [
    ("In-batch (CLIP-DPR, stage 1)", "stage1_inbatch", "plain"),
    ("Hard negatives: only texts (2)", "stage2_texts_noinb_plain", "plain"),
    ("Hard negatives: only texts (2) + in-batch", "stage2_texts_inb_plain", "plain"),
    ("Hard negatives: only images (2)", "stage2_images_noinb_plain", "plain"),
    ("Hard negatives: only images (2) + in-batch", "stage2_images_inb_plain", "plain"),
    ("Hard negatives: balanced 1 image + 1 text", "stage2_balanced_noinb_plain", "plain"),
    ("Hard negatives: balanced 1 image + 1 text + in-batch", "stage2_balanced_inb_plain", "plain"),
    ("Hard negatives: random from top-100 (2)", "stage2_random_noinb_plain", "plain"),
    ("Hard negatives: random from top-100 (2) + in-batch", "stage2_random_inb_plain", "plain"),
]
TABLE4 = [
    ("In-batch (stage 1), plain captions", "stage1_inbatch", "plain"),
    ("Balanced + in-batch (stage 2), plain captions", "stage2_balanced_inb_plain", "plain"),
    ("In-batch (stage 1), verbalized queries", "stage1_inbatch_query", "query"),
    ("Balanced + in-batch (stage 2), verbalized queries", "t4_stage2_balanced_inb_query", "query"),
    ("In-batch (stage 1), verbalized captions", "stage1_inbatch_exp", "exp"),
    ("Balanced + in-batch (stage 2), verbalized captions", "t4_stage2_balanced_inb_exp", "exp"),
]
# (claim, a, b, paper Multi MRR@10 of a and b (WebQA, Tables 3 and 4), settings tested).
# Table 3 claims are directional (the paper's row a beats / loses to row b); for Table 4 the
# paper's Multi changes are all under 1.4 points (its claim: verbalization does not hurt and
# helps a little), so they are judged as "no large change" (see ``verdict``).
COMPARISONS = [
    (
        "Balanced + in-batch beats in-batch stage 1 (CLIP-DPR)",
        "stage2_balanced_inb_plain",
        "stage1_inbatch",
        (62.29, 48.83),
        ("multi",),
    ),
    (
        "Balanced + in-batch beats random (ANCE) + in-batch",
        "stage2_balanced_inb_plain",
        "stage2_random_inb_plain",
        (62.29, 61.72),
        ("multi",),
    ),
    (
        "Balanced + in-batch beats only texts + in-batch",
        "stage2_balanced_inb_plain",
        "stage2_texts_inb_plain",
        (62.29, 36.26),
        ("multi",),
    ),
    (
        "Balanced + in-batch beats only images + in-batch",
        "stage2_balanced_inb_plain",
        "stage2_images_inb_plain",
        (62.29, 33.49),
        ("multi",),
    ),
    (
        "Balanced beats random (no in-batch)",
        "stage2_balanced_noinb_plain",
        "stage2_random_noinb_plain",
        (62.29, 61.72),
        ("multi",),
    ),
    (
        "Only texts (no in-batch) loses to in-batch stage 1",
        "stage2_texts_noinb_plain",
        "stage1_inbatch",
        (36.26, 48.83),
        ("multi",),
    ),
    (
        "Only images (no in-batch) loses to in-batch stage 1",
        "stage2_images_noinb_plain",
        "stage1_inbatch",
        (33.49, 48.83),
        ("multi",),
    ),
    (
        "Verbalized captions vs plain, stage 2",
        "t4_stage2_balanced_inb_exp",
        "stage2_balanced_inb_plain",
        (62.24, 62.29),
        ("multi", "image"),
    ),
    (
        "Verbalized queries vs plain, stage 2",
        "t4_stage2_balanced_inb_query",
        "stage2_balanced_inb_plain",
        (62.40, 62.29),
        ("multi", "image"),
    ),
    (
        "Verbalized captions vs plain, stage 1",
        "stage1_inbatch_exp",
        "stage1_inbatch",
        (49.49, 48.83),
        ("multi", "image"),
    ),
    (
        "Verbalized queries vs plain, stage 1",
        "stage1_inbatch_query",
        "stage1_inbatch",
        (50.21, 48.83),
        ("multi", "image"),
    ),
]
METRICS = [  # (column, block, key)
    ("Text MRR@10", "text", "MRR@10"),
    ("Image MRR@10", "image", "MRR@10"),
    ("Multi MRR@10", None, "MRR@10"),
    ("Multi NDCG@10", None, "NDCG@10"),
    ("Multi R@20", None, "Recall@20"),
    ("image share @10 (%)", None, "image_share@10"),
]
ROUTING = [
    ("cos to nearest text", "mean_cos_nearest_text", False),
    ("cos to nearest image", "mean_cos_nearest_image", False),
    ("image-answerable -> nearest is an image (%)", "image_queries_nearest_image", True),
    ("text-answerable -> nearest is a text (%)", "text_queries_nearest_text", True),
]
# the paper's Figure 4 panels: CLIP-DPR, only texts, only images, UniVL-DR (balanced + in-batch)
FIGURE4 = [
    ("stage1_inbatch", "(a) In-batch (CLIP-DPR, stage 1)"),
    ("stage2_texts_noinb_plain", "(b) Hard negatives: only texts"),
    ("stage2_images_noinb_plain", "(c) Hard negatives: only images"),
    ("stage2_balanced_inb_plain", "(d) Balanced + in-batch (UniVL-DR)"),
]
ALPHA = 0.05
PAPER_NOISE = 1.5  # paper differences under this many points: "no large change"


def seeds_in(work: Path) -> list[int]:
    found = []
    for p in work.glob("seed*"):
        m = re.fullmatch(r"seed(\d+)", p.name)
        if m and p.is_dir():
            found.append(int(m.group(1)))
    return sorted(found)


def per_query_eval(
    work: Path,
    out: Path,
    data: Path,
    seed: int,
    name: str,
    captions: str,
    threads: int,
    do_eval: bool,
) -> dict | None:
    """The per-query eval JSON of one finished checkpoint (made when missing and do_eval)."""
    ckpt = work / f"seed{seed}" / "checkpoints" / name
    path = out / "per_query" / f"seed{seed}" / f"{name}.json"
    if not path.is_file():
        if not (ckpt / "DONE").is_file() or not do_eval:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = ("--per-query", "--threads", str(threads))
        cmd = [
            sys.executable,
            "-m",
            "univl_fast.cli",
            *eval_args(ckpt, data, captions, path, *extra),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"eval failed for seed {seed} {name} (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        print(f"[eval] seed{seed}/{name}: {time.perf_counter() - t:.1f}s", flush=True)
    res = json.loads(path.read_text())
    ref = work / f"seed{seed}" / "eval" / f"{name}.json"
    if ref.is_file():
        r0 = json.loads(ref.read_text())
        for blk in (None, "text", "image"):
            a = (res if blk is None else res[blk])["MRR@10"]
            b = (r0 if blk is None else r0[blk])["MRR@10"]
            if abs(a - b) > 1e-6:
                print(
                    f"[warn] seed{seed}/{name} {blk or 'multi'} MRR@10: re-eval {a:.6f} vs run {b:.6f}",
                    flush=True,
                )
    return res


def _get(r: dict, block: str | None, key: str) -> float:
    return float((r if block is None else r[block])[key])


def fmt(mean: float | None, sd: float | None, scale: float = 100.0, digits: int = 2) -> str:
    if mean is None:
        return "-"
    s = f"{scale * mean:.{digits}f}"
    return s + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")


def fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 1e-3 else "< 0.001"


def verdict(paper_diff: float, diff: float, p: float, directional: bool) -> str:
    """reproduced / direction only / not reproduced, from the sign of the paper's difference
    and ours (points) and our combined p-value. ``directional``: the paper claims a beats (or
    loses to) b, whatever the size; otherwise its claim is "no large change" (< PAPER_NOISE)."""
    if not directional:
        if p >= ALPHA or abs(diff) < PAPER_NOISE:
            return "reproduced (no large change, as in the paper)"
        way = "gain" if diff > 0 else "loss"
        return f"not reproduced: significant {way} of {abs(diff):.1f} points here (paper: under {PAPER_NOISE})"
    if diff * paper_diff <= 0:
        return "not reproduced (opposite direction" + (", significant)" if p < ALPHA else ")")
    if p >= ALPHA:
        return "direction only (not significant)"
    if abs(diff) >= 0.5 * abs(paper_diff):
        return "reproduced"
    return "reproduced in direction (significant, smaller than the paper's)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="run_tables.py --seeds WORK (read only)")
    ap.add_argument("--out", required=True, help="output dir (per-query evals, JSON, markdown)")
    ap.add_argument(
        "--publish",
        help="also copy tables_seeds.md and the figure here (e.g. bench/results), the figure as "
        "tables_seeds_figure4.png",
    )
    ap.add_argument(
        "--figure-seed",
        type=int,
        default=0,
        help="seed whose checkpoints Figure 4 shows (default 0; drawn once all four are done)",
    )
    ap.add_argument("--scale", default="small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument(
        "--no-eval", action="store_true", help="only use per-query evals already in OUT"
    )
    args = ap.parse_args()
    work = Path(args.work).resolve()
    out = Path(args.out).resolve()
    if out == work or work in out.parents:
        raise SystemExit(f"--out {out} is inside --work {work}: the run dir is read only")
    data = work / f"data_{args.scale}"
    seeds = seeds_in(work)
    if not seeds:
        raise SystemExit(f"no seed*/ dirs in {work} (run bench/run_tables.py --seeds first)")
    out.mkdir(parents=True, exist_ok=True)
    names = {(n, c) for _, n, c in TABLE3 + TABLE4}
    results: dict[str, dict[int, dict]] = {n: {} for n, _ in names}
    for seed in seeds:
        for name, captions in sorted(names):
            r = per_query_eval(
                work, out, data, seed, name, captions, args.threads, not args.no_eval
            )
            if r is not None:
                results[name][seed] = r

    def row_stats(name: str) -> dict:
        runs = results[name]
        st = {"seeds": sorted(runs), "n": len(runs)}
        for col, blk, key in METRICS:
            m, s = mean_sd([_get(r, blk, key) for r in runs.values()])
            st[col] = {
                "mean": m,
                "sd": s,
                "values": [_get(runs[k], blk, key) for k in sorted(runs)],
            }
        for col, key, _ in ROUTING:
            vals = [
                r["routing"][key]
                for r in runs.values()
                if r.get("routing", {}).get(key) is not None
            ]
            m, s = mean_sd(vals)
            st[col] = {"mean": m, "sd": s, "values": vals}
        return st

    tables = {
        "table3": {label: {"name": n, **row_stats(n)} for label, n, _ in TABLE3},
        "table4": {label: {"name": n, **row_stats(n)} for label, n, _ in TABLE4},
    }
    comps = []
    for claim, a, b, (pa, pb), settings in COMPARISONS:
        both = sorted(set(results[a]) & set(results[b]))
        entry = {
            "claim": claim,
            "a": a,
            "b": b,
            "paper_multi": [pa, pb],
            "paper_diff": round(pa - pb, 2),
            "seeds": both,
            "tests": {},
        }
        if both:
            for setting in settings:
                blk = (lambda r: r) if setting == "multi" else (lambda r, s=setting: r[s])
                pairs = [
                    (
                        {q: v["MRR@10"] for q, v in blk(results[a][s])["per_query"].items()},
                        {q: v["MRR@10"] for q, v in blk(results[b][s])["per_query"].items()},
                    )
                    for s in both
                ]
                t = paired_test_across_seeds(pairs, n_perm=args.permutations)
                t["per_seed"] = [{"seed": s, **x} for s, x in zip(both, t["per_seed"], strict=True)]
                entry["tests"][setting] = t
            m = entry["tests"]["multi"]
            entry["verdict"] = verdict(
                pa - pb,
                100 * m["diff"],
                m["p_value"],
                directional=not claim.startswith("Verbalized"),
            )
        comps.append(entry)

    any_run = next((r for runs in results.values() for r in runs.values()), {})
    stats = {
        "queries": any_run.get("queries"),
        "text_queries": (any_run.get("text") or {}).get("queries"),
        "work": str(work),
        "seeds_found": seeds,
        "scale": args.scale,
        "tables": tables,
        "comparisons": comps,
        "method": "paired randomization (sign-flip) test on per-query MRR@10, two-sided, "
        f"{args.permutations} flips; combined over seeds by averaging each query's difference over the seeds",
    }
    fig = figure4(work, out, data, args.figure_seed, args.threads)
    stats["figure4"] = (
        None
        if fig is None
        else {"png": str(fig), "seed": args.figure_seed, "panels": [n for n, _ in FIGURE4]}
    )
    (out / "tables_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    md = render_md(stats, args.permutations)
    (out / "tables_seeds.md").write_text(md)
    if args.publish:
        dest = Path(args.publish)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "tables_seeds.md", dest / "tables_seeds.md")
        if fig is not None:
            shutil.copy(fig, dest / "tables_seeds_figure4.png")
            shutil.copy(fig.with_suffix(".json"), dest / "tables_seeds_figure4.json")
    print(md)
    print(f"wrote {out / 'tables_stats.json'} and {out / 'tables_seeds.md'}")
    return 0


def figure4(work: Path, out: Path, data: Path, seed: int, threads: int) -> Path | None:
    """``univl-fast plot embeddings`` for FIGURE4's checkpoints of ``seed`` into
    ``OUT/embeddings.png`` (once; None while a checkpoint is unfinished)."""
    png = out / "embeddings.png"
    if png.is_file():
        return png
    cks = [work / f"seed{seed}" / "checkpoints" / name for name, _ in FIGURE4]
    if not all((c / "DONE").is_file() for c in cks):
        print(
            f"[figure] seed {seed}: not all of {[n for n, _ in FIGURE4]} finished yet", flush=True
        )
        return None
    cmd = [sys.executable, "-m", "univl_fast.cli", "plot", "embeddings", "--data", str(data)]
    for c, (_, label) in zip(cks, FIGURE4, strict=True):
        cmd += ["--checkpoint", str(c), "--label", label]
    cmd += ["--out", str(png), "--seed", "0", "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"plot failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    return png


def render_md(stats: dict, n_perm: int) -> str:
    lines = [
        "# Table 3 / Table 4 shapes with error bars (training seeds)",
        "",
        f"Synthetic benchmark v2, scale {stats['scale']}, data seed 0; training seeds found: "
        f"{', '.join(map(str, stats['seeds_found']))}. Test split ({stats['queries']} queries, "
        f"{stats['text_queries']} of them text-answerable). "
        "Cells: mean ± sample standard deviation over the seeds that finished the row (n); "
        "MRR@10 etc. x 100; a single seed shows its value only.",
        "",
    ]
    heads = [c for c, _, _ in METRICS]
    for key, title in (
        ("table3", "Table 3 shape: hard-negative sampling"),
        ("table4", "Table 4 shape: verbalized captions"),
    ):
        lines += [
            f"## {title}",
            "",
            "| row | n | " + " | ".join(heads) + " |",
            "|---|---|" + "---|" * len(heads),
        ]
        for label, st in stats["tables"][key].items():
            cells = [
                fmt(st[c]["mean"], st[c]["sd"], digits=1 if "share" in c else 2) for c in heads
            ]
            lines.append(f"| {label} | {st['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Paired tests",
        "",
        f"Paired randomization (sign-flip) test on per-query MRR@10, two-sided, {n_perm} random "
        "flips, p = (1 + flips at least as extreme) / (1 + flips). Combined: each test query's "
        "difference (a - b) is averaged over the seeds where both rows finished, then the test "
        "runs over the queries (the query is the unit; seed-to-seed variation of a query's "
        "difference stays in its average). Per seed: the same test on that seed alone. Verdict "
        "(Multi, combined p, alpha 0.05): Table 3 claims are directional (the paper's row a beats "
        "or loses to row b, WebQA Multi MRR@10): 'reproduced' = same direction, significant, at "
        "least half the paper's difference; 'reproduced in direction' = significant but smaller; "
        "'direction only' = same direction, not significant; 'not reproduced' = opposite sign. "
        f"Table 4's claims (verbalization: the paper's changes are all under {PAPER_NOISE} points) "
        f"are 'no large change': reproduced unless the difference is significant and at least "
        f"{PAPER_NOISE} points.",
        "",
        "| claim (a vs b) | setting | seeds | diff a - b (x100) | p combined | per seed: diff (p) | paper diff | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in stats["comparisons"]:
        if not c["tests"]:
            lines.append(
                f"| {c['claim']} | - | 0 | - | - | - | {c['paper_diff']:+.2f} | not yet run |"
            )
            continue
        for setting, t in c["tests"].items():
            per = "; ".join(
                f"s{x['seed']}: {100 * x['diff']:+.2f} ({fmt_p(x['p_value'])})"
                for x in t["per_seed"]
            )
            v = c["verdict"] if setting == "multi" else "-"
            pd = f"{c['paper_diff']:+.2f}" if setting == "multi" else "-"
            lines.append(
                f"| {c['claim']} | {setting} | {t['seeds']} | {100 * t['diff']:+.2f} | {fmt_p(t['p_value'])} | {per} | {pd} | {v} |"
            )
    lines += [
        "",
        "## Routing: where queries land (companion to Figure 4)",
        "",
        f"Per model, over the {stats['queries']} test queries: mean cosine of a query to its nearest text doc and "
        "to its nearest image doc; share of image-answerable queries whose nearest doc (joint "
        "corpus) is an image, and of text-answerable queries whose nearest doc is a text (the "
        "paper's 'queries are routed to the modality of their answer'). Mean ± sd over seeds.",
        "",
        "| row | n | " + " | ".join(c for c, _, _ in ROUTING) + " |",
        "|---|---|" + "---|" * len(ROUTING),
    ]
    seen = set()
    for key in ("table3", "table4"):
        for label, st in stats["tables"][key].items():
            if st["name"] in seen:
                continue
            seen.add(st["name"])
            cells = [
                fmt(st[c]["mean"], st[c]["sd"], scale=100.0 if pct else 1.0, digits=1 if pct else 3)
                for c, _, pct in ROUTING
            ]
            lines.append(f"| {label} | {st['n']} | " + " | ".join(cells) + " |")
    lines.append("")
    fig = stats.get("figure4")
    if fig:
        lines += [
            "## Figure 4: the embedding space",
            "",
            f"`tables_seeds_figure4.png` (in `bench/results/`; `embeddings.png` in the stats dir): "
            f"seed {fig['seed']} checkpoints {', '.join(f'`{n}`' for n in fig['panels'])}; 30 test "
            "queries, 30 text docs, 30 image docs (sampling seed 0, the same items in every panel), "
            "each model's 90 embeddings projected to 2-D with scikit-learn t-SNE (exact, cosine metric, "
            "PCA init, perplexity 29.7, random state 0). Written by `univl-fast plot embeddings`.",
            "",
        ]
    else:
        lines += ["Figure 4: not drawn yet (its seed's four checkpoints are not all finished).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
