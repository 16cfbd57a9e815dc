"""Image documents to pixel batches (univl_fast.runtime.image_batches): the decode-ahead pipeline
gives exactly the inline results, bad items stay per item, JPEG draft decoding is opt-in."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.generators.photos import photo_like_jpegs
from univl_fast.imageio import load_rgb
from univl_fast.runtime.encoder import _check_text
from univl_fast.runtime.image_batches import decoded_batches
from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig

PRE = ImagePreprocessor(PreprocessConfig(64))


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return photo_like_jpegs(7, seed=3)


def _collect(images, captions, workers, batch_size=3, draft=False):
    batches = list(decoded_batches(images, captions, PRE, batch_size, _check_text, workers, draft))
    # a batch's pixels stay valid while the next are decoded: copy as the caller would use them
    return [(b.pixels.copy(), b.captions, b.indices, b.errors) for b in batches]


@pytest.mark.parametrize("workers", [1, 3])
def test_pipeline_equals_inline_with_bad_items(jpegs, workers):
    images = [jpegs[0], b"not an image", jpegs[1], jpegs[2], jpegs[3], b"", jpegs[4], jpegs[5]]
    caps = ["a", "b", b"\xff", "d", "e", "f", "g", "h"]
    inline = _collect(images, caps, 0)
    ahead = _collect(images, caps, workers)
    assert len(inline) == len(ahead) == 3
    for (p0, c0, i0, e0), (p1, c1, i1, e1) in zip(inline, ahead, strict=True):
        np.testing.assert_array_equal(p0, p1)
        assert (c0, i0, e0) == (c1, i1, e1)
    indices = [i for b in inline for i in b[2]]
    assert indices == [0, 3, 4, 6, 7]
    errors = dict(e for b in inline for e in b[3])
    assert set(errors) == {1, 2, 5}
    assert "not a recognised image format" in errors[1] and "caption" in errors[2]
    assert "zero bytes" in errors[5]
    pixels = np.concatenate([b[0] for b in inline])
    want = PRE([load_rgb(images[i]) for i in indices])
    np.testing.assert_array_equal(pixels, want)


def test_encoder_decode_workers_same_vectors(tiny_engine, jpegs):
    from univl_fast.runtime import Encoder

    caps = [f"photo {i}" for i in range(len(jpegs))]
    plain = Encoder(tiny_engine, batch_size=3).encode_image_docs(jpegs, caps)
    piped = Encoder(tiny_engine, batch_size=3, decode_workers=2)
    np.testing.assert_array_equal(piped.encode_image_docs(jpegs, caps), plain)
    with pytest.raises(ValueError, match="decode_workers must be >= 0"):
        Encoder(tiny_engine, decode_workers=-1)


def test_jpeg_draft_is_opt_in_and_close(jpegs):
    """Draft decoding changes JPEG pixels (DCT-domain downscaling) but keeps the picture; other
    formats are decoded exactly as without it."""
    exact = _collect(jpegs, ["x"] * len(jpegs), 0, batch_size=8)[0][0]
    draft = _collect(jpegs, ["x"] * len(jpegs), 0, batch_size=8, draft=True)[0][0]
    assert not np.array_equal(exact, draft)
    diff = np.abs(exact - draft).mean(axis=(1, 2, 3))
    assert diff.max() < 0.1, diff  # normalised units: a small change, same picture
    png = io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, "PNG")
    p_exact = _collect([png.getvalue()], ["x"], 0)[0][0]
    p_draft = _collect([png.getvalue()], ["x"], 0, draft=True)[0][0]
    np.testing.assert_array_equal(p_exact, p_draft)
