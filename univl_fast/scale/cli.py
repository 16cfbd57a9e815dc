"""The scale-out part of ``univl-fast index`` (--ray / --shards): the index build."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from univl_fast.index.build import build_sharded_index
from univl_fast.index.sharded_build import merge_sharded
from univl_fast.index.store import MANIFEST_FILE
from univl_fast.utils.io import atomic_write_json


def build_scaled(
    args: argparse.Namespace,
    corpus: Any,
    build_args: dict[str, Any],
    corpus_info: dict[str, Any],
    out: Path,
) -> Any:
    """Train once, fill shards in parallel (Ray tasks with --ray, threads without), tune once;
    then write ``out`` as a sharded index (--shards N > 1) or merge the shards into one index
    (--ray with --shards 1: one shard per actor)."""
    if args.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {args.shards}")
    fill = None
    if args.ray is not None:
        from univl_fast.scale.ray_build import make_fill_ray

        fill = make_fill_ray(args.cpus_per_actor)
    merge = args.shards == 1
    n = len(corpus.doc_ids)
    shards = min(args.actors if merge else args.shards, n)
    target = out / ".shards" if merge else out
    sharded = build_sharded_index(
        corpus.vectors,
        corpus.doc_ids,
        corpus.modalities,
        target,
        shards,
        fill=fill,
        **build_args,
    )
    sharded.manifest["corpus"] = corpus_info
    if not merge:
        atomic_write_json(out / MANIFEST_FILE, sharded.manifest)
        return sharded
    index = merge_sharded(sharded, out)
    shutil.rmtree(target, ignore_errors=True)
    return index
