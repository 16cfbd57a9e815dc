"""``DatasetDir``: the UniVL-DR / WebQA dataset layout, read lazily and validated (torch-free).

Files (JSON lines unless said otherwise)::

    train.json dev.json test.json        queries: qid, Q, A, img_posFacts, img_negFacts,
                                         txt_posFacts, txt_negFacts
    train_all.json dev_all.json          mined: same fields plus all_negFacts
    all_docs.json                        text docs: snippet_id, fact
    all_imgs.json                        image docs: image_id, caption
    all_imgs_query.json all_imgs_exp.json  same shape, captions expanded by verbalization
    imgs.tsv + imgs.lineidx.new          image bytes (see univl_fast.data.images)
    dev_qrels.txt test_qrels.txt         qid<TAB>docid<TAB>1 (TREC 4-column also accepted)

Image ids and snippet ids share one doc-id space of strings. Readers stream line by line; the
whole-corpus lists hold small dataclasses only, never image bytes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from univl_fast.data.errors import (
    DataFileMissingError,
    DataFormatError,
    SkipReport,
    ValidationReport,
)
from univl_fast.data.images import ImageStore, read_lineidx
from univl_fast.types import IMAGE, TEXT

SPLITS = ("train", "dev", "test")

# What each file is for, used in "missing file" messages.
FILE_ROLES = {
    "train.json": "training queries",
    "dev.json": "dev queries",
    "test.json": "test queries",
    "train_all.json": "training queries with mined negatives (run `univl-fast mine`)",
    "dev_all.json": "dev queries with mined negatives (run `univl-fast mine`)",
    "all_docs.json": "the text corpus (snippet_id, fact per line)",
    "all_imgs.json": "the image captions (image_id, caption per line)",
    "all_imgs_query.json": "captions expanded with verbalized queries",
    "all_imgs_exp.json": "captions expanded with verbalized captions",
    "imgs.tsv": "the image bytes (image_id<TAB>base64 per line)",
    "imgs.lineidx.new": "the image line index (image_id<TAB>byte offset per line)",
    "dev_qrels.txt": "dev relevance judgments (qid<TAB>docid<TAB>1)",
    "test_qrels.txt": "test relevance judgments (qid<TAB>docid<TAB>1)",
}

CAPTION_FILES = {
    "plain": "all_imgs.json",
    "query": "all_imgs_query.json",
    "exp": "all_imgs_exp.json",
}


T = TypeVar("T")


@dataclass(slots=True)
class Query:
    """One question with its judged documents (ids are strings)."""

    qid: str
    text: str
    img_pos: list[str] = field(default_factory=list)
    txt_pos: list[str] = field(default_factory=list)
    img_neg: list[str] = field(default_factory=list)
    txt_neg: list[str] = field(default_factory=list)
    answer: str = ""
    all_neg: list[str] = field(default_factory=list)  # mined files only

    @property
    def modality(self) -> str | None:
        """ "image" or "text" by its positives (None if it has none or both)."""
        if self.img_pos and not self.txt_pos:
            return IMAGE
        if self.txt_pos and not self.img_pos:
            return TEXT
        return None


@dataclass(slots=True)
class TextDoc:
    doc_id: str
    text: str


@dataclass(slots=True)
class ImageDoc:
    doc_id: str
    caption: str


# -- JSON lines ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Span:
    """A run of records of a JSON-lines file: bytes [start, stop), first line number, and how
    many non-blank lines (records) it holds. ``record_spans`` cuts a file into them."""

    start: int
    stop: int
    first_lineno: int
    records: int


def _is_blank(line: str) -> bool:
    return not line.strip()


def record_spans(path: str | os.PathLike, every: int) -> list[Span]:
    """Cut a JSON-lines file into spans of ``every`` records (non-blank lines; the last span may
    hold fewer), in one streaming pass over its bytes, without parsing JSON. Record j of the
    file lies in span j // every, as in ``iter_jsonl`` order."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    p = Path(path)
    if not p.is_file():
        raise DataFileMissingError(p, f"missing file: {FILE_ROLES.get(p.name, 'a dataset file')}")
    spans: list[Span] = []
    start, first, count, pos = 0, 1, 0, 0
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if count == 0:
                start, first = pos, lineno
            pos += len(raw)
            if _is_blank(raw.decode("utf-8", "replace")):
                if count == 0:
                    start = pos  # a span starts at its first record
                continue
            count += 1
            if count == every:
                spans.append(Span(start, pos, first, count))
                count = 0
    if count:
        spans.append(Span(start, pos, first, count))
    return spans


def iter_jsonl(
    path: str | os.PathLike, role: str | None = None, span: Span | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file (only the
    lines of ``span`` when given: one seek, no scan of what comes before).

    Raises DataFormatError naming the file (and what it is for) when missing, and the file and
    line number when a line is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        what = role or FILE_ROLES.get(p.name, "a dataset file")
        raise DataFileMissingError(p, f"missing file: {what}")
    with open(p, "rb") as raw_fh:
        first = 1
        if span is not None:
            raw_fh.seek(span.start)
            raw_fh = io.BytesIO(raw_fh.read(span.stop - span.start))
            first = span.first_lineno
        fh = io.TextIOWrapper(raw_fh, encoding="utf-8")
        for lineno, line in enumerate(fh, first):
            if _is_blank(line):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(
                    p, f"malformed JSON ({exc.msg} at column {exc.colno})", lineno
                ) from None
            if not isinstance(obj, dict):
                raise DataFormatError(
                    p, f"expected a JSON object, got {type(obj).__name__}", lineno
                )
            yield lineno, obj


def _field(obj: dict, name: str, path: Path, lineno: int, alt: tuple[str, ...] = ()) -> Any:
    for key in (name, *alt):
        if key in obj:
            return obj[key]
    raise DataFormatError(
        path, f"missing field {name!r} (has: {', '.join(sorted(obj))[:200]})", lineno
    )


def _ids(value: Any, path: Path, lineno: int, name: str) -> list[str]:
    """A list of doc ids: strings, ints, or WebQA-style dicts holding the id."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataFormatError(
            path, f"field {name!r} must be a list of ids, got {type(value).__name__}", lineno
        )
    out = []
    for v in value:
        if isinstance(v, dict):
            v = v.get("image_id", v.get("snippet_id", v.get("id")))
            if v is None:
                raise DataFormatError(path, f"field {name!r} holds an object without an id", lineno)
        out.append(str(v))
    return out


def _answer(value: Any) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


def parse_query(obj: dict, path: Path, lineno: int) -> Query:
    return Query(
        qid=str(_field(obj, "qid", path, lineno)),
        text=str(_field(obj, "Q", path, lineno)),
        img_pos=_ids(obj.get("img_posFacts"), path, lineno, "img_posFacts"),
        txt_pos=_ids(obj.get("txt_posFacts"), path, lineno, "txt_posFacts"),
        img_neg=_ids(obj.get("img_negFacts"), path, lineno, "img_negFacts"),
        txt_neg=_ids(obj.get("txt_negFacts"), path, lineno, "txt_negFacts"),
        answer=_answer(obj.get("A")),
        all_neg=_ids(obj.get("all_negFacts"), path, lineno, "all_negFacts"),
    )


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read ``qid<TAB>docid<TAB>rel`` (or TREC ``qid 0 docid rel``) lines into pytrec_eval's
    ``{qid: {doc_id: rel}}``."""
    p = Path(path)
    if not p.is_file():
        raise DataFileMissingError(
            p, f"missing file: {FILE_ROLES.get(p.name, 'relevance judgments')}"
        )
    qrels: dict[str, dict[str, int]] = {}
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) == 3:
                qid, doc_id, rel = parts
            elif len(parts) == 4:
                qid, _, doc_id, rel = parts
            else:
                raise DataFormatError(
                    p, f"expected 'qid<TAB>docid<TAB>rel', got {line.strip()[:80]!r}", lineno
                )
            try:
                qrels.setdefault(qid, {})[doc_id] = int(rel)
            except ValueError:
                raise DataFormatError(p, f"relevance {rel!r} is not an integer", lineno) from None
    return qrels


# -- the dataset dir -------------------------------------------------------------------------
class DatasetDir:
    """A dataset directory in the UniVL-DR layout (see module docstring).

    Nothing is read at construction except a check that the directory exists; each reader
    opens its file when called and raises DataFormatError naming a missing or bad file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataFileMissingError(self.path, "dataset directory not found")

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    # -- queries ------------------------------------------------------------------------
    def queries_file(self, split: str, mined: bool = False) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.path / (f"{split}_all.json" if mined else f"{split}.json")

    def iter_queries(self, split: str, mined: bool = False) -> Iterator[Query]:
        p = self.queries_file(split, mined)
        for lineno, obj in iter_jsonl(p):
            yield parse_query(obj, p, lineno)

    def queries(self, split: str, mined: bool = False) -> list[Query]:
        """Queries of ``split`` (``mined=True``: ``<split>_all.json`` with mined negatives)."""
        return list(self.iter_queries(split, mined))

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        """``{qid: {doc_id: 1}}`` from ``<split>_qrels.txt``; for a split without a qrels file
        (train) they are built from the queries' positives."""
        p = self.path / f"{split}_qrels.txt"
        if p.is_file():
            return read_qrels(p)
        if split == "train" or not self.has(f"{split}.json"):
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            out: dict[str, dict[str, int]] = {}
            for q in self.iter_queries(split):
                out[q.qid] = {d: 1 for d in q.img_pos + q.txt_pos}
            return out
        raise DataFileMissingError(
            p, f"missing file: {FILE_ROLES.get(p.name, 'relevance judgments')}"
        )

    # -- text corpus --------------------------------------------------------------------
    def _iter_records(
        self,
        path: Path,
        make: Callable[[str, str], T],
        id_key: str,
        text_key: str,
        batch_size: int,
        span: Span | None = None,
    ) -> Iterator[list[T]]:
        """Stream a JSON-lines corpus file (or one span of it) as batches of ``make(id, text)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch: list[T] = []
        for lineno, obj in iter_jsonl(path, span=span):
            doc_id = str(_field(obj, id_key, path, lineno))
            batch.append(make(doc_id, str(_field(obj, text_key, path, lineno))))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def iter_text_docs(self, batch_size: int = 1024) -> Iterator[list[TextDoc]]:
        """Stream ``all_docs.json`` as batches of TextDoc."""
        return self._iter_records(
            self.path / "all_docs.json", TextDoc, "snippet_id", "fact", batch_size
        )

    def text_docs(self) -> list[TextDoc]:
        return [d for batch in self.iter_text_docs(8192) for d in batch]

    def text_doc_spans(self, every: int) -> list[Span]:
        """``all_docs.json`` cut into spans of ``every`` documents (partitions for workers)."""
        return record_spans(self.path / "all_docs.json", every)

    def read_text_docs(self, span: Span) -> list[TextDoc]:
        """The text documents of one span of ``all_docs.json``."""
        path = self.path / "all_docs.json"
        return [
            d
            for b in self._iter_records(path, TextDoc, "snippet_id", "fact", 8192, span)
            for d in b
        ]

    # -- image corpus -------------------------------------------------------------------
    def captions_file(self, captions: str = "plain") -> Path:
        """``plain`` | ``query`` | ``exp`` | a path to a JSON-lines file of image_id, caption."""
        if captions in CAPTION_FILES:
            return self.path / CAPTION_FILES[captions]
        p = Path(captions)
        if not p.is_file() and (self.path / captions).is_file():
            p = self.path / captions
        if not p.is_file():
            raise DataFileMissingError(
                p,
                "missing file: image captions (expected plain | query | exp "
                "or a JSON-lines file of image_id, caption)",
            )
        return p

    def iter_image_docs(
        self, batch_size: int = 1024, captions: str = "plain"
    ) -> Iterator[list[ImageDoc]]:
        """Stream the image captions file as batches of ImageDoc (ids as strings)."""
        return self._iter_records(
            self.captions_file(captions), ImageDoc, "image_id", "caption", batch_size
        )

    def image_docs(self, captions: str = "plain") -> list[ImageDoc]:
        return [d for batch in self.iter_image_docs(8192, captions) for d in batch]

    def image_doc_spans(self, every: int, captions: str = "plain") -> list[Span]:
        """The captions file cut into spans of ``every`` image documents (their bytes are read
        by each worker through ``imgs.lineidx.new`` offsets)."""
        return record_spans(self.captions_file(captions), every)

    def read_image_docs(self, span: Span, captions: str = "plain") -> list[ImageDoc]:
        """The image documents (id, caption) of one span of the captions file."""
        path = self.captions_file(captions)
        return [
            d
            for b in self._iter_records(path, ImageDoc, "image_id", "caption", 8192, span)
            for d in b
        ]

    @cached_property
    def images(self) -> ImageStore:
        """The image bytes store (imgs.tsv via imgs.lineidx.new)."""
        return ImageStore(self.path / "imgs.tsv", self.path / "imgs.lineidx.new")

    def iter_images(
        self,
        ids: Iterable[str] | None = None,
        batch_size: int = 64,
        report: SkipReport | None = None,
        workers: int = 0,
    ) -> Iterator[tuple[list[str], list[Image.Image]]]:
        """``(ids, RGB PIL images)`` batches (see ImageStore.iter_images); undecodable images
        are skipped and recorded in ``report``."""
        return self.images.iter_images(ids, batch_size, report, workers)

    # -- doc ids ------------------------------------------------------------------------
    def image_ids(self) -> list[str]:
        """The image corpus: every id in ``imgs.lineidx.new`` (else ``all_imgs.json``)."""
        if self.has("imgs.lineidx.new"):
            return read_lineidx(self.path / "imgs.lineidx.new")[0]
        return [d.doc_id for d in self.image_docs()]

    def text_ids(self) -> list[str]:
        return [d.doc_id for batch in self.iter_text_docs(8192) for d in batch]

    def modalities(self) -> dict[str, str]:
        """``{doc_id: "text" | "image"}`` for the whole corpus."""
        out = dict.fromkeys(self.text_ids(), TEXT)
        out.update(dict.fromkeys(self.image_ids(), IMAGE))
        return out

    # -- validation ---------------------------------------------------------------------
    def validate(
        self, check_images: str | int = "sample", max_examples: int = 5
    ) -> ValidationReport:
        """Check every file of the layout and report; never raises for bad content.

        check_images: "none", "sample" (decode up to 64 evenly spread images), "all", or an int
        (that many evenly spread images). Errors: missing/malformed core files, a lineidx offset
        pointing at another id, an undecodable image. Warnings: qrels / query ids absent from the
        corpus (readers skip and count them), captions for images absent from imgs.tsv.
        """
        rep = ValidationReport(str(self.path))

        def guarded(what: str, fn):
            try:
                return fn()
            except DataFormatError as exc:
                rep.errors.append(str(exc))
            except (OSError, ValueError) as exc:
                rep.errors.append(f"{what}: {exc}")
            return None

        text_ids = guarded("all_docs.json", self.text_ids)
        image_ids = guarded(
            "imgs.lineidx.new", lambda: read_lineidx(self.path / "imgs.lineidx.new")[0]
        )
        caption_ids = guarded("all_imgs.json", lambda: [d.doc_id for d in self.image_docs()])
        text_set = set(text_ids or [])
        image_set = set(image_ids or [])
        if text_ids is not None:
            rep.counts["text_docs"] = len(text_ids)
            if len(text_set) != len(text_ids):
                rep.errors.append(
                    f"all_docs.json: {len(text_ids) - len(text_set)} duplicate snippet ids"
                )
        if image_ids is not None:
            rep.counts["images"] = len(image_ids)
        if caption_ids is not None:
            rep.counts["image_captions"] = len(caption_ids)
            if image_ids is not None:
                missing = [i for i in caption_ids if i not in image_set]
                if missing:
                    rep.warnings.append(
                        _absent("all_imgs.json captions", missing, "imgs.lineidx.new", max_examples)
                    )
        for name in ("all_imgs_query.json", "all_imgs_exp.json"):
            if self.has(name):
                n = guarded(name, lambda n=name: sum(len(b) for b in self.iter_image_docs(8192, n)))
                if n is not None:
                    rep.counts[name.removesuffix(".json")] = n
        corpus = text_set | image_set
        split_qids: dict[str, set[str]] = {}
        for split in SPLITS:
            if not self.has(f"{split}.json"):
                rep.warnings.append(f"{split}.json: missing ({FILE_ROLES[f'{split}.json']})")
                continue
            qs = guarded(f"{split}.json", lambda s=split: self.queries(s))
            if qs is None:
                continue
            split_qids[split] = {q.qid for q in qs}
            rep.counts[f"{split}_queries"] = len(qs)
            if len({q.qid for q in qs}) != len(qs):
                rep.errors.append(f"{split}.json: duplicate qids")
            if corpus:
                missing = [d for q in qs for d in q.img_pos + q.txt_pos if d not in corpus]
                if missing:
                    rep.warnings.append(
                        _absent(f"{split}.json positives", missing, "the corpus", max_examples)
                    )
            both = [q.qid for q in qs if q.img_pos and q.txt_pos]
            if both:
                rep.warnings.append(
                    f"{split}.json: {len(both)} queries have positives in both "
                    f"modalities (e.g. {both[:max_examples]})"
                )
            if split != "test":
                nopos = [q.qid for q in qs if not q.img_pos and not q.txt_pos]
                if nopos:
                    rep.warnings.append(
                        f"{split}.json: {len(nopos)} queries have no positives "
                        f"(e.g. {nopos[:max_examples]})"
                    )
        for split in ("dev", "test"):
            p = self.path / f"{split}_qrels.txt"
            if not p.is_file():
                rep.warnings.append(f"{p.name}: missing ({FILE_ROLES[p.name]})")
                continue
            qrels = guarded(p.name, lambda p=p: read_qrels(p))
            if qrels is None:
                continue
            rep.counts[f"{split}_qrels_queries"] = len(qrels)
            if split in split_qids:
                only_q = sorted(split_qids[split] - set(qrels))
                only_r = sorted(set(qrels) - split_qids[split])
                if only_q:
                    rep.warnings.append(
                        f"{p.name}: {len(only_q)} {split}.json queries have no judgments "
                        f"(e.g. {only_q[:max_examples]})"
                    )
                if only_r:
                    rep.warnings.append(
                        f"{p.name}: {len(only_r)} judged qids are not in {split}.json "
                        f"(e.g. {only_r[:max_examples]})"
                    )
            if corpus:
                missing = [d for rels in qrels.values() for d in rels if d not in corpus]
                if missing:
                    rep.warnings.append(
                        _absent(f"{p.name} doc ids", missing, "the corpus", max_examples)
                    )
        if image_ids and check_images != "none" and self.has("imgs.tsv"):
            self._validate_images(rep, image_ids, check_images, max_examples)
        return rep

    def _validate_images(
        self, rep: ValidationReport, image_ids: list[str], check: str | int, max_examples: int
    ) -> None:
        n = len(image_ids) if check == "all" else (64 if check == "sample" else int(check))
        n = min(n, len(image_ids))
        step = max(1, len(image_ids) // max(n, 1))
        sample = image_ids[::step][:n]
        skipped = SkipReport()
        try:
            for _ in self.images.iter_images(sample, batch_size=256, report=skipped):
                pass
        except DataFormatError as exc:
            rep.errors.append(str(exc))
            return
        rep.counts["images_checked"] = skipped.seen
        if skipped.skipped:
            rep.errors.append(f"imgs.tsv: {skipped.summary(max_examples)}")


def _absent(what: str, missing: list[str], where: str, max_examples: int) -> str:
    uniq = list(dict.fromkeys(missing))
    return f"{what}: {len(uniq)} ids absent from {where} (e.g. {uniq[:max_examples]})"
