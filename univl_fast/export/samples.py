"""Inputs the exporter verifies each graph on: a dataset's real texts and image documents
(picture + caption) when one is given, a built-in sample otherwise (sentences of varying
length, Pillow-drawn pictures with captions)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# 1-token, 2-token, typical queries, captions, a text past the 77-token limit, unicode.
BUILTIN_TEXTS = [
    "cat",
    "red car",
    "what color is the roof of the building next to the eiffel tower",
    "How many people are standing on the bridge in the picture?",
    "A black-and-white photograph of a steam locomotive crossing a viaduct, 1923.",
    "Café Müller, Düsseldorf — façade at night (東京 style lights) 😀",
    "The cathedral was completed in 1345; its two towers rise 69 metres above the square. " * 8,
    "",
    "a " * 120,
    "Is the statue holding a torch or a sword?",
    "Mount Fuji seen from Lake Kawaguchi in autumn, with red maple leaves in the foreground",
    "number 42",
]
# one per built-in picture (cycled): the image-document pairs of paper Eq. 3
BUILTIN_CAPTIONS = [
    BUILTIN_TEXTS[4],
    BUILTIN_TEXTS[10],
    "red car",
    "",
    BUILTIN_TEXTS[5],
    BUILTIN_TEXTS[6],
]


def builtin_images(n: int = 6, seed: int = 0) -> list[Image.Image]:
    """``n`` RGB pictures of varied sizes / aspect ratios drawn with Pillow (deterministic)."""
    rng = np.random.default_rng(seed)
    sizes = [(224, 224), (320, 200), (180, 300), (640, 480), (97, 61), (256, 256), (500, 120)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack(
            [
                (xx * 255 // max(w - 1, 1)),
                (yy * 255 // max(h - 1, 1)),
                ((xx + yy) * 7 + 40 * i) % 256,
            ],
            axis=-1,
        ).astype(np.uint8)
        img = Image.fromarray(base, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(5, w // 2 + 6)), y0 + int(rng.integers(5, h // 2 + 6))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse([x0, y0, x1, y1], fill=color)
            else:
                draw.rectangle([x0, y0, x1, y1], outline=color, width=3)
        draw.text((5, 5), f"sample {i}", fill=(255, 255, 255))
        out.append(img)
    return out


@dataclass
class VerificationSample:
    """What parity is measured on: texts (str), RGB PIL images and the caption of each image
    (the image documents whose combined vector is verified), with where they came from."""

    texts: list[str]
    images: list[Image.Image]
    source: str
    notes: list[str] = field(default_factory=list)
    captions: list[str] = field(
        default_factory=list
    )  # one per image; empty: the built-in captions, cycled

    def image_captions(self) -> list[str]:
        """The caption of each image (the sample's own, else the built-in ones, cycled)."""
        pool = self.captions or BUILTIN_CAPTIONS
        return [pool[i % len(pool)] for i in range(len(self.images))]


def builtin_sample() -> VerificationSample:
    images = builtin_images()
    return VerificationSample(list(BUILTIN_TEXTS), images, "builtin", captions=BUILTIN_CAPTIONS)


def dataset_sample(
    data_dir: str | os.PathLike, n_texts: int = 48, n_images: int = 12
) -> VerificationSample:
    """Real texts (queries, text docs, captions) and images from a dataset dir."""
    from univl_fast.data import DatasetDir
    from univl_fast.imageio import ImageDecodeError, load_rgb

    ds = DatasetDir(data_dir)
    texts: list[str] = []
    for split in ("test", "dev", "train"):
        try:
            texts += [q.text for q in ds.queries(split)[: n_texts // 3]]
            break
        except FileNotFoundError:
            continue
    docs = ds.text_docs()[: n_texts // 3]
    texts += [d.text for d in docs]
    image_docs = ds.image_docs()
    texts += [d.caption for d in image_docs[: n_texts // 3]]
    images, captions, notes = [], [], []
    store = ds.images
    for doc in image_docs:
        if len(images) >= n_images:
            break
        if doc.doc_id not in store:
            continue
        try:
            images.append(load_rgb(store.read_bytes(doc.doc_id), item=f"image {doc.doc_id}"))
            captions.append(doc.caption)
        except ImageDecodeError as exc:
            notes.append(str(exc))
    # keep the edge cases the built-in sample covers (1 token, > 77 tokens) in every export
    texts += [BUILTIN_TEXTS[0], BUILTIN_TEXTS[6]]
    if not images:
        notes.append("no decodable image in the dataset: built-in pictures used")
        images, captions = builtin_images(), list(BUILTIN_CAPTIONS)
    return VerificationSample(texts, images, f"dataset:{os.fspath(data_dir)}", notes, captions)
