"""open_clip's eval image transform with Pillow and numpy only (torch-free).

Mirrors ``open_clip.image_transform(size, is_train=False)`` with ``resize_mode="shortest"``
(the default), as torchvision computes it on PIL images:

1. ``Resize(size)``: the shorter side becomes ``size``, the longer ``int(size * long /
   short)`` (truncated, torchvision's rule); skipped when the image already has that size;
   resampled with Pillow (bicubic by default).
2. ``CenterCrop(size)``: offsets ``int(round((h - size) / 2))`` (Python's round-half-even),
   zero padding first if a side is smaller than ``size`` (cannot happen after step 1 for a
   square target, kept for non-square ones).
3. ``ToTensor`` + ``Normalize``: uint8 -> float32 / 255, then ``(x - mean) / std`` in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How pictures become ``pixel_values`` (stored in the engine manifest)."""

    image_size: int | tuple[int, int] = 224  # square side, or (height, width)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN  # per-channel RGB mean (0..1 scale)
    std: tuple[float, float, float] = OPENAI_CLIP_STD  # per-channel RGB std
    interpolation: str = "bicubic"  # Pillow resampling filter name
    resize_mode: str = "shortest"  # only open_clip's default "shortest" is supported

    @property
    def size_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


def _resize_shortest(img: Image.Image, size_hw: tuple[int, int], resample: int) -> Image.Image:
    w, h = img.size
    th, tw = size_hw
    if th == tw:
        # torchvision Resize(int): shorter edge -> size, longer edge truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = th, int(th * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        # open_clip ResizeKeepRatio(size) for non-square targets (longest=0, no random)
        ratio = min(h / th, w / tw)
        new_h, new_w = int(round(h / ratio)), int(round(w / ratio))
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def _center_crop(img: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    th, tw = size_hw
    w, h = img.size
    if tw > w or th > h:
        pad_l = (tw - w) // 2 if tw > w else 0
        pad_t = (th - h) // 2 if th > h else 0
        pad_r = (tw - w + 1) // 2 if tw > w else 0
        pad_b = (th - h + 1) // 2 if th > h else 0
        canvas = Image.new(img.mode, (w + pad_l + pad_r, h + pad_t + pad_b), 0)
        canvas.paste(img, (pad_l, pad_t))
        img = canvas
        w, h = img.size
        if (w, h) == (tw, th):
            return img
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


class ImagePreprocessor:
    """RGB PIL images -> ``pixel_values`` float32 (n, 3, H, W), normalized."""

    def __init__(self, config: PreprocessConfig):
        if config.resize_mode != "shortest":
            raise ValueError(f"resize_mode {config.resize_mode!r}: only 'shortest' is supported")
        if config.interpolation not in _RESAMPLE:
            raise ValueError(
                f"interpolation {config.interpolation!r}: expected one of {sorted(_RESAMPLE)}"
            )
        self.config = config
        self._resample = _RESAMPLE[config.interpolation]
        self._mean = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1)

    def one(self, img: Image.Image) -> np.ndarray:
        """One RGB image -> float32 (3, H, W)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        size = self.config.size_hw
        img = _center_crop(_resize_shortest(img, size, self._resample), size)
        arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
        arr /= np.float32(255.0)
        arr -= self._mean
        arr /= self._std
        return arr

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> float32 (n, 3, H, W), C-contiguous."""
        h, w = self.config.size_hw
        out = np.empty((len(images), 3, h, w), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = self.one(img)
        return out
