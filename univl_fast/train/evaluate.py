"""``univl-fast eval --checkpoint``: the paper's metrics for a PyTorch checkpoint, by exact
search over the whole corpus (texts and images together; ``--by-modality`` adds the paper's
Text / Image / Multi settings). Same JSON keys as the engine path (design.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from univl_fast.data.layout import DatasetDir
from univl_fast.evaluation.embeddings import format_result
from univl_fast.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    model,
    dataset_dir: str | Path,
    split: str = "test",
    captions: str = "plain",
    by_modality: bool = False,
    model_name: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    k: int = 100,
    per_query: bool = False,
) -> dict:
    """Metrics of ``model`` (a UniVLDR, or a checkpoint path) on ``split``: the design.md keys
    (fractions) plus ``text`` / ``image`` / ``multi`` blocks with ``by_modality``, and an
    ``inputs`` block counting skipped images and empty captions. ``per_query``: per-query
    values and the ``routing`` block (``evaluation.evaluate_embeddings``)."""
    from univl_fast.evaluation.embeddings import evaluate_embeddings
    from univl_fast.model import UniVLDR
    from univl_fast.train.encode import encode_corpus, encode_queries

    if not isinstance(model, UniVLDR):
        model = UniVLDR.from_pretrained(model, model_name)
    ds = DatasetDir(dataset_dir)
    qrels = ds.qrels(split)
    queries = [q for q in ds.queries(split) if q.qid in qrels]
    missing = len(qrels) - len(queries)
    if missing:
        log.info("%d qrels queries have no entry in %s.json (they score 0)", missing, split)
    corpus = encode_corpus(model, ds, captions, batch_size=batch_size, progress=progress)
    qv = encode_queries(model, queries, batch_size=batch_size, progress=progress)
    result = evaluate_embeddings(
        qv,
        [q.qid for q in queries],
        corpus.vectors,
        corpus.ids,
        corpus.modalities,
        qrels,
        k=k,
        by_modality=by_modality,
        per_query=per_query,
    )
    result["inputs"] = {
        "docs": len(corpus.ids),
        "undecodable_images_skipped": corpus.skipped_images.skipped_count,
        "empty_captions": corpus.empty_captions,
        "images_without_caption": corpus.missing_captions,
        "split": split,
        "captions": captions,
    }
    if corpus.skipped_images.skipped:
        log.warning("%s", corpus.skipped_images.summary(3))
    return result


def run_checkpoint_eval(args: argparse.Namespace) -> int:
    """Called by ``univl_fast.cli.evaluate`` for ``univl-fast eval --checkpoint``."""
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        split=args.split,
        captions=args.captions,
        by_modality=args.by_modality,
        model_name=args.model,
        batch_size=args.batch_size,
        per_query=getattr(args, "per_query", False),
    )
    print(format_result(result, Path(args.checkpoint).name or str(args.checkpoint)))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


__all__ = ["evaluate_checkpoint", "run_checkpoint_eval"]
