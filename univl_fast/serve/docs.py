"""Document text and images for the search page (``--data DIR``).

Text snippets and captions come from the dataset's docs files, loaded once (in the pre-fork
parent, so workers share the pages); images are read one at a time from ``imgs.tsv`` through
its line index by :class:`univl_fast.data.ImageStore` (``os.pread``, thread-safe): the tsv is
never loaded.
"""

from __future__ import annotations

import os
from typing import Any

# The page shows snippets, not whole documents.
SNIPPET_CHARS = 400

# Magic bytes -> content type of the image formats a dataset holds.
_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_content_type(data: bytes) -> str:
    for magic, ctype in _IMAGE_TYPES:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class DocStore:
    """doc_id -> snippet / caption, and image bytes for image docs."""

    def __init__(self, data_dir: str | os.PathLike):
        from univl_fast.data import DatasetDir

        self.dataset = DatasetDir(data_dir)
        self.texts: dict[str, str] = {}
        for batch in self.dataset.iter_text_docs():
            for d in batch:
                self.texts[d.doc_id] = _snippet(d.text)
        self.captions: dict[str, str] = {}
        for batch in self.dataset.iter_image_docs(1024):
            for d in batch:
                self.captions[d.doc_id] = _snippet(d.caption)
        self.images: Any = self.dataset.images  # ImageStore (opens the line index only)

    def text(self, doc_id: str) -> str | None:
        """The snippet of a text doc or the caption of an image doc (None when unknown)."""
        got = self.texts.get(doc_id)
        return got if got is not None else self.captions.get(doc_id)

    def image(self, doc_id: str) -> bytes | None:
        """The image file bytes of an image doc (None when the store has no such image)."""
        if doc_id not in self.images:
            return None
        return self.images.read_bytes(doc_id)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 3] + "..."
