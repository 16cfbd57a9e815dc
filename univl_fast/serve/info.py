"""``GET /info``: what the service runs (model, precision, runtime, index and its measured
recall, limits, versions), computed once."""

from __future__ import annotations

import platform
from typing import Any

import univl_fast
from univl_fast.interfaces import SearchEngine
from univl_fast.serve.config import ServeConfig


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def service_info(engine: SearchEngine, config: ServeConfig) -> dict[str, Any]:
    return {
        "service": "univl-fast",
        **engine.describe(),
        "limits": config.public_dict(),
        "versions": {
            "univl_fast": univl_fast.__version__,
            "python": platform.python_version(),
            "onnxruntime": _version("onnxruntime"),
            "faiss": _version("faiss-cpu") or _version("faiss-gpu"),
            "fastapi": _version("fastapi"),
            "uvicorn": _version("uvicorn"),
        },
    }
