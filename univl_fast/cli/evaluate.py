"""``univl-fast eval``: the paper's metrics for a PyTorch checkpoint (exact search) or for an
exported engine with its index. Both paths print and write the same JSON keys."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument(
        "--checkpoint", help="our checkpoint dir, or a local CLIP weight file (with --model)"
    )
    src.add_argument(
        "--model", help="open_clip model name, when --checkpoint is a raw CLIP weight file"
    )
    src.add_argument("--engine", help="exported engine dir (with --index)")
    src.add_argument("--index", help="index dir built from --engine")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="engine precision")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="engine backend")
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
        from univl_fast.engine_eval import run_engine_eval

        return run_engine_eval(args)
    from univl_fast.train.evaluate import run_checkpoint_eval

    return run_checkpoint_eval(args)
