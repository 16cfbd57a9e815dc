"""Pillow + numpy preprocessing against open_clip's own eval transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from univl_fast.imageio import load_rgb  # noqa: E402
from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig  # noqa: E402

SIZES = [
    (224, 224),
    (640, 480),
    (480, 640),
    (100, 37),
    (1000, 225),
    (225, 1000),
    (223, 224),
    (50, 50),
    (301, 299),
    (1, 500),
    (3, 2),
    (1025, 59),
    (97, 97),
]


def reference(size: int, mean=None, std=None, interpolation="bicubic"):
    from open_clip.transform import image_transform

    return image_transform(size, is_train=False, mean=mean, std=std, interpolation=interpolation)


@pytest.mark.parametrize("image_size", [224, 64])
def test_matches_open_clip(image_size):
    rng = np.random.default_rng(image_size)
    ref = reference(image_size)
    ours = ImagePreprocessor(PreprocessConfig(image_size))
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    batch = ours(imgs)
    assert batch.shape == (len(imgs), 3, image_size, image_size) and batch.dtype == np.float32
    for img, row in zip(imgs, batch, strict=True):
        expected = ref(img).numpy()
        assert np.abs(expected - row).max() <= 1e-6, img.size


def test_custom_mean_std_and_bilinear():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ref = reference(96, mean, std, "bilinear")
    ours = ImagePreprocessor(PreprocessConfig(96, mean, std, "bilinear"))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (150, 333, 3), dtype=np.uint8))
    assert np.abs(ref(img).numpy() - ours.one(img)).max() <= 1e-6


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "1"])
def test_modes_decoded_like_open_clip(mode):
    """Through load_rgb, every mode ends up as open_clip would see it (Pillow's RGB)."""
    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    data = _encode(base, fmt)
    ours = ImagePreprocessor(PreprocessConfig(64)).one(load_rgb(data))
    expected = reference(64)(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    assert np.abs(expected - ours).max() <= 1e-6


def test_16bit_grayscale_uses_full_range():
    arr = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    img = Image.fromarray(arr)
    rgb = load_rgb(_encode(img, "PNG"))
    px = np.asarray(rgb)
    assert rgb.mode == "RGB" and px.max() >= 250 and px.min() <= 5


def test_bad_config():
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocessor(PreprocessConfig(64, interpolation="cubic-ish"))
    with pytest.raises(ValueError, match="resize_mode"):
        ImagePreprocessor(PreprocessConfig(64, resize_mode="squash"))
