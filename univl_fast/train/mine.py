"""``univl-fast mine``: modality-balanced hard negatives from a (stage-1) checkpoint.

Encodes the corpus (text docs + image docs with the chosen captions) and the train / dev
queries, takes each query's exact top-``depth`` (default 100) over texts and images together,
drops its positives, and splits the rest by modality keeping rank order. Writes
``train_all.json`` / ``dev_all.json``: the original records with ``img_negFacts`` /
``txt_negFacts`` replaced by the mined lists and ``all_negFacts`` (all mined, rank order)
added, plus ``mine_config.json`` (checkpoint, captions, depth, counts).

``univl-fast train --stage hardneg`` reads them from ``--mined DIR`` (default: the data dir).
Mining into the data dir is the default here too (``--out`` defaults to ``--data``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from univl_fast.data.layout import DatasetDir, iter_jsonl
from univl_fast.types import IMAGE
from univl_fast.utils.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset dir")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="our checkpoint dir, or a local CLIP weight file (with --model)",
    )
    p.add_argument("--model", help="open_clip model name, when --checkpoint is a raw weight file")
    p.add_argument("--out", help="where to write train_all.json / dev_all.json (default: --data)")
    p.add_argument(
        "--captions",
        default="plain",
        help="image captions for the corpus: plain | query | exp | JSON-lines path",
    )
    p.add_argument("--depth", type=int, default=100, help="top-k retrieved per query (default 100)")
    p.add_argument(
        "--splits", default="train,dev", help="comma-separated splits (default train,dev)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def mine_negatives(
    data_dir: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    model_name: str | None = None,
    captions: str = "plain",
    depth: int = 100,
    splits: tuple[str, ...] = ("train", "dev"),
    batch_size: int = 128,
    progress: bool = True,
    model=None,
) -> Path:
    """Mine hard negatives and write ``<split>_all.json`` into ``out_dir`` (default: the data
    dir); returns ``out_dir``. ``model``: an already loaded UniVLDR (skips loading)."""
    from univl_fast.model import UniVLDR
    from univl_fast.train.encode import encode_corpus, encode_queries, search_run

    ds = DatasetDir(data_dir)
    out = Path(out_dir) if out_dir else ds.path
    if model is None:
        model = UniVLDR.from_pretrained(checkpoint, model_name)
    t0 = time.perf_counter()
    corpus = encode_corpus(model, ds, captions, batch_size=batch_size, progress=progress)
    log.info("mine: %s", corpus.summary())
    modality = corpus.modality_of
    stats: dict[str, dict] = {}
    for split in splits:
        src = ds.queries_file(split)
        if not src.is_file():
            log.warning("mine: %s not found; skipping split %s", src, split)
            continue
        queries = ds.queries(split)
        qv = encode_queries(model, queries, batch_size=batch_size, progress=progress)
        run = search_run(corpus, [q.qid for q in queries], qv, k=depth)
        mined = {}
        n_img = n_txt = n_nopos = 0
        for q in queries:
            pos = set(q.img_pos) | set(q.txt_pos)
            ranked = sorted(run.get(q.qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            negs = [d for d, _ in ranked if d not in pos]
            img = [d for d in negs if modality[d] == IMAGE]
            txt = [d for d in negs if modality[d] != IMAGE]
            mined[q.qid] = (img, txt, negs)
            n_img += len(img)
            n_txt += len(txt)
            n_nopos += not pos
        # rewrite the original records (all their fields kept), replacing the negatives
        dst = out / f"{split}_all.json"
        with atomic_open(dst, "w") as fh:
            for _lineno, obj in iter_jsonl(src):
                img, txt, negs = mined[str(obj["qid"])]
                obj["img_negFacts"] = img
                obj["txt_negFacts"] = txt
                obj["all_negFacts"] = negs
                fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        stats[split] = {
            "queries": len(queries),
            "mean_image_negatives": n_img / max(1, len(queries)),
            "mean_text_negatives": n_txt / max(1, len(queries)),
            "queries_without_positives": n_nopos,
        }
        log.info(
            "mine: wrote %s (%d queries, mean %.1f image + %.1f text negatives)",
            dst,
            len(queries),
            n_img / max(1, len(queries)),
            n_txt / max(1, len(queries)),
        )
    atomic_write_json(
        out / "mine_config.json",
        {
            "data": str(ds.path),
            "checkpoint": str(checkpoint),
            "model_name": model.config.model_name,
            "captions": captions,
            "depth": depth,
            "corpus": {
                "docs": len(corpus.ids),
                "undecodable_images_skipped": corpus.skipped_images.skipped_count,
                "empty_captions": corpus.empty_captions,
                "images_without_caption": corpus.missing_captions,
            },
            "splits": stats,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    return out


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    mine_negatives(
        args.data,
        args.checkpoint,
        args.out,
        args.model,
        args.captions,
        args.depth,
        splits,
        args.batch_size,
        progress=not args.quiet,
    )
    return 0
