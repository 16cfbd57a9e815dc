"""What this host must do with an engine, read from the engine's manifest (not a test module).

No test assumes int8 exists: the exporter writes an int8 artifact only where its parity passed
on the exporting host (on AVX2-only x86, ONNX Runtime's u8s8 int8 kernels saturate and the
check refuses them). A test that exercises int8 asks :func:`int8_route` first; where a verified
route exists it tests int8, where none does it asserts the fallback and its reason
(:func:`assert_int8_fallback`) instead of skipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

BACKEND = "onnxruntime-cpu"


@dataclass(frozen=True)
class Route:
    """Whether a precision / runtime may serve here, and why not (None when it may)."""

    verified: bool
    reason: str | None

    def __str__(self) -> str:
        return "verified" if self.verified else f"not verified: {self.reason}"


def _manifest(engine_dir: str | Path) -> dict:
    from univl_fast.runtime.manifest import load_manifest

    return load_manifest(engine_dir)


def int8_route(engine_dir: str | Path) -> Route:
    """The int8 graphs of both towers: written and their parity (towers and image-document
    vector) passed at export."""
    from univl_fast.runtime import selection

    m = _manifest(engine_dir)
    if "int8" not in selection.available_precisions(m):
        why = selection.parity_problem(m, "int8") or "no int8 graphs for both towers"
        return Route(False, why)
    problem = selection.parity_problem(m, "int8")
    return Route(problem is None, problem)


def native_text_written(engine_dir: str | Path) -> Route:
    """The native int8 text tower's weights are in the engine (its parity passed at export;
    usable by name on any CPU), else why not (the manifest's reason)."""
    return _native_written(engine_dir, "text", "reason")


def native_image_written(engine_dir: str | Path) -> Route:
    """The native int8 image tower's weights are in the engine (usable by name)."""
    return _native_written(engine_dir, "image", "image_reason")


def _native_written(engine_dir: str | Path, tower: str, reason_key: str) -> Route:
    native = _manifest(engine_dir).get("native", {})
    if "int8" in native.get(tower, {}):
        return Route(True, None)
    return Route(False, native.get(reason_key) or f"no native {tower} tower")


def assert_int8_fallback(engine_dir: str | Path) -> str:
    """The engine has no verified int8 route: the manifest says why (a refused or unmeasured
    int8 parity record with its reason), ``auto`` serves fp32, and int8 asked for by name is
    refused with an error naming what the engine has. Returns the reason."""
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.manifest import EngineError

    route = int8_route(engine_dir)
    assert not route.verified, f"{engine_dir}: int8 is verified here; no fallback to assert"
    assert route.reason, "an int8 route that is not verified must say why"
    m = _manifest(engine_dir)
    records = [m["parity"].get(part, {}).get("int8") for part in ("text", "image")]
    assert any(r is not None and not r.get("passed") for r in records), records
    assert all(r is None or r.get("reason") or r.get("passed") for r in records), records
    enc = Encoder(engine_dir)
    assert enc.precision == "fp32", f"auto picked {enc.precision} without a verified int8"
    assert enc.text_runtime == "onnxruntime" and enc.image_runtime == "onnxruntime"
    if "int8" not in _available(m):
        with pytest.raises(EngineError, match=r"no 'int8' graphs for both towers \(has fp32"):
            Encoder(engine_dir, precision="int8")
    return route.reason


def _available(m: dict) -> list[str]:
    from univl_fast.runtime import selection

    return selection.available_precisions(m)
