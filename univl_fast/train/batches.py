"""Training data: queries with their usable positives and hard negatives, image loading with
skip-and-count, and batch assembly for both stages.

Bad input is skipped and counted, never fatal:

- a query whose positives are all missing from the corpus is dropped (counted, with examples);
  positives / negatives missing from the corpus are removed from the lists;
- an undecodable image is remembered as bad: as a positive its example leaves the batch, as a
  negative another negative takes its place;
- an empty caption is encoded as empty text (counted).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from univl_fast.data.layout import DatasetDir, Query
from univl_fast.imageio import ImageDecodeError
from univl_fast.types import IMAGE, TEXT

log = logging.getLogger(__name__)


@dataclass
class InputCounts:
    """What training skipped or patched, reported at the end and saved in train_config.json."""

    queries_total: int = 0
    queries_without_positives_in_corpus: int = 0
    positives_missing_from_corpus: int = 0
    negatives_missing_from_corpus: int = 0
    undecodable_images: int = 0
    examples_dropped_undecodable_positive: int = 0
    negatives_filled_from_other_modality: int = 0
    negatives_filled_at_random: int = 0
    empty_captions: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, item: str, limit: int = 5) -> None:
        lst = self.examples.setdefault(kind, [])
        if len(lst) < limit:
            lst.append(item)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Example:
    """One training query: text, usable positives, mined negatives (corpus ids, rank order)."""

    qid: str
    text: str
    img_pos: list[str]
    txt_pos: list[str]
    img_neg: list[str]
    txt_neg: list[str]
    all_neg: list[str]


class Corpus:
    """Doc texts, image captions and image pixels (preprocessed, with a bounded cache)."""

    def __init__(
        self,
        ds: DatasetDir,
        captions: str,
        preprocess,
        image_size: int,
        counts: InputCounts,
        cache_items: int = 20000,
    ):
        self.ds = ds
        self.preprocess_size = image_size
        self.text_of = {d.doc_id: d.text for d in ds.text_docs()}
        self.caption_of = {d.doc_id: d.caption for d in ds.image_docs(captions)}
        self.image_ids = set(ds.image_ids())
        self.preprocess = preprocess
        self.counts = counts
        self.bad_images: set[str] = set()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_items = cache_items
        self.counts.empty_captions = sum(
            1 for i in self.image_ids if not self.caption_of.get(i, "").strip()
        )

    def modality(self, doc_id: str) -> str | None:
        if doc_id in self.image_ids:
            return IMAGE
        if doc_id in self.text_of:
            return TEXT
        return None

    def all_ids(self) -> list[str]:
        return sorted(self.text_of) + sorted(self.image_ids)

    def pixels(self, image_id: str) -> torch.Tensor | None:
        """Preprocessed image (3, s, s) float32, or None if it does not decode (counted once)."""
        if image_id in self.bad_images:
            return None
        hit = self._cache.get(image_id)
        if hit is not None:
            self._cache.move_to_end(image_id)
            return hit
        try:
            px = self.preprocess(self.ds.images.load(image_id))
        except (ImageDecodeError, KeyError, ValueError, OSError) as exc:
            self.bad_images.add(image_id)
            self.counts.undecodable_images += 1
            self.counts.note("undecodable_images", f"{image_id}: {exc}")
            log.warning("skipping undecodable image %s: %s", image_id, exc)
            return None
        self._cache[image_id] = px
        if len(self._cache) > self._cache_items:
            self._cache.popitem(last=False)
        return px


def build_examples(queries: list[Query], corpus: Corpus, counts: InputCounts) -> list[Example]:
    """Keep the usable part of each query; drop (and count) queries with no usable positive."""
    out = []
    counts.queries_total = len(queries)
    for q in queries:
        img_pos = [d for d in q.img_pos if d in corpus.image_ids]
        txt_pos = [d for d in q.txt_pos if d in corpus.text_of]
        missing = [
            d
            for d in q.img_pos + q.txt_pos
            if d not in corpus.image_ids and d not in corpus.text_of
        ]
        if missing:
            counts.positives_missing_from_corpus += len(missing)
        if not img_pos and not txt_pos:
            counts.queries_without_positives_in_corpus += 1
            counts.note("queries_without_positives_in_corpus", f"{q.qid}: {missing[:3]}")
            continue
        pos = set(img_pos) | set(txt_pos) | set(q.img_pos) | set(q.txt_pos)
        img_neg = [d for d in q.img_neg if d in corpus.image_ids and d not in pos]
        txt_neg = [d for d in q.txt_neg if d in corpus.text_of and d not in pos]
        all_neg = [d for d in q.all_neg if corpus.modality(d) and d not in pos]
        counts.negatives_missing_from_corpus += (
            len(q.img_neg) + len(q.txt_neg) - len(img_neg) - len(txt_neg)
        )
        out.append(Example(q.qid, q.text, img_pos, txt_pos, img_neg, txt_neg, all_neg))
    if counts.queries_without_positives_in_corpus:
        log.warning(
            "%d of %d training queries skipped: none of their positives is in the corpus (e.g. %s)",
            counts.queries_without_positives_in_corpus,
            len(queries),
            counts.examples.get("queries_without_positives_in_corpus", [])[:3],
        )
    return out


def pick_positive(ex: Example, rng: random.Random) -> str:
    """The paper's rule: an image positive if the query has one, else a text positive; random
    among them (re-drawn every epoch)."""
    return rng.choice(ex.img_pos) if ex.img_pos else rng.choice(ex.txt_pos)


def pick_negatives(
    ex: Example,
    mode: str,
    k: int,
    depth: int,
    rng: random.Random,
    corpus: Corpus,
    counts: InputCounts,
    exclude: set[str],
) -> list[str]:
    """Stage-2 negatives for one query: always ``2k`` ids.

    balanced: k image + k text; texts: 2k text; images: 2k image; random: 2k from the mined
    top-``depth`` regardless of modality (the paper's "random ANCE"). A modality with too few
    negatives is filled from the other; if the mined lists run out, random corpus docs fill in.
    """
    n = 2 * k
    imgs = [d for d in ex.img_neg[:depth] if d not in corpus.bad_images and d not in exclude]
    txts = [d for d in ex.txt_neg[:depth] if d not in exclude]
    if mode == "random":
        pool = [
            d
            for d in (ex.all_neg[:depth] or (ex.img_neg[:depth] + ex.txt_neg[:depth]))
            if d not in corpus.bad_images and d not in exclude
        ]
        chosen = rng.sample(pool, min(n, len(pool)))
    else:
        want_img = {"balanced": k, "images": n, "texts": 0}[mode]
        want_txt = n - want_img
        got_img = rng.sample(imgs, min(want_img, len(imgs)))
        got_txt = rng.sample(txts, min(want_txt, len(txts)))
        short = n - len(got_img) - len(got_txt)
        if short > 0:
            rest_img = [d for d in imgs if d not in got_img]
            rest_txt = [d for d in txts if d not in got_txt]
            extra_pool = rest_txt if len(got_img) < want_img else rest_img
            extra = rng.sample(extra_pool, min(short, len(extra_pool)))
            counts.negatives_filled_from_other_modality += len(extra)
        else:
            extra = []
        chosen = got_img + got_txt + extra
    if len(chosen) < n:
        ids = corpus.all_ids()
        while len(chosen) < n:
            d = rng.choice(ids)
            if d not in exclude and d not in chosen and d not in corpus.bad_images:
                chosen.append(d)
                counts.negatives_filled_at_random += 1
    return chosen


@dataclass
class Batch:
    """Assembled tensors for one step.

    query_tokens: LongTensor (B, L). Candidate docs are ``doc_ids`` (C,), of which text docs are
    encoded from ``text_tokens`` (T, L) and image docs from ``pixels`` (I, 3, s, s) +
    ``caption_tokens`` (I, L); ``doc_is_image`` (C,) bool, ``doc_slot`` (C,) the row in the
    text or image part. ``targets`` (B,) index of each query's positive among its candidates;
    ``own`` (B, 1+2k) candidate indices per query (stage 2) or None.
    """

    qids: list[str]
    query_tokens: torch.Tensor
    doc_ids: list[str]
    text_tokens: torch.Tensor
    pixels: torch.Tensor
    caption_tokens: torch.Tensor
    doc_is_image: torch.Tensor
    doc_slot: torch.Tensor
    targets: torch.Tensor
    own: torch.Tensor | None
    dropped: int = 0


def assemble(
    examples: list[Example],
    stage: str,
    cfg,
    rng: random.Random,
    corpus: Corpus,
    tokenize,
    counts: InputCounts,
) -> Batch | None:
    """Pick positives (and negatives) for these queries and build the step's tensors."""
    rows: list[tuple[Example, str, list[str]]] = []
    dropped = 0
    for ex in examples:
        pos = pick_positive(ex, rng)
        if corpus.modality(pos) == IMAGE and corpus.pixels(pos) is None:
            alts = [d for d in ex.img_pos if d not in corpus.bad_images]
            if not alts and not ex.txt_pos:
                dropped += 1
                counts.examples_dropped_undecodable_positive += 1
                continue
            pos = rng.choice(alts) if alts else rng.choice(ex.txt_pos)
        negs: list[str] = []
        if stage == "hardneg":
            exclude = set(ex.img_pos) | set(ex.txt_pos)
            negs = pick_negatives(
                ex, cfg.negatives, cfg.k, cfg.neg_depth, rng, corpus, counts, exclude
            )
            # an undecodable negative is swapped for another one
            for _ in range(3):
                bad = [d for d in negs if corpus.modality(d) == IMAGE and corpus.pixels(d) is None]
                if not bad:
                    break
                keep = [d for d in negs if d not in bad]
                more = pick_negatives(
                    ex,
                    cfg.negatives,
                    cfg.k,
                    cfg.neg_depth,
                    rng,
                    corpus,
                    counts,
                    exclude | set(keep) | set(bad),
                )
                negs = keep + more[: len(bad)]
            negs = [
                d for d in negs if not (corpus.modality(d) == IMAGE and corpus.pixels(d) is None)
            ]
        rows.append((ex, pos, negs))
    if len(rows) < 2 and stage == "inbatch" or not rows:
        return None

    doc_ids: list[str] = []
    own: list[list[int]] = []
    targets: list[int] = []
    if stage == "inbatch":
        for _, pos, _ in rows:
            targets.append(len(doc_ids))
            doc_ids.append(pos)
    else:
        width = 1 + max(len(n) for _, _, n in rows)
        for _, pos, negs in rows:
            idx = [len(doc_ids)]
            doc_ids.append(pos)
            for d in negs:
                idx.append(len(doc_ids))
                doc_ids.append(d)
            targets.append(idx[0])
            own.append(idx + [-1] * (width - len(idx)))

    texts, pix, caps, is_img, slot = [], [], [], [], []
    for d in doc_ids:
        if corpus.modality(d) == IMAGE:
            is_img.append(True)
            slot.append(len(pix))
            pix.append(corpus.pixels(d))
            caps.append(corpus.caption_of.get(d, ""))
        else:
            is_img.append(False)
            slot.append(len(texts))
            texts.append(corpus.text_of[d])
    size = corpus.preprocess_size
    return Batch(
        qids=[ex.qid for ex, _, _ in rows],
        query_tokens=tokenize([ex.text for ex, _, _ in rows]),
        doc_ids=doc_ids,
        text_tokens=tokenize(texts) if texts else torch.zeros((0, 1), dtype=torch.long),
        pixels=torch.stack(pix) if pix else torch.zeros((0, 3, size, size)),
        caption_tokens=tokenize(caps) if caps else torch.zeros((0, 1), dtype=torch.long),
        doc_is_image=torch.tensor(is_img, dtype=torch.bool),
        doc_slot=torch.tensor(slot, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        own=torch.tensor(own, dtype=torch.long) if own else None,
        dropped=dropped,
    )


def load_training_queries(ds: DatasetDir, stage: str, mined_dir: str | Path | None) -> list[Query]:
    """Stage 1: ``train.json``. Stage 2: ``train_all.json`` (mined) from ``mined_dir`` (default:
    the data dir)."""
    if stage == "inbatch":
        return ds.queries("train")
    src = DatasetDir(mined_dir) if mined_dir else ds
    p = src.queries_file("train", mined=True)
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: mined training queries not found; run `univl-fast mine --data {ds.path} "
            f"--checkpoint STAGE1_CKPT --out {src.path}` first (or pass --mined DIR)"
        )
    return src.queries("train", mined=True)
