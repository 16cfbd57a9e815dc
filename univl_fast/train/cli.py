"""``univl-fast train``: one UniVL-DR training stage.

Stage 1 (CLIP-DPR)::

    univl-fast train --data DIR --out ck/stage1 --stage inbatch [--model univl-tiny | --init CKPT]

Stage 2 (UniVL-DR), after ``univl-fast mine --data DIR --checkpoint ck/stage1``::

    univl-fast train --data DIR --out ck/stage2 --stage hardneg --init ck/stage1 \\
        [--negatives balanced|texts|images|random] [--k 1] [--inbatch] [--captions exp]

Unset options take the reference values (ViT-B-32 fine-tuning) or, for ``univl-tiny``, the
from-scratch defaults in ``univl_fast.train.config.TINY_OVERRIDES``.
"""

from __future__ import annotations

import argparse
import json
import sys

from univl_fast.train.config import NEGATIVE_MODES, STAGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset dir")
    p.add_argument("--out", required=True, help="checkpoint dir to write (best by dev MRR@10)")
    p.add_argument("--stage", choices=STAGES, default="inbatch")
    p.add_argument(
        "--init",
        help="start from this checkpoint (our dir, or a CLIP weight file "
        "with --model); required for --stage hardneg",
    )
    p.add_argument(
        "--model",
        help="open_clip model name / JSON config for random init "
        "(default univl-tiny), or the name for a raw --init weight file",
    )
    p.add_argument("--captions", help="plain | query | exp | JSON-lines path (default plain)")
    p.add_argument(
        "--mined",
        dest="mined_dir",
        help="dir with train_all.json / dev_all.json from `univl-fast mine` (default: --data)",
    )
    neg = p.add_argument_group("stage 2 negatives")
    neg.add_argument(
        "--negatives",
        choices=NEGATIVE_MODES,
        help="balanced: k image + k text (default); texts / images: 2k of one "
        "modality; random: 2k from the mined top-100 regardless of modality",
    )
    neg.add_argument("--k", type=int, help="hard negatives per modality (default 1)")
    neg.add_argument(
        "--inbatch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also use the batch's other candidates as negatives (default: no)",
    )
    neg.add_argument("--neg-depth", type=int, help="sample among the top N mined (default 100)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--warmup-steps", type=int)
    opt.add_argument("--schedule", choices=["cosine", "constant"])
    opt.add_argument("--batch-size", type=int)
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--max-steps", type=int)
    opt.add_argument("--grad-clip", type=float)
    opt.add_argument(
        "--amp-bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="autocast to bfloat16 on CPU (weights stay float32)",
    )
    ev = p.add_argument_group("dev checks and checkpoints")
    ev.add_argument("--eval-every", type=int, help="dev MRR@10 every N steps")
    ev.add_argument("--patience", type=int, help="early stop after N checks without gain")
    ev.add_argument("--dev-max-queries", type=int)
    ev.add_argument("--save-every", type=int, help="training state for --resume every N steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/train_state.pt after an interruption",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--threads",
        dest="torch_threads",
        type=int,
        help="torch CPU threads (default: torch's choice)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


OPTION_KEYS = (
    "captions",
    "mined_dir",
    "negatives",
    "k",
    "inbatch",
    "neg_depth",
    "lr",
    "weight_decay",
    "warmup_steps",
    "schedule",
    "batch_size",
    "epochs",
    "max_steps",
    "grad_clip",
    "amp_bf16",
    "eval_every",
    "patience",
    "dev_max_queries",
    "save_every",
    "seed",
    "torch_threads",
)


def run(args: argparse.Namespace) -> int:
    from univl_fast.train.loop import train_stage

    if args.stage == "hardneg" and not args.init:
        print("univl-fast train: --stage hardneg needs --init STAGE1_CHECKPOINT", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in OPTION_KEYS if getattr(args, k) is not None}
    out = train_stage(
        args.data,
        args.out,
        stage=args.stage,
        init=args.init,
        model_name=args.model,
        resume=args.resume,
        progress=not args.quiet,
        **overrides,
    )
    try:
        with open(out / "metrics.json", encoding="utf-8") as fh:
            m = json.load(fh)
        if m.get("MRR@10") is not None:
            print(f"best checkpoint: {out} (dev MRR@10 {100 * m['MRR@10']:.2f}, step {m['step']})")
        else:
            print(f"checkpoint: {out}")
    except FileNotFoundError:
        print(f"checkpoint: {out}")
    return 0
