"""Session fixtures for the model stage."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_tiny_checkpoint(tmp_path_factory) -> Path:
    """A univl-tiny checkpoint dir with random weights (seed 0): model.safetensors +
    model_config.json (+ train_config.json)."""
    from univl_fast.model import UniVLDR

    out = tmp_path_factory.mktemp("random_tiny_checkpoint")
    model = UniVLDR.from_config("univl-tiny", seed=0)
    return model.save_pretrained(out, train_config={"stage": "random-init", "seed": 0})
