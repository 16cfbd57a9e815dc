"""``univl-fast search``: ranked documents for one or more queries, through an engine and index.

    univl-fast search --engine ENGINE --index INDEX -k 10 "query" ["query" ...]

Prints, per query, the ranked doc ids with modality and cosine score; with ``--data`` the doc's
text (text docs) or caption (image docs) too; with ``--json`` one JSON object on stdout instead.
Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from univl_fast.cli.engine_args import add_engine_arguments, load_engine
from univl_fast.data import DatasetDir
from univl_fast.types import Hit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "queries",
        nargs="*",
        metavar="QUERY",
        help="query texts (read one per line from stdin when none are given)",
    )
    add_engine_arguments(p)
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument(
        "--modality",
        choices=["text", "image"],
        help="search only text docs or only image docs (default: both)",
    )
    p.add_argument("--data", help="dataset dir: also print each doc's text / caption")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _doc_texts(data_dir: str) -> dict[str, str]:
    """doc_id -> text (text docs) or caption (image docs), from a dataset dir."""
    ds = DatasetDir(data_dir)
    texts = {d.doc_id: d.text for d in ds.text_docs()}
    texts.update({d.doc_id: d.caption for d in ds.image_docs()})
    return texts


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_hits(query: str, hits: list[Hit], doc_texts: dict[str, str] | None = None) -> str:
    """Human-readable block for one query's hits."""
    lines = [f"query: {query}"]
    if not query.strip():
        lines.append("  (empty query: no results)")
    for rank, hit in enumerate(hits, 1):
        line = f"  {rank:3d}. {hit.score:+.4f}  {hit.modality:<5}  {hit.doc_id}"
        if doc_texts is not None and hit.doc_id in doc_texts:
            line += f"  {_short(doc_texts[hit.doc_id])}"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    queries: list[str] = list(args.queries)
    if not queries:
        if sys.stdin.isatty():
            print(
                "univl-fast search: give at least one QUERY (or pipe queries on stdin)",
                file=sys.stderr,
            )
            return 2
        queries = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.k < 1:
        print(f"univl-fast search: -k must be >= 1, got {args.k}", file=sys.stderr)
        return 2
    engine = load_engine(args, "search", batching=False)
    if engine is None:
        return 1
    with engine:
        hits = engine.search(queries, k=args.k, modality=args.modality)
    doc_texts = _doc_texts(args.data) if args.data else None
    if args.json:
        out: dict[str, Any] = {
            "engine": str(args.engine),
            "index": str(args.index),
            "k": args.k,
            "results": [
                {
                    "query": q,
                    "hits": [
                        {
                            "doc_id": h.doc_id,
                            "modality": h.modality,
                            "score": float(h.score),
                            **({"text": doc_texts.get(h.doc_id, "")} if doc_texts else {}),
                        }
                        for h in row
                    ],
                }
                for q, row in zip(queries, hits, strict=True)
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        print(
            "\n\n".join(
                format_hits(q, row, doc_texts) for q, row in zip(queries, hits, strict=True)
            )
        )
    return 0
