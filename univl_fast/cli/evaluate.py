"""``univl-fast eval``: the paper's metrics for a PyTorch checkpoint (exact search) or for an
exported engine with its index. Both paths print and write the same JSON keys."""

from __future__ import annotations

import argparse
import sys
import time

from univl_fast.cli.engine_args import add_engine_arguments, load_engine
from univl_fast.data import DatasetDir
from univl_fast.evaluation.embeddings import format_result
from univl_fast.evaluation.engine import evaluate_engine
from univl_fast.utils.io import atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument(
        "--checkpoint", help="our checkpoint dir, or a local CLIP weight file (with --model)"
    )
    src.add_argument(
        "--model", help="open_clip model name, when --checkpoint is a raw CLIP weight file"
    )
    add_engine_arguments(src, required=False)
    p.add_argument("--data", required=True, help="dataset dir")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument(
        "--captions",
        default="plain",
        help="image captions: plain | query | exp (verbalized) | a JSON-lines path",
    )
    p.add_argument(
        "--by-modality",
        action="store_true",
        help="also report the paper's Text / Image / Multi settings",
    )
    p.add_argument(
        "--per-query",
        action="store_true",
        help="also write each query's metric values (per setting with --by-modality) and, "
        "for a checkpoint, the modality routing of each query (nearest text vs image cosine)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch threads (checkpoint path)")
    p.add_argument("--json", help="write the metrics as JSON here")


def run(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.engine):
        raise SystemExit("univl-fast eval: give exactly one of --checkpoint or --engine")
    if args.engine:
        if not args.index:
            raise SystemExit("univl-fast eval: --engine needs --index")
        return run_engine_eval(args)
    from univl_fast.train.evaluate import run_checkpoint_eval  # torch: only for --checkpoint

    return run_checkpoint_eval(args)


def run_engine_eval(args: argparse.Namespace) -> int:
    """``univl-fast eval --engine E --index I --data D`` (torch-free)."""
    t0 = time.perf_counter()
    engine = load_engine(args, "eval", batching=False)
    if engine is None:
        return 1
    with engine:
        ds = DatasetDir(args.data)
        metrics = evaluate_engine(
            engine,
            ds.queries(args.split),
            ds.qrels(args.split),
            by_modality=args.by_modality,
            batch_size=args.batch_size,
            per_query=getattr(args, "per_query", False),
        )
    print(format_result(metrics, label=str(args.engine)))
    print(
        f"[eval] engine={args.engine} index={args.index} split={args.split} "
        f"({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
    )
    if args.json:
        atomic_write_json(args.json, metrics)
        print(f"[eval] wrote {args.json}", file=sys.stderr)
    return 0
