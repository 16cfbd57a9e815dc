"""Photo-like JPEG pictures for benchmarks and tests (Pillow + numpy, deterministic).

No sample-photo package (scikit-image, matplotlib) is a dependency, so realistic inputs are drawn:
1/f noise (the power spectrum of natural images) in correlated colour channels, a sky-like
vertical gradient, a slight blur, saved as JPEG (quality 70-95) at photo sizes (320-800 px a
side by default, WebQA's range): decoding and resizing them costs what a user's photos cost,
unlike flat synthetic shapes. ``write_image_corpus`` stores them as ``imgs.tsv`` +
``imgs.lineidx.new``, the layout a user's corpus has (``univl_fast.data.images``).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def photo_like_jpegs(
    n: int, seed: int = 0, min_side: int = 320, max_side: int = 800
) -> list[bytes]:
    """``n`` JPEG files (bytes) of photo-like RGB pictures, sides in [min_side, max_side]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = (int(rng.integers(min_side, max_side + 1)) for _ in range(2))
        field = np.zeros((h, w, 3), np.float32)
        for octave in range(1, 7):
            cells = 2**octave
            noise = (rng.standard_normal((cells, cells, 3)) @ rng.standard_normal((3, 3))).mean(2)
            up = Image.fromarray(noise.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC)
            field += np.asarray(up)[..., None] * (rng.uniform(0.5, 1.5, 3) / octave)
        field += np.linspace(1.5, -1.5, h, dtype=np.float32)[:, None, None] * rng.uniform(0, 1, 3)
        pic = np.clip(128 + 40 * field, 0, 255).astype(np.uint8)
        img = Image.fromarray(pic, "RGB").filter(ImageFilter.GaussianBlur(1.2))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        out.append(buf.getvalue())
    return out


def write_image_corpus(
    out_dir: str | os.PathLike, images: list[bytes], prefix: str = "p"
) -> list[str]:
    """Write ``images`` as ``out_dir/imgs.tsv`` (``id<TAB>base64``) + its line index; returns
    the ids (``{prefix}{i}``)."""
    from univl_fast.data.images import write_lineidx

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{prefix}{i}" for i in range(len(images))]
    with open(root / "imgs.tsv", "wb") as f:
        for image_id, data in zip(ids, images, strict=True):
            f.write(image_id.encode() + b"\t" + base64.b64encode(data) + b"\n")
    write_lineidx(root / "imgs.tsv")
    return ids


__all__ = ["photo_like_jpegs", "write_image_corpus"]
