"""Resumable corpus encoding: every text and image document of a dataset dir -> vectors.

Work is cut into shards (``shard_size`` documents, text shards first, then image shards, in
corpus file order). Each finished shard is written atomically to
``work_dir/{text,image}-NNNNN.npz`` holding its vectors, doc ids, the ids it had to skip
(with reasons) and a fingerprint of the documents it covered; a shard file exists only when
complete. A re-run skips every shard whose file is present and whose fingerprint matches the
documents now in that slot (a changed corpus, embedding space, encoding, caption set or shard
size invalidates the work dir: ``work_dir/meta.json`` records them; adding TensorRT plans to
the engine does not). Bad documents (undecodable or missing
images, invalid text) are reported per item and skipped; the others are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from univl_fast.imageio import ImageDecodeError
from univl_fast.index.binding import space_key
from univl_fast.types import IMAGE, TEXT
from univl_fast.utils.io import atomic_open, atomic_write_json, read_json

log = logging.getLogger(__name__)

META_FILE = "meta.json"
META_FORMAT = 2


@dataclass
class CorpusReport:
    """What an encoding run did."""

    shards_computed: list[str] = field(default_factory=list)
    shards_reused: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (doc_id, reason)
    counts: dict[str, int] = field(default_factory=dict)  # vectors per modality

    def summary(self) -> str:
        return (
            f"{sum(self.counts.values())} documents encoded ({self.counts.get(TEXT, 0)} text, "
            f"{self.counts.get(IMAGE, 0)} image); {len(self.bad)} bad document(s) skipped; "
            f"{len(self.shards_computed)} shard(s) computed, {len(self.shards_reused)} reused"
        )


@dataclass
class EncodedCorpus:
    vectors: np.ndarray  # float32 (n, d) unit rows, text docs first then image docs
    doc_ids: list[str]
    modalities: list[str]
    report: CorpusReport


def _fingerprint(ids: list[str], texts: list[str]) -> str:
    h = hashlib.sha256()
    for i, t in zip(ids, texts, strict=True):
        h.update(i.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    return h.hexdigest()


def _write_shard(
    path: Path, vectors: np.ndarray, ids: list[str], bad: list[tuple[str, str]], fingerprint: str
) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        vectors=vectors.astype(np.float32),
        ids=np.array(ids, dtype=object).astype(str) if ids else np.array([], dtype=str),
        bad=np.array(json.dumps(bad)),
        fingerprint=np.array(fingerprint),
    )
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())


def read_shard(path: Path, fingerprint: str, dim: int):
    """(vectors, ids, bad) of a finished shard, or None if absent, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                log.info("%s: documents changed since it was written; recomputing", path.name)
                return None
            vectors = z["vectors"]
            ids = [str(x) for x in z["ids"].tolist()]
            bad = [tuple(x) for x in json.loads(str(z["bad"]))]
    except Exception as exc:  # noqa: BLE001 - an unreadable shard is just recomputed
        log.warning("%s: unreadable (%s); recomputing", path, exc)
        return None
    if vectors.ndim != 2 or vectors.shape != (len(ids), dim):
        return None
    return vectors, ids, bad


def prepare_work_dir(work_dir: Path, meta: dict[str, Any]) -> None:
    meta_path = work_dir / META_FILE
    if meta_path.is_file():
        try:
            old = read_json(meta_path)
        except ValueError:
            old = None
        if old != meta:
            log.warning("%s: made with other settings (%s); starting over", work_dir, old)
            shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not meta_path.is_file():
        atomic_write_json(meta_path, meta)


def _encode_text_shard(encoder, docs) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    res = encoder.encode_text_docs([d.text for d in docs], on_error="skip")
    ids = [docs[i].doc_id for i in res.indices.tolist()]
    bad = [(docs[e.index].doc_id, e.reason) for e in res.errors]
    return res.embeddings, ids, bad


def _encode_image_shard(encoder, dataset, docs, batch: int):
    vecs: list[np.ndarray] = []
    ids: list[str] = []
    bad: list[tuple[str, str]] = []
    store = dataset.images
    for start in range(0, len(docs), batch):
        part = docs[start : start + batch]
        raw, caps, keep = [], [], []
        for d in part:
            try:
                raw.append(store.read_bytes(d.doc_id))
            except KeyError:
                bad.append((d.doc_id, f"image not in {store.lineidx_path.name}"))
                continue
            except (ImageDecodeError, ValueError) as exc:  # DataFormatError is a ValueError
                bad.append((d.doc_id, str(exc)))
                continue
            caps.append(d.caption)
            keep.append(d)
        if not keep:
            continue
        res = encoder.encode_image_docs(raw, caps, on_error="skip")
        vecs.append(res.embeddings)
        ids.extend(keep[i].doc_id for i in res.indices.tolist())
        bad.extend((keep[e.index].doc_id, e.reason) for e in res.errors)
    dim = int(encoder.dim)
    return (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)), ids, bad


def corpus_meta(encoder, dataset, captions: str, shard_size: int) -> dict[str, Any]:
    """What ``work_dir/meta.json`` records: a work dir is reused only under the same settings."""
    return {
        "format": META_FORMAT,
        "space": space_key(encoder),
        "encoding": getattr(encoder, "encoding", None),
        "captions": captions,
        "shard_size": shard_size,
        "dataset": str(Path(dataset.path).resolve()),
    }


def shard_fingerprint(modality: str, docs: list) -> str:
    """Fingerprint of the documents of one shard (ids + texts, or ids + captions)."""
    if modality == TEXT:
        return _fingerprint([d.doc_id for d in docs], [d.text for d in docs])
    return _fingerprint([d.doc_id for d in docs], [d.caption for d in docs])


def encode_or_reuse_shard(
    encoder,
    dataset,
    work: Path,
    name: str,
    modality: str,
    docs: list,
    batch_size: int,
    fingerprint: str | None = None,
) -> tuple[tuple[np.ndarray, list[str], list[tuple[str, str]]], bool]:
    """((vectors, ids, bad), computed) of shard ``name``: its finished file when that covers
    exactly ``docs``, else encoded now and written atomically."""
    fp = fingerprint or shard_fingerprint(modality, docs)
    path = work / f"{name}.npz"
    got = read_shard(path, fp, int(encoder.dim))
    if got is not None:
        return got, False
    if modality == TEXT:
        got = _encode_text_shard(encoder, docs)
    else:
        got = _encode_image_shard(encoder, dataset, docs, batch_size)
    _write_shard(path, got[0], got[1], got[2], fp)
    return got, True


def shard_name(modality: str, j: int) -> str:
    return f"{modality}-{j:05d}"


def assemble(
    pieces: list[tuple[str, np.ndarray, list[str], list[tuple[str, str]]]],
    report: CorpusReport,
    dim: int,
    dataset_path: Any,
) -> EncodedCorpus:
    """Concatenate shards in corpus order [(modality, vectors, ids, bad)] into an
    EncodedCorpus (fills ``report.bad`` and ``report.counts``; refuses duplicate doc ids)."""
    all_vecs = [p[1] for p in pieces]
    all_ids: list[str] = []
    all_mods: list[str] = []
    for modality, _vecs, ids, bad in pieces:
        all_ids.extend(ids)
        all_mods.extend([modality] * len(ids))
        report.bad.extend(bad)
    vectors = np.concatenate(all_vecs) if all_vecs else np.zeros((0, dim), np.float32)
    report.counts = {TEXT: all_mods.count(TEXT), IMAGE: all_mods.count(IMAGE)}
    seen: set[str] = set()
    dups = [i for i in all_ids if i in seen or seen.add(i)]
    if dups:
        raise ValueError(
            f"{dataset_path}: {len(dups)} doc id(s) appear twice in the corpus (text and image "
            f"ids share one space), e.g. {dups[:5]}"
        )
    return EncodedCorpus(vectors, all_ids, all_mods, report)


def encode_corpus(
    encoder,
    dataset,
    work_dir: str | Path,
    captions: str = "plain",
    shard_size: int = 4096,
    batch_size: int = 64,
    progress: bool = True,
    on_shard: Callable[[str, bool], None] | None = None,
) -> EncodedCorpus:
    """Encode every text doc and image doc of ``dataset`` (a ``univl_fast.data.DatasetDir``)
    with ``encoder`` (a ``univl_fast.runtime.Encoder``), resumably (see module docstring).

    on_shard(name, computed): called after each shard is available (computed now or reused);
    an exception from it stops the run with the finished shards kept.
    Returns vectors (n, d) float32 unit rows, doc ids and modalities, text docs first.
    ``univl_fast.scale.ray_encode.encode_corpus_ray`` does the same on a Ray cluster.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    work = Path(work_dir)
    prepare_work_dir(work, corpus_meta(encoder, dataset, captions, shard_size))
    report = CorpusReport()
    pieces: list[tuple[str, np.ndarray, list[str], list[tuple[str, str]]]] = []

    def shards() -> Iterator[tuple[str, str, list]]:
        for j, docs in enumerate(dataset.iter_text_docs(shard_size)):
            yield TEXT, shard_name(TEXT, j), docs
        for j, docs in enumerate(dataset.iter_image_docs(shard_size, captions)):
            yield IMAGE, shard_name(IMAGE, j), docs

    bar = tqdm(desc="encoding corpus", unit="doc", file=sys.stderr, disable=not progress)
    n_bad = 0
    try:
        for modality, name, docs in shards():
            got, computed = encode_or_reuse_shard(
                encoder, dataset, work, name, modality, docs, batch_size
            )
            (report.shards_computed if computed else report.shards_reused).append(name)
            pieces.append((modality, *got))
            log_bad(modality, got[2])
            n_bad += len(got[2])
            bar.update(len(docs))
            bar.set_postfix(bad=n_bad, reused=len(report.shards_reused))
            if on_shard is not None:
                on_shard(name, computed)
    finally:
        bar.close()
    return assemble(pieces, report, int(encoder.dim), dataset.path)


def log_bad(modality: str, bad: list[tuple[str, str]]) -> None:
    for doc_id, reason in bad:
        log.warning("skipped %s document %s: %s", modality, doc_id, reason)


def encode_tune_queries(encoder, dataset, max_queries: int = 1000, seed: int = 0):
    """(m, d) float32 held-out tuning queries from the dataset's dev (then train) split, never
    test; None if the dataset has neither."""
    texts: list[str] = []
    for split in ("dev", "train"):
        if dataset.has(f"{split}.json"):
            texts.extend(q.text for q in dataset.iter_queries(split))
    if not texts:
        return None
    rng = np.random.default_rng(seed)
    if len(texts) > max_queries:
        texts = [texts[i] for i in np.sort(rng.choice(len(texts), max_queries, replace=False))]
    res = encoder.encode_queries(texts, on_error="skip")
    return res.embeddings if res.embeddings.shape[0] else None
