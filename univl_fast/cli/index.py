"""``univl-fast index``: encode a dataset's corpus with an engine, build and tune an index
(one, or N shards of one; encoded and filled on Ray with --ray)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from univl_fast.data import DatasetDir
from univl_fast.index.build import build_index
from univl_fast.index.corpus import encode_corpus, encode_tune_queries
from univl_fast.index.params import RecallTargetUnreachable
from univl_fast.index.select import parse_size
from univl_fast.index.sharded_build import merge_sharded
from univl_fast.index.store import MANIFEST_FILE, save_index
from univl_fast.runtime import Encoder
from univl_fast.scale.ray_build import make_fill_ray
from univl_fast.scale.ray_encode import encode_corpus_ray
from univl_fast.scale.ray_runtime import init_ray
from univl_fast.utils.io import atomic_write_json


def memory_size(text: str) -> int:
    """argparse type for --max-memory: '4GB' -> bytes, a clear error otherwise."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", required=True, help="engine dir (python -m univl_fast.export)")
    parser.add_argument("--data", required=True, help="dataset dir (UniVL-DR layout)")
    parser.add_argument("--out", required=True, help="index dir to write")
    parser.add_argument(
        "--factory",
        default=None,
        help="faiss factory string, built as given (default: the fastest candidate meeting "
        "--target-recall within --max-memory; exact Flat below 100k vectors)",
    )
    parser.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="tune to this recall@k against exact search (default 0.95; a margin is added on "
        "the tune split, held-out recall is reported)",
    )
    parser.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        metavar="SIZE",
        help="memory budget of the index: codes + re-ranking store + coarse structures, "
        "e.g. 4GB, 512MiB (default: no limit)",
    )
    parser.add_argument(
        "--allow-below-target",
        action="store_true",
        help="when nothing within --max-memory reaches --target-recall, keep the best one "
        "(logged as a warning) instead of failing",
    )
    parser.add_argument("-k", type=int, default=10, help="k of the tuning recall@k (default 10)")
    parser.add_argument(
        "--captions",
        default="plain",
        help="image captions: plain | query | exp | a JSON-lines file",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=4096,
        help="documents per resumable work shard (default 4096)",
    )
    parser.add_argument("--precision", default=None, help="fp32 | fp16 | int8 (default: fastest)")
    for tower in ("text", "image"):
        parser.add_argument(
            f"--{tower}-runtime",
            choices=("auto", "native", "onnxruntime"),
            default="auto",
            help=f"who runs the int8 {tower} tower: our native one, ONNX Runtime's graph, or "
            "auto (native where its parity passed and it is fast here; the line after "
            "encoding says which ran)",
        )
    parser.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode JPEG images at a reduced DCT scale (faster; pixels are not exactly those of "
        "a full decode: RESULTS.md has its measured effect on retrieval)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep OUT/.work (encoded shards) after a successful build",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    scale = parser.add_argument_group("scale-out (docs/scale-out.md)")
    scale.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="encode and fill the index on Ray: 'local' (the default when given alone) starts "
        "one here, 'auto' joins this machine's cluster, or a cluster address",
    )
    scale.add_argument("--actors", type=int, default=2, help="Ray encoder actors (default 2)")
    scale.add_argument(
        "--cpus-per-actor",
        type=int,
        default=1,
        help="Ray CPUs per encoder actor = its encoder threads (default 1)",
    )
    scale.add_argument(
        "--shards",
        type=int,
        default=1,
        help="write a sharded index of N shards (default 1: one index; with --ray the shards "
        "are filled on the cluster, one per actor, and merged)",
    )


def unreachable_report(exc) -> str:
    """What ``univl-fast index`` prints when no index reaches the target
    (``RecallTargetUnreachable``): the reason, the frontier it measured (one line per
    candidate: recall, recall with every list probed, q/s, bytes, estimated build time), the
    corpus's difficulty per family, and how to go on."""
    lines = [f"univl-fast index: {exc}", "measured frontier (selection sample):"]
    head = f"  {'factory':<46} {'recall':>7} {'ceiling':>7} {'q/s':>8} {'bytes':>14} {'build s':>8}"
    lines.append(head)
    for r in exc.frontier:
        ceiling = r.get("ceiling_recall_at_k")
        note = r.get("abandoned") or ("reference only (exact)" if r.get("reference_only") else "")
        lines.append(
            f"  {r['factory']:<46} {r['recall_at_k']:>7.4f} "
            f"{'-' if ceiling is None else f'{ceiling:.4f}':>7} {r['single_query_qps']:>8.0f} "
            f"{r['bytes']:>14,} {r.get('estimated_build_s', 0):>8.0f}  "
            f"{'ok' if r['target_met'] else 'low'} {note}".rstrip()
        )
    if exc.difficulty:
        lines.append(
            "corpus difficulty (recall@k with every list probed, per family): "
            + ", ".join(f"{fam} {v:.3f}" for fam, v in exc.difficulty.items())
        )
    lines.append(
        "to go on: raise --max-memory to the cheapest configuration above, lower "
        "--target-recall, pass --allow-below-target (best approximate index, warned), or "
        "--factory Flat (exact search)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.quiet
    out = Path(args.out)
    t0 = time.perf_counter()
    encoder = Encoder(
        args.engine,
        precision=args.precision,
        batch_size=args.batch_size,
        text_runtime=args.text_runtime,
        image_runtime=args.image_runtime,
        jpeg_draft=args.jpeg_draft,
    )
    dataset = DatasetDir(args.data)
    print(
        f"engine {args.engine} ({encoder.precision}, {encoder.backend}), data {args.data}",
        file=sys.stderr,
    )
    encode_args = {
        "captions": args.captions,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "progress": progress,
    }
    t_encode = time.perf_counter()
    if args.ray is not None:
        init_ray(args.ray)
        corpus = encode_corpus_ray(
            encoder,
            dataset,
            out / ".work",
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            **encode_args,
        )
    else:
        corpus = encode_corpus(encoder, dataset, out / ".work", **encode_args)
    rep = corpus.report
    print(rep.summary(), file=sys.stderr)
    print(
        f"corpus encoding: {time.perf_counter() - t_encode:.1f}s (text tower "
        f"{encoder.text_runtime}, image tower {encoder.image_runtime})",
        file=sys.stderr,
    )
    for doc_id, reason in rep.bad[:20]:
        print(f"  bad document {doc_id}: {reason}", file=sys.stderr)
    if len(rep.bad) > 20:
        print(f"  ... and {len(rep.bad) - 20} more", file=sys.stderr)
    if corpus.vectors.shape[0] == 0:
        print(f"univl-fast index: no document of {args.data} could be encoded", file=sys.stderr)
        return 1
    tune_q = encode_tune_queries(encoder, dataset, seed=args.seed)
    if tune_q is None:
        print(
            "no dev/train queries: tuning on fallback queries (corpus rows mixed with other rows + noise, index/tune.py)",
            file=sys.stderr,
        )
    build_args = {
        "factory": args.factory,
        "target_recall": args.target_recall,
        "max_memory": args.max_memory,
        "allow_below_target": args.allow_below_target,
        "tune_queries": tune_q,
        "k": args.k,
        "encoder": encoder,
        "seed": args.seed,
        "progress": progress,
    }
    corpus_info = {
        "dataset": str(Path(args.data).resolve()),
        "captions": args.captions,
        "precision": encoder.precision,
        "backend": encoder.backend,
        "bad_documents": len(rep.bad),
        "bad_examples": [list(b) for b in rep.bad[:100]],
        "counts": rep.counts,
        "tune_queries": "dev+train queries" if tune_q is not None else "fallback (index/tune.py)",
    }
    try:
        if args.ray is not None or args.shards > 1:
            index = build_scaled(args, corpus, build_args, corpus_info, out)
        else:
            index = build_index(
                corpus.vectors, corpus.doc_ids, corpus.modalities, device="cpu", **build_args
            )
            index.manifest["corpus"] = corpus_info
            save_index(index, out)
    except RecallTargetUnreachable as exc:
        print(unreachable_report(exc), file=sys.stderr)
        return 3
    if not args.keep_work:
        shutil.rmtree(out / ".work", ignore_errors=True)
    t = index.manifest["tuning"]
    chosen = index.manifest.get("selection", {}).get("chosen")
    if chosen:
        print(
            f"chosen point on the frontier: {chosen['factory']} {chosen['search_params']}: "
            f"recall@{t['k']} {chosen['recall_at_k']:.4f} (held-out "
            f"{chosen['held_out_recall_at_k']}), {chosen['single_query_qps']:.0f} q/s single, "
            f"{chosen['batch64_qps']:.0f} q/s batch-64, {chosen['bytes']:,} bytes; "
            f"{index.manifest['selection']['why']}",
            file=sys.stderr,
        )
    print(
        f"wrote {out}: {index.ntotal} vectors, {index.manifest['factory']}, params "
        f"{index.manifest['search_params']}, recall@{t['k']} {t['recall_at_k']:.4f} vs exact, "
        f"{time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0


def build_scaled(
    args: argparse.Namespace,
    corpus: Any,
    build_args: dict[str, Any],
    corpus_info: dict[str, Any],
    out: Path,
) -> Any:
    """Choose and train once, fill shards in parallel (Ray tasks with --ray, threads without),
    tune once (``build_index(shards=N)``); write ``out`` as a sharded index (--shards N > 1)
    or merge the shards into one index (--ray with --shards 1: one shard per actor)."""
    if args.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {args.shards}")
    fill = make_fill_ray(args.cpus_per_actor) if args.ray is not None else None
    merge = args.shards == 1
    shards = min(args.actors if merge else args.shards, len(corpus.doc_ids))
    target = out / ".shards" if merge else out
    sharded = build_index(
        corpus.vectors,
        corpus.doc_ids,
        corpus.modalities,
        shards=shards,
        out_dir=target,
        fill=fill,
        device="cpu",
        **build_args,
    )
    sharded.manifest["corpus"] = corpus_info
    if not merge:
        atomic_write_json(out / MANIFEST_FILE, sharded.manifest)
        return sharded
    index = merge_sharded(sharded, out)
    shutil.rmtree(target, ignore_errors=True)
    return index
