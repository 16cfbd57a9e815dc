"""Reproduce the shape of the paper's Table 3 (negative sampling) and Table 4 (verbalized
captions) on the built-in synthetic benchmark, with the ``univl-fast`` commands.

    .venv/bin/python bench/run_tables.py --work /tmp/univl_tables [--scale small] [--threads 1] \
        [--seeds 0,1,2]

With ``--seeds`` every training command gets ``--seed S`` and each seed's checkpoints, mined
negatives and evaluations live in ``WORK/seed{S}/``; the data (``WORK/data_{scale}``, data seed
0) is shared. Without it the layout is the single-seed one of earlier runs (``WORK/``, torch's
default seed). Two processes may share ``WORK`` (e.g. ``--only table3`` and ``--only table4``):
each row is guarded by a file lock, so a row one process is running is waited for, then skipped.

Runs, sequentially (CPU-heavy; re-running skips finished rows, interrupted training resumes):

1. ``univl-fast synth`` (scale, seed 0), then stage 1 ``train --stage inbatch`` (CLIP-DPR);
2. ``univl-fast mine`` with the stage-1 checkpoint (once per caption file);
3. Table 3: stage 2 ``train --stage hardneg`` with negatives texts / images / balanced / random,
   each without and with in-batch negatives (plain captions);
4. Table 4: stage 2 balanced + in-batch with captions plain / query / exp (the verbalized
   files), mined and evaluated with the same captions;
5. ``univl-fast eval --by-modality`` on the test split for every checkpoint.

Writes ``WORK/tables.md`` (markdown tables with the exact command of each row),
``WORK/results.json`` and ``WORK/timings.json`` (wall seconds per command; stage 1 + mining +
stage 2 is the demo's flow).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def eval_args(ckpt: Path, data: Path, captions: str, out: Path, *extra: str) -> list[str]:
    """``univl-fast eval`` arguments of one table row: the test split, by modality, as JSON
    (shared with bench/tables_stats.py, which adds ``--per-query``)."""
    return [
        "eval",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(data),
        "--split",
        "test",
        "--by-modality",
        "--captions",
        captions,
        *extra,
        "--json",
        str(out),
    ]


def sh(cmd: list[str], log: Path) -> float:
    """Run ``univl-fast <cmd>`` (as python -m univl_fast.cli), logging to ``log``; seconds."""
    full = [sys.executable, "-m", "univl_fast.cli", *cmd]
    print("$ univl-fast " + shlex.join(cmd), flush=True)
    t = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ univl-fast " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(full, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    dt = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"command failed (rc {rc}), see {log}: univl-fast {shlex.join(cmd)}")
    return dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="working dir (data, checkpoints, results)")
    p.add_argument("--scale", default="small")
    p.add_argument("--threads", type=int, default=1, help="torch threads per command")
    p.add_argument("--stage2-epochs", type=int, help="override stage-2 epochs")
    p.add_argument("--only", choices=["table3", "table4"], help="run one table only")
    p.add_argument(
        "--seeds",
        help="comma-separated training seeds, each in WORK/seed{S}/ (default: one run in WORK, "
        "no explicit seed)",
    )
    args = p.parse_args()
    root = Path(args.work).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not args.seeds:
        return run_one(args, root, root, None)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    if not seeds:
        raise SystemExit("--seeds: no seed given")
    for seed in seeds:
        run_one(args, root / f"seed{seed}", root, seed)
    return 0


def run_one(args: argparse.Namespace, work: Path, root: Path, seed: int | None) -> int:
    """Every row of both tables in ``work`` (data under ``root``), training seed ``seed``."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    data = root / f"data_{args.scale}"
    locks = root / "locks"
    locks.mkdir(exist_ok=True)
    seed_args = [] if seed is None else ["--seed", str(seed)]
    ck = work / "checkpoints"
    res_dir = work / "eval"
    res_dir.mkdir(exist_ok=True)
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    commands: dict[str, list[str]] = {}
    thr = ["--threads", str(args.threads)]

    def timed(name: str, cmd: list[str], done: Path, touch: bool = False) -> None:
        """Run cmd unless ``done`` exists; ``touch``: create ``done`` after success."""
        commands[name] = cmd
        lock_name = name if name == "synth" else f"{work.name}_{name}"
        with open(locks / f"{lock_name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be running this row
            if done.exists():
                print(f"[skip] {name}: {done} exists", flush=True)
                return
            timings[name] = round(sh(cmd, log), 1)
            # merge with what other run_tables processes on the same WORK wrote meanwhile
            if timings_path.is_file():
                timings.update({**json.loads(timings_path.read_text()), name: timings[name]})
            tmp = timings_path.with_name(f"{timings_path.name}.{lock_name}.tmp")
            tmp.write_text(json.dumps(timings, indent=2) + "\n")
            tmp.replace(timings_path)
            if touch:
                done.touch()

    timed(
        "synth",
        ["synth", "--out", str(data), "--scale", args.scale, "--seed", "0"],
        data / "synth_config.json",
    )

    def stage1(captions: str) -> Path:
        """Stage 1 (in-batch, CLIP-DPR) with these captions; plain is the Table 3 start."""
        suffix = "" if captions == "plain" else f"_{captions}"
        out = ck / f"stage1_inbatch{suffix}"
        cmd = ["train", "--data", str(data), "--out", str(out), "--stage", "inbatch"]
        if captions != "plain":
            cmd += ["--captions", captions]
        timed(
            f"stage1{suffix}",
            [*cmd, "--resume", "--quiet", *seed_args, *thr],
            out / "DONE",
            touch=True,
        )
        return out

    s1 = ck / "stage1_inbatch"  # the plain stage 1, trained by whichever table needs it first

    def mined_dir(captions: str, init: Path) -> Path:
        """Mine with ``init`` over the corpus with these captions (one dir per pair)."""
        key = captions if init == s1 else f"{captions}_{init.name}"
        out = work / f"mined_{key}"
        out.mkdir(exist_ok=True)
        cmd = [
            "mine",
            "--data",
            str(data),
            "--checkpoint",
            str(init),
            "--out",
            str(out),
            "--captions",
            captions,
            "--quiet",
            *thr,
        ]
        timed(f"mine_{key}", cmd, out / "mine_config.json")
        return out

    def stage2(name: str, negatives: str, inbatch: bool, captions: str, init: Path = s1) -> Path:
        out = ck / name
        mined = mined_dir(captions, init)
        cmd = [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--stage",
            "hardneg",
            "--init",
            str(init),
            "--mined",
            str(mined),
            "--negatives",
            negatives,
            "--inbatch" if inbatch else "--no-inbatch",
            "--captions",
            captions,
            "--resume",
            "--quiet",
            *seed_args,
            *thr,
        ]
        if args.stage2_epochs:
            cmd += ["--epochs", str(args.stage2_epochs)]
        timed(name, cmd, out / "DONE", touch=True)
        return out

    def evaluate(name: str, ckpt: Path, captions: str) -> dict:
        out = res_dir / f"{name}.json"
        timed(f"eval_{name}", eval_args(ckpt, data, captions, out), out)
        return json.loads(out.read_text())

    rows3: dict[str, tuple[str, dict, list[list[str]]]] = {}
    rows4: dict[str, tuple[str, dict, list[list[str]]]] = {}
    if args.only in (None, "table3"):
        stage1("plain")
        r = evaluate("stage1_inbatch", s1, "plain")
        rows3["In-batch (CLIP-DPR, stage 1)"] = (
            "stage1",
            r,
            [commands["stage1"], commands["eval_stage1_inbatch"]],
        )
        for negatives, label in (
            ("texts", "Hard negatives: only texts (2)"),
            ("images", "Hard negatives: only images (2)"),
            ("balanced", "Hard negatives: balanced 1 image + 1 text"),
            ("random", "Hard negatives: random from top-100 (2)"),
        ):
            for inbatch in (False, True):
                name = f"stage2_{negatives}_{'inb' if inbatch else 'noinb'}_plain"
                out = stage2(name, negatives, inbatch, "plain")
                r = evaluate(name, out, "plain")
                lab = label + (" + in-batch" if inbatch else "")
                rows3[lab] = (name, r, [commands[name], commands[f"eval_{name}"]])

    if args.only in (None, "table4"):
        # the paper's Table 4: both stages with the same caption file (plain / verbalized
        # queries / verbalized captions), mined and evaluated with it too
        labels4 = {
            "plain": "plain captions",
            "query": "verbalized queries",
            "exp": "verbalized captions",
        }
        # plain last: its rows are Table 3's stage 1 and balanced + in-batch, which a parallel
        # --only table3 process is likely running first
        done4: dict[str, tuple] = {}
        for captions in ("query", "exp", "plain"):
            label = labels4[captions]
            init = stage1(captions)
            s1_name = init.name
            r1 = evaluate(s1_name, init, captions)
            name = f"stage2_balanced_inb_{captions}"
            if captions != "plain":
                name = f"t4_{name}"
            out = stage2(name, "balanced", True, captions, init=init)
            r2 = evaluate(name, out, captions)
            key = captions if init == s1 else f"{captions}_{init.name}"
            done4[f"In-batch (stage 1), {label}"] = (
                s1_name,
                r1,
                [
                    commands["stage1" if captions == "plain" else f"stage1_{captions}"],
                    commands[f"eval_{s1_name}"],
                ],
            )
            done4[f"Balanced + in-batch (stage 2), {label}"] = (
                name,
                r2,
                [commands[f"mine_{key}"], commands[name], commands[f"eval_{name}"]],
            )
        for captions in ("plain", "query", "exp"):  # the paper's row order
            for kind in ("In-batch (stage 1)", "Balanced + in-batch (stage 2)"):
                k4 = f"{kind}, {labels4[captions]}"
                rows4[k4] = done4[k4]

    def table(rows) -> str:
        lines = [
            "| row | Text MRR@10 | Image MRR@10 | Multi MRR@10 | Multi NDCG@10 | "
            "Multi R@20 | image share @10 (%) |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, (_, r, _) in rows.items():
            lines.append(
                f"| {label} | {100 * r['text']['MRR@10']:.2f} | {100 * r['image']['MRR@10']:.2f} | "
                f"{100 * r['MRR@10']:.2f} | {100 * r['NDCG@10']:.2f} | {100 * r['Recall@20']:.2f} | "
                f"{100 * r['image_share@10']:.1f} |"
            )
        lines.append("")
        lines.append("Commands (in order, per row):")
        lines.append("")
        for label, (_, _, cmds) in rows.items():
            lines.append(f"- {label}:")
            for c in cmds:
                lines.append(f"  - `univl-fast {shlex.join(c)}`")
        return "\n".join(lines)

    seed_text = "torch default training seed" if seed is None else f"training seed {seed}"
    md = [f"# Tables on the synthetic benchmark (scale {args.scale}, data seed 0, {seed_text})", ""]
    if rows3:
        md += ["## Table 3 shape: negative sampling", "", table(rows3), ""]
    if rows4:
        md += ["## Table 4 shape: verbalized captions", "", table(rows4), ""]
    (work / "tables.md").write_text("\n".join(md) + "\n")
    (work / "results.json").write_text(
        json.dumps(
            {
                "table3": {k: v[1] for k, v in rows3.items()},
                "table4": {k: v[1] for k, v in rows4.items()},
                "timings_s": timings,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(md))
    print(f"\nwrote {work / 'tables.md'}; timings: {json.dumps(timings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
