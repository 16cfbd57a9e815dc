"""Session fixtures for the engine stage.

``tiny_engine``: the random univl-tiny checkpoint (``random_tiny_checkpoint``) exported once
per session with fp32 + int8 graphs, verified on the built-in sample. A ``pathlib.Path`` to
the engine dir; treat it as read-only (other tests share it): copy it before tampering. What
it holds depends on the host: an int8 artifact is written only where its parity passed here
(``tests.host_routes`` says which, and the tests assert the fallback where none did).
``tiny_engine_no_int8``: the same export with every int8 artifact refused by its parity check
(what an AVX2-only host's ONNX Runtime int8 kernels give), so every host tests the fallback.
``tiny_engine_fp16``: the same with fp32 + fp16 + int8 (export tests only).
``tiny_engine_trt``: the same exported through the CLI with ``--tensorrt`` (fp16 plans); only
for tests marked ``needs_tensorrt``.

``UNIVL_TEST_REFUSE_INT8=1`` makes ``tiny_engine`` itself refuse int8: the whole suite then
runs as on a host with no verified int8 route (how the AVX2 failures are found natively).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REFUSE_INT8_ENV = "UNIVL_TEST_REFUSE_INT8"


def refuse_int8_here() -> bool:
    """``UNIVL_TEST_REFUSE_INT8=1``: the suite runs as on a host with no verified int8 route."""
    return os.environ.get(REFUSE_INT8_ENV, "").strip() == "1"


def limits_refusing_int8(limits: Callable) -> Callable:
    """``ExportConfig.limits`` wrapped so that int8 gets limits no artifact can meet (cosine 1,
    relative L2 0): the export refuses every int8 graph and native tower through its ordinary
    parity path, recording why, as it does where a host's int8 kernels saturate."""
    from univl_fast.export.config import Limits

    def refusing(self, precision: str) -> Limits:
        if precision == "int8":
            return Limits(min_cosine=1.0, max_rel_l2=0.0, max_norm_deviation=0.0)
        return limits(self, precision)

    return refusing


def refusing_int8_config(precisions: list[str]):
    """An ExportConfig whose int8 limits no artifact can meet (``limits_refusing_int8``)."""
    from univl_fast.export.config import ExportConfig

    class RefuseInt8(ExportConfig):
        limits = limits_refusing_int8(ExportConfig.limits)

    return RefuseInt8(precisions=list(precisions))


def export_checkpoint(
    checkpoint: Path, out: Path, precisions: list[str], refuse_int8: bool = False
) -> Path:
    """Export a checkpoint dir in-process (no progress bar); returns ``out``. ``refuse_int8``:
    every int8 artifact misses parity (``refusing_int8_config``)."""
    from univl_fast.export.build import ModelSpec, export_engine
    from univl_fast.export.config import ExportConfig
    from univl_fast.model import UniVLDR

    model = UniVLDR.from_pretrained(checkpoint)
    spec = ModelSpec.from_model_config(model.config.to_json(), {"checkpoint": str(checkpoint)})
    if refuse_int8:
        config = refusing_int8_config(precisions)
    else:
        config = ExportConfig(precisions=list(precisions))
    export_engine(model.clip, spec, out, config, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir of the random univl-tiny checkpoint: text/image fp32 + int8 graphs (int8
    where its parity passes on this host)."""
    out = tmp_path_factory.mktemp("engines") / "tiny_engine"
    refuse = refuse_int8_here()
    return export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "int8"], refuse)


@pytest.fixture(scope="session")
def tiny_engine_no_int8(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir of the same checkpoint whose every int8 artifact was refused at export."""
    out = tmp_path_factory.mktemp("engines") / "tiny_engine_no_int8"
    return export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "int8"], True)


@pytest.fixture(scope="session")
def tiny_engine_all(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir of the random univl-tiny checkpoint with fp32 + fp16 + int8 graphs."""
    out = tmp_path_factory.mktemp("engines") / "tiny_engine_all"
    refuse = refuse_int8_here()
    return export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "fp16", "int8"], refuse)


@pytest.fixture(scope="session")
def tiny_engine_trt(tmp_path_factory, random_tiny_checkpoint) -> Path:
    """Engine dir with TensorRT fp16 plans, built once through ``python -m univl_fast.export``."""
    from univl_fast.export.cli import main

    out = tmp_path_factory.mktemp("engines") / "tiny_engine_trt"
    argv = ["--checkpoint", str(random_tiny_checkpoint), "--out", str(out), "--tensorrt"]
    assert main([*argv, "--quiet"]) == 0
    return out
