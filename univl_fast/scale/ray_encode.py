"""Corpus encoding on a Ray cluster: the shards of ``univl_fast.index.corpus``, computed by a
Ray Data actor pool of torch-free Encoders.

Partitions come from the dataset layer: each shard is a span of ``all_docs.json`` or of the
captions file (byte range + first line number, cut by one newline scan on the driver, which
never parses the corpus); an actor reads its span with one seek and reads each image's bytes
with one ``pread`` into ``imgs.tsv`` at its ``imgs.lineidx.new`` offset. Shard names, files,
fingerprints and ``meta.json`` are those of the single-machine ``encode_corpus`` (the same
functions write them), so a work dir can be finished by either, and a re-run (after a crash,
or with more actors) reuses every finished shard. Only a small summary row per shard travels
through Ray; the vectors are read back from the shard files on the driver.

Threads: each actor's ONNX Runtime / native text tower runs ``cpus_per_actor`` intra-op
threads, set explicitly (Ray sets ``OMP_NUM_THREADS=1`` in its workers, which would otherwise
leave a multi-CPU actor with one thread).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from univl_fast.data.layout import Span
from univl_fast.index.corpus import (
    CorpusReport,
    EncodedCorpus,
    assemble,
    corpus_meta,
    encode_or_reuse_shard,
    log_bad,
    prepare_work_dir,
    read_shard,
    shard_fingerprint,
    shard_name,
)
from univl_fast.scale.ray_runtime import require_ray
from univl_fast.types import IMAGE, TEXT

log = logging.getLogger(__name__)


def plan_shards(dataset, captions: str, shard_size: int) -> list[dict[str, Any]]:
    """One row per shard, in corpus order (text shards, then image shards)."""
    rows: list[dict[str, Any]] = []
    for modality, spans in (
        (TEXT, dataset.text_doc_spans(shard_size)),
        (IMAGE, dataset.image_doc_spans(shard_size, captions)),
    ):
        for j, sp in enumerate(spans):
            rows.append(
                {
                    "modality": modality,
                    "name": shard_name(modality, j),
                    "start": sp.start,
                    "stop": sp.stop,
                    "first_lineno": sp.first_lineno,
                    "records": sp.records,
                }
            )
    return rows


class ShardEncoder:
    """A Ray Data actor: loads the engine and the dataset once, then encodes (or reuses) the
    shards of each batch of plan rows it is given."""

    def __init__(
        self,
        engine_dir: str,
        precision: str,
        backend: str,
        batch_size: int,
        threads: int,
        data_dir: str,
        captions: str,
        work_dir: str,
        text_runtime: str = "auto",
        image_runtime: str = "auto",
        jpeg_draft: bool = False,
    ):
        from univl_fast.data import DatasetDir
        from univl_fast.runtime import Encoder
        from univl_fast.runtime.backends import ThreadSettings

        # Ray starts workers with OMP_NUM_THREADS=1; the towers get their count explicitly
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["UNIVL_FAST_INTRA_OP_THREADS"] = str(threads)
        self.encoder = Encoder(
            engine_dir,
            precision=precision,
            backend=backend,
            batch_size=batch_size,
            threads=ThreadSettings(intra_op=threads),
            text_runtime=text_runtime,
            image_runtime=image_runtime,
            jpeg_draft=jpeg_draft,
        )
        self.dataset = DatasetDir(data_dir)
        self.captions = captions
        self.work = Path(work_dir)
        self.batch_size = batch_size
        self.pid = os.getpid()
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {
            k: []
            for k in ("name", "docs", "vectors", "bad", "fingerprint", "computed", "pid", "node")
        }
        for i in range(len(batch["name"])):
            modality = str(batch["modality"][i])
            span = Span(
                int(batch["start"][i]),
                int(batch["stop"][i]),
                int(batch["first_lineno"][i]),
                int(batch["records"][i]),
            )
            if modality == TEXT:
                docs = self.dataset.read_text_docs(span)
            else:
                docs = self.dataset.read_image_docs(span, self.captions)
            if len(docs) != span.records:
                raise RuntimeError(
                    f"{batch['name'][i]}: read {len(docs)} documents from a span of "
                    f"{span.records}; the corpus file changed during the run"
                )
            fp = shard_fingerprint(modality, docs)
            (vecs, ids, bad), computed = encode_or_reuse_shard(
                self.encoder,
                self.dataset,
                self.work,
                str(batch["name"][i]),
                modality,
                docs,
                self.batch_size,
                fp,
            )
            out["name"].append(str(batch["name"][i]))
            out["docs"].append(len(docs))
            out["vectors"].append(int(vecs.shape[0]))
            out["bad"].append(json.dumps(bad))
            out["fingerprint"].append(fp)
            out["computed"].append(bool(computed))
            out["pid"].append(self.pid)
            out["node"].append(self.node)
        return out


def encode_corpus_ray(
    encoder,
    dataset,
    work_dir: str | Path,
    captions: str = "plain",
    shard_size: int = 4096,
    batch_size: int = 64,
    actors: int = 2,
    cpus_per_actor: int = 1,
    progress: bool = True,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
) -> EncodedCorpus:
    """``encode_corpus`` on the Ray cluster this process has joined (``ray_runtime.init_ray``).

    encoder: a driver-side ``runtime.Encoder`` of the engine (its dir, precision, backend and
    manifest hash are what the actors load and what meta.json records). actors: encoder actors
    (each loads the engine once); cpus_per_actor: Ray CPUs reserved per actor = its tower
    threads. on_shard(row): called on the driver as each shard's summary arrives (name, docs,
    vectors, bad, computed, pid and node of the actor). Returns the same EncodedCorpus (vectors, ids,
    modalities in corpus order, report) as ``encode_corpus``.
    """
    ray = require_ray()
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    if actors < 1 or cpus_per_actor < 1:
        raise ValueError(f"actors ({actors}) and cpus_per_actor ({cpus_per_actor}) must be >= 1")
    if not ray.is_initialized():
        raise RuntimeError("encode_corpus_ray: Ray is not initialized (ray_runtime.init_ray)")
    work = Path(work_dir).resolve()
    prepare_work_dir(work, corpus_meta(encoder, dataset, captions, shard_size))
    plan = plan_shards(dataset, captions, shard_size)
    dim = int(encoder.dim)
    report = CorpusReport()
    if not plan:
        return assemble([], report, dim, dataset.path)

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar for the whole job: ours
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items(plan, override_num_blocks=len(plan))
    kwargs = {
        "engine_dir": str(Path(encoder.engine_dir).resolve()),
        "precision": encoder.precision,
        "backend": encoder.backend,
        "batch_size": batch_size,
        "threads": cpus_per_actor,
        "data_dir": str(Path(dataset.path).resolve()),
        "captions": captions,
        "work_dir": str(work),
        # the caller's runtime request per tower, resolved again on each actor's CPU
        "text_runtime": getattr(encoder, "runtime_requests", {}).get("text", "auto"),
        "image_runtime": getattr(encoder, "runtime_requests", {}).get("image", "auto"),
        "jpeg_draft": bool(getattr(encoder, "jpeg_draft", False)),
    }
    results = ds.map_batches(
        ShardEncoder,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        batch_format="numpy",
        concurrency=min(actors, len(plan)),
        num_cpus=cpus_per_actor,
        # an actor that dies (node lost, killed) is restarted and its shard retried: Ray Data's
        # actor pools default to max_restarts=-1, max_task_retries=-1 (the kill test checks);
        # a shard file is written atomically, so a retried shard is written once
    )
    total = sum(int(r["records"]) for r in plan)
    summaries: dict[str, dict[str, Any]] = {}
    bar = tqdm(
        total=total, desc="encoding corpus", unit="doc", file=sys.stderr, disable=not progress
    )
    n_bad = 0
    try:
        for row in results.iter_rows():
            row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            if row["name"] in summaries:  # a retried shard reported twice: count it once
                continue
            summaries[row["name"]] = row
            n_bad += len(json.loads(row["bad"]))
            bar.update(int(row["docs"]))
            bar.set_postfix(bad=n_bad, reused=sum(not r["computed"] for r in summaries.values()))
            if on_shard is not None:
                on_shard(row)
    finally:
        bar.close()
    pieces = []
    for p in plan:
        name = p["name"]
        row = summaries.get(name)
        if row is None:
            raise RuntimeError(f"encode_corpus_ray: shard {name} was never reported by Ray")
        got = read_shard(work / f"{name}.npz", row["fingerprint"], dim)
        if got is None:
            raise RuntimeError(
                f"encode_corpus_ray: {work / name}.npz missing or stale after the run"
            )
        (report.shards_computed if row["computed"] else report.shards_reused).append(name)
        log_bad(p["modality"], got[2])
        pieces.append((p["modality"], *got))
    return assemble(pieces, report, dim, dataset.path)
