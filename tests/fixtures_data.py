"""Session fixtures for the data stage.

``synth_tiny``: a ``tiny`` synthetic dataset (seed 0) generated once per test session; a
``pathlib.Path`` to a directory in the UniVL-DR layout (28 entities, 150 images, 250 texts,
150/40/40 queries). Treat it as read-only: other tests share it.
``dataset_with_bad_image``: (DatasetDir of a copy of it whose second image does not decode,
that image's id).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    from univl_fast.data.synth import generate

    return generate(
        tmp_path_factory.mktemp("data") / "synth_tiny", scale="tiny", seed=0, progress=False
    )


@pytest.fixture(scope="session")
def synth_tiny_dataset(synth_tiny):
    """``DatasetDir`` over ``synth_tiny``."""
    from univl_fast.data import DatasetDir

    return DatasetDir(synth_tiny)


@pytest.fixture(scope="session")
def dataset_with_bad_image(synth_tiny, tmp_path_factory):
    """A copy of synth_tiny whose second image no longer decodes (same byte length)."""
    import shutil

    from univl_fast.data import DatasetDir

    root = tmp_path_factory.mktemp("corpus") / "data"
    shutil.copytree(synth_tiny, root)
    lines = (root / "imgs.tsv").read_bytes().split(b"\n")
    image_id, payload = lines[1].split(b"\t", 1)
    lines[1] = image_id + b"\t" + b"AAAAAAAA" + payload[8:]  # valid base64, broken header
    (root / "imgs.tsv").write_bytes(b"\n".join(lines))
    return DatasetDir(root), image_id.decode()
