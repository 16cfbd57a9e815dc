"""Session fixtures for the engine stage.

``tiny_engine``: the random univl-tiny checkpoint (``random_tiny_checkpoint``) exported once
per session with fp32 + int8 graphs, verified on the built-in sample. A ``pathlib.Path`` to
the engine dir; treat it as read-only (other tests share it): copy it before tampering.
``tiny_engine_fp16``: the same with fp32 + fp16 + int8 (export tests only).
``tiny_engine_trt``: the same exported through the CLI with ``--tensorrt`` (fp16 plans); only
for tests marked ``needs_tensorrt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def export_checkpoint(checkpoint: Path, out: Path, precisions: list[str]) -> Path:
    """Export a checkpoint dir in-process (no progress bar); returns ``out``."""
    from univl_fast.export.build import ModelSpec, export_engine
    from univl_fast.export.config import ExportConfig
    from univl_fast.model import UniVLDR

    model = UniVLDR.from_pretrained(checkpoint)
    spec = ModelSpec.from_model_config(model.config.to_json(), {"checkpoint": str(checkpoint)})
    export_engine(model.clip, spec, out, ExportConfig(precisions=list(precisions)), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir of the random univl-tiny checkpoint: text/image fp32 + int8 graphs."""
    out = tmp_path_factory.mktemp("engines") / "tiny_engine"
    return export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "int8"])


@pytest.fixture(scope="session")
def tiny_engine_all(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir of the random univl-tiny checkpoint with fp32 + fp16 + int8 graphs."""
    out = tmp_path_factory.mktemp("engines") / "tiny_engine_all"
    return export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "fp16", "int8"])


@pytest.fixture(scope="session")
def tiny_engine_trt(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir with TensorRT fp16 plans, built once through ``python -m univl_fast.export``."""
    from univl_fast.export.cli import main

    out = tmp_path_factory.mktemp("engines") / "tiny_engine_trt"
    argv = ["--checkpoint", str(random_tiny_checkpoint), "--out", str(out), "--tensorrt"]
    assert main([*argv, "--quiet"]) == 0
    return out
