"""Image documents -> batches of preprocessed pixels, optionally decoded ahead on threads.

``decoded_batches`` turns (image, caption) pairs into batches the image tower runs: each item
decoded (``univl_fast.imageio.load_rgb``) and preprocessed straight into a reusable float32
batch buffer, its caption checked, bad items reported per item. With ``workers`` >= 1 the
next batch is decoded on a thread pool while the caller runs the tower on the current one
(Pillow's decoder and resampler and both towers release the GIL): a pipeline for machines with
cores to spare beside the tower's threads. Two buffers alternate, so a batch's pixels stay
valid until the caller asks for the next batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from univl_fast.imageio import ImageDecodeError, ImageSource, load_rgb
from univl_fast.runtime.preprocess import ImagePreprocessor


@dataclass
class DecodedBatch:
    pixels: np.ndarray  # float32 (k, 3, H, W): the good items, in input order
    captions: list[str]
    indices: list[int]  # input position of each good item
    errors: list[tuple[int, str]] = field(default_factory=list)  # (input position, reason)


def _decode_one(
    pre: ImagePreprocessor,
    check_text: Callable[[Any], str],
    i: int,
    img: ImageSource,
    cap: Any,
    out: np.ndarray,
    draft: tuple[int, int] | None,
) -> str | tuple[str]:
    """Decode + preprocess item ``i`` into ``out``: its checked caption, or (reason,)."""
    try:
        text = check_text(cap)
    except ValueError as exc:
        return (f"caption: {exc}",)
    name = str(img) if isinstance(img, (str, os.PathLike)) else f"#{i}"
    try:
        out[...] = pre.one(load_rgb(img, item=name, draft=draft))
    except ImageDecodeError as exc:
        return (str(exc),)
    except Exception as exc:  # noqa: BLE001 - any per-image failure stays per-item
        return (f"image {name}: {type(exc).__name__}: {exc}",)
    return text


def decoded_batches(
    images: Sequence[ImageSource],
    captions: Sequence[Any],
    pre: ImagePreprocessor,
    batch_size: int,
    check_text: Callable[[Any], str],
    workers: int = 0,
    jpeg_draft: bool = False,
) -> Iterator[DecodedBatch]:
    """Batches of ``batch_size`` items (the last shorter), in input order. workers: 0 decodes
    inline when a batch is asked for; >= 1 decodes the next batch ahead on that many threads.
    jpeg_draft: decode JPEGs at a reduced DCT scale (``load_rgb``'s draft; not exact)."""
    h, w = pre.config.size_hw
    draft = (w, h) if jpeg_draft else None
    n = len(images)
    starts = list(range(0, n, batch_size))
    buffers = [
        np.empty((min(batch_size, n), 3, h, w), np.float32) for _ in range(2 if workers else 1)
    ]

    def fill(k: int, run: Callable) -> Callable[[], DecodedBatch]:
        """Start decoding batch k; returns what collects it."""
        s = starts[k]
        items = range(s, min(s + batch_size, n))
        buf = buffers[k % len(buffers)]
        results = run(
            lambda j: _decode_one(pre, check_text, j, images[j], captions[j], buf[j - s], draft),
            items,
        )

        def collect() -> DecodedBatch:
            b = DecodedBatch(buf[:0], [], [])
            good: list[int] = []
            for j, r in zip(items, results(), strict=True):
                if isinstance(r, tuple):
                    b.errors.append((j, r[0]))
                else:
                    b.captions.append(r)
                    b.indices.append(j)
                    good.append(j - s)
            full = len(good) == len(items)
            b.pixels = buf[: len(items)] if full else buf[good]
            return b

        return collect

    if not workers:
        for k in range(len(starts)):
            yield fill(k, lambda f, it: lambda: [f(j) for j in it])()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="univl-decode") as pool:

        def run(f, it):
            futures = [pool.submit(f, j) for j in it]
            return lambda: [fu.result() for fu in futures]

        pending = fill(0, run) if starts else None
        for k in range(len(starts)):
            current = pending()
            pending = fill(k + 1, run) if k + 1 < len(starts) else None
            yield current


__all__ = ["DecodedBatch", "decoded_batches"]
