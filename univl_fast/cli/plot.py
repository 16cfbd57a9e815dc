"""``univl-fast plot embeddings``: the paper's Figure 4 (t-SNE of 30 queries, 30 text docs and
30 image docs per model, one panel per checkpoint). Needs the ``[report]`` extra."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="plot", metavar="PLOT", required=True)
    e = sub.add_parser(
        "embeddings",
        help="Figure 4: t-SNE of queries, text docs and image docs, one panel per checkpoint",
    )
    e.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="checkpoint dir (repeat: one panel each, in order)",
    )
    e.add_argument(
        "--label",
        action="append",
        help="panel title per --checkpoint (default: the training strategy from its config)",
    )
    e.add_argument("--data", required=True, help="dataset dir (test split queries, corpus)")
    e.add_argument("--out", required=True, help="PNG to write (and a .json with the points)")
    e.add_argument("--n", type=int, default=30, help="items per kind (default 30, the paper's)")
    e.add_argument("--seed", type=int, default=0, help="sampling and t-SNE seed")
    e.add_argument("--threads", type=int, help="torch threads")


def run(args: argparse.Namespace) -> int:
    from univl_fast.reports.embedding_plot import plot_embeddings  # torch + [report] extra

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    meta = plot_embeddings(
        args.checkpoint, args.data, args.out, labels=args.label, n=args.n, seed=args.seed
    )
    titles = ", ".join(p["title"] for p in meta["panels"])
    print(f"wrote {meta['figure']} ({titles})", file=sys.stderr)
    return 0
