"""Building the engine manifest (export side). Reading/verifying lives in
``univl_fast.runtime.manifest`` so the torch-free runtime does not import this package."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from univl_fast.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME
from univl_fast.utils.io import atomic_write_json, sha256_file

__all__ = ["MANIFEST_NAME", "file_entry", "tool_versions", "write_manifest"]


def file_entry(root: Path, rel: str, **info: Any) -> dict[str, Any]:
    path = root / rel
    return {"sha256": sha256_file(path), "size": path.stat().st_size, **info}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    from univl_fast.export.tensorrt import trt_version

    return {
        "univl_fast": _version("univl-fast"),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": _version("onnxscript"),
        "tensorrt": trt_version(),
        "python": platform.python_version(),
    }


def write_manifest(root: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` atomically (the last file an export writes)."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **body,
    }
    atomic_write_json(root / MANIFEST_NAME, manifest)
    return manifest
