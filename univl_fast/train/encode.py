"""Encoding a dataset's corpus and queries with the PyTorch model, and exact search.

Shared by ``univl-fast mine``, ``univl-fast eval --checkpoint`` and the dev checks during
training. Undecodable images are skipped and counted (never abort the run); image docs without
a caption entry are encoded with an empty caption and counted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from univl_fast.data.errors import SkipReport
from univl_fast.data.layout import DatasetDir, Query
from univl_fast.model import UniVLDR
from univl_fast.types import IMAGE, TEXT


@dataclass
class EncodedCorpus:
    """The corpus in one embedding matrix: ``vectors`` float32 (n, d) unit rows, row i is
    ``ids[i]`` of modality ``modalities[i]``."""

    ids: list[str]
    modalities: list[str]
    vectors: np.ndarray
    skipped_images: SkipReport = field(default_factory=SkipReport)
    empty_captions: int = 0
    missing_captions: int = 0

    @property
    def modality_of(self) -> dict[str, str]:
        return dict(zip(self.ids, self.modalities, strict=True))

    def subset(self, modality: str) -> EncodedCorpus:
        rows = [i for i, m in enumerate(self.modalities) if m == modality]
        return EncodedCorpus(
            [self.ids[i] for i in rows],
            [modality] * len(rows),
            self.vectors[rows],
            self.skipped_images,
            self.empty_captions,
            self.missing_captions,
        )

    def summary(self) -> str:
        n_img = sum(1 for m in self.modalities if m == IMAGE)
        parts = [f"{len(self.ids) - n_img} text docs, {n_img} image docs encoded"]
        if self.skipped_images.skipped:
            parts.append(f"{self.skipped_images.skipped_count} undecodable images skipped")
            parts.append(self.skipped_images.summary(3))
        if self.empty_captions:
            parts.append(f"{self.empty_captions} empty captions (encoded as empty text)")
        if self.missing_captions:
            parts.append(f"{self.missing_captions} images without a caption entry (empty caption)")
        return "; ".join(parts)


def _bar(total: int, desc: str, progress: bool):
    return tqdm(
        total=total, desc=desc, unit="doc", file=sys.stderr, disable=not progress, leave=False
    )


def encode_corpus(
    model: UniVLDR,
    ds: DatasetDir,
    captions: str = "plain",
    batch_size: int = 64,
    progress: bool = True,
) -> EncodedCorpus:
    """Encode every text doc (Eq. 2) and every image doc (Eq. 3, with ``captions``)."""
    text_docs = ds.text_docs()
    caption_of = {d.doc_id: d.caption for d in ds.image_docs(captions)}
    image_ids = ds.image_ids()
    ids: list[str] = []
    mods: list[str] = []
    parts: list[np.ndarray] = []
    with _bar(len(text_docs) + len(image_ids), "encode corpus", progress) as bar:
        for start in range(0, len(text_docs), batch_size):
            batch = text_docs[start : start + batch_size]
            parts.append(model.encode_text_docs([d.text for d in batch], batch_size=batch_size))
            ids.extend(d.doc_id for d in batch)
            mods.extend([TEXT] * len(batch))
            bar.update(len(batch))
        report = SkipReport()
        missing = sum(1 for i in image_ids if i not in caption_of)
        empty = 0
        done = 0
        for batch_ids, images in ds.images.iter_images(image_ids, batch_size, report):
            caps = [caption_of.get(i, "") for i in batch_ids]
            empty += sum(1 for c in caps if not c.strip())
            parts.append(model.encode_image_docs(images, caps, batch_size=batch_size))
            ids.extend(batch_ids)
            mods.extend([IMAGE] * len(batch_ids))
            bar.update(report.seen - done)
            done = report.seen
    vectors = (
        np.concatenate(parts).astype(np.float32, copy=False)
        if parts
        else np.zeros((0, model.config.embed_dim), np.float32)
    )
    return EncodedCorpus(ids, mods, vectors, report, empty, missing)


def encode_queries(
    model: UniVLDR, queries: list[Query], batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Query texts -> float32 (n, d) unit rows (Eq. 1)."""
    out = []
    with _bar(len(queries), "encode queries", progress) as bar:
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            out.append(model.encode_queries([q.text for q in batch], batch_size=batch_size))
            bar.update(len(batch))
    if not out:
        return np.zeros((0, model.config.embed_dim), np.float32)
    return np.concatenate(out)


def search_run(
    corpus: EncodedCorpus, qids: list[str], query_vectors: np.ndarray, k: int = 100
) -> dict[str, dict[str, float]]:
    """pytrec_eval run ``{qid: {doc_id: score}}`` of the exact top-k (faiss IndexFlatIP)."""
    from univl_fast.evaluation.embeddings import exact_topk, make_run

    if not qids or not corpus.ids:
        return {q: {} for q in qids}
    scores, rows = exact_topk(query_vectors, corpus.vectors, k)
    return make_run(qids, corpus.ids, scores, rows)
