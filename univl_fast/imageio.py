"""Safe image decoding shared by the data layer, training and the torch-free runtime.

``load_rgb`` accepts a path, raw bytes or a PIL image and returns a fully decoded RGB PIL
image, or raises :class:`ImageDecodeError` naming the item and the problem. It never returns
a half-decoded image: truncated files, zero-byte files, unknown formats and decompression
bombs are all refused explicitly.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from univl_fast.errors import UnivlFastError

# Refuse images with more pixels than this (a 8k x 8k photo is 67M). Pillow's own default
# only warns below 2x its limit; we make the limit hard and explicit.
MAX_IMAGE_PIXELS = 89_478_485

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


class ImageDecodeError(UnivlFastError, ValueError):
    """An image could not be decoded. ``item`` names it (id, path or position)."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"image {item}: {reason}")
        self.item = item
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: Pillow's convert("RGB") clips at 255; rescale the full range.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = (hi - lo) or 1.0
        arr8 = np.clip((arr - lo) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, ...: Pillow's conversion (what open_clip does too)
    return img.convert("RGB")


def load_rgb(
    src: ImageSource, item: str | None = None, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``src`` into an RGB image, or raise ImageDecodeError naming ``item``.

    draft (width, height): a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps both sides >= these: much cheaper for large photos, but the pixels differ slightly
    from a full decode + resize (an opt-in speed/accuracy trade; other formats ignore it)."""
    if isinstance(src, Image.Image):
        name = item or "<PIL image>"
        if src.width * src.height > MAX_IMAGE_PIXELS:
            raise ImageDecodeError(name, f"{src.width}x{src.height} exceeds the pixel limit")
        try:
            return _to_rgb(src)
        except Exception as exc:  # noqa: BLE001 - any Pillow failure becomes a per-item error
            raise ImageDecodeError(name, f"cannot convert mode {src.mode}: {exc}") from exc

    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        name = item or "<bytes>"
        if not data:
            raise ImageDecodeError(name, "zero bytes")
        fh: io.BytesIO | Path = io.BytesIO(data)
    else:
        path = Path(src)
        name = item or str(path)
        try:
            if path.stat().st_size == 0:
                raise ImageDecodeError(name, "zero-byte file")
        except FileNotFoundError:
            raise ImageDecodeError(name, "file not found") from None
        fh = path

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fh) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ImageDecodeError(
                        name,
                        f"{img.width}x{img.height} exceeds the pixel limit (decompression bomb?)",
                    )
                if draft is not None and img.format == "JPEG":
                    img.draft("RGB", draft)
                img.load()  # force full decode: truncated data fails here, not later
                return _to_rgb(img)
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(name, f"decompression bomb refused ({exc})") from exc
        except UnidentifiedImageError:
            raise ImageDecodeError(name, "not a recognised image format") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(name, f"corrupt or truncated image ({exc})") from exc
