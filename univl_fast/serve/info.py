"""``GET /info``: what the service runs (model, precision, runtime, index and its measured
recall, limits, versions), computed once."""

from __future__ import annotations

import platform
from typing import Any

import univl_fast
from univl_fast.serve.config import ServeConfig


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _verification(enc: Any) -> dict[str, Any] | None:
    """The load-time parity check in brief: per tower its status and why, the fallbacks."""
    v = getattr(enc, "verification", None)
    if not isinstance(v, dict):
        return None
    return {
        "mode": v.get("mode"),
        "seconds": v.get("seconds"),
        "towers": {
            t: {k: c.get(k) for k in ("key", "runtime", "status", "reason", "host_class")}
            for t, c in (v.get("towers") or {}).items()
        },
        "fallbacks": v.get("fallbacks", []),
    }


def service_info(engine: Any, config: ServeConfig) -> dict[str, Any]:
    enc = engine.encoder
    manifest = getattr(enc, "manifest", {}) or {}
    index_manifest = dict(getattr(engine.index, "manifest", {}) or {})
    tuning = index_manifest.get("tuning", {}) or {}
    engine_cfg = getattr(engine, "config", None)
    return {
        "service": "univl-fast",
        "model": manifest.get("model_name") or (manifest.get("model_config") or {}).get("name"),
        "dim": int(engine.dim),
        "precision": getattr(enc, "precision", None),
        "backend": getattr(enc, "backend", None),
        "text_runtime": getattr(enc, "text_runtime", None),
        "image_runtime": getattr(enc, "image_runtime", None),
        "engine_sha256": getattr(enc, "manifest_sha256", None),
        "verification": _verification(enc),
        "engine": engine_cfg.to_dict() if hasattr(engine_cfg, "to_dict") else None,
        "index": {
            "factory": index_manifest.get("factory"),
            "ntotal": int(engine.index.ntotal),
            "modality_counts": index_manifest.get("modality_counts"),
            "search_params": index_manifest.get("search_params"),
            "recall": tuning.get("recall_at_k"),
            "recall_k": tuning.get("k"),
            "target_recall": tuning.get("target_recall"),
        },
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
