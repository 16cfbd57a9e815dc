"""Session fixtures for the data stage.

``synth_tiny``: a ``tiny`` synthetic dataset (seed 0) generated once per test session; a
``pathlib.Path`` to a directory in the UniVL-DR layout (28 entities, 150 images, 250 texts,
150/40/40 queries). Treat it as read-only: other tests share it.
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
