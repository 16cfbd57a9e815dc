"""Building the engine manifest (export side). Reading/verifying lives in
``univl_fast.runtime.manifest`` so the torch-free runtime does not import this package."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
from pathlib import Path
from typing import Any

from univl_fast.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME
from univl_fast.utils.io import atomic_write_json, sha256_file

__all__ = [
    "MANIFEST_NAME",
    "embedding_space",
    "file_entry",
    "tool_versions",
    "trt_version",
    "write_manifest",
]

# state_dict entries that do not shape the embeddings (the contrastive loss's temperature)
_NOT_EMBEDDING = ("logit_scale", "logit_bias")


def file_entry(root: Path, rel: str, **info: Any) -> dict[str, Any]:
    path = root / rel
    return {"sha256": sha256_file(path), "size": path.stat().st_size, **info}


def embedding_space(clip, spec, vocab: Path) -> dict[str, Any]:
    """The id of the space the engine's vectors live in: sha256 over the model's float32
    weights (every state_dict entry but the logit scale: name, shape, values, in name order),
    the tokenizer vocabulary, the context length, the image preprocessing and the embedding
    dim. Re-exports of the same weights give the same id whatever the precisions, plans,
    tool versions or date; another model (or a fine-tune of it) another. Indexes record it
    (``univl_fast.index``) and refuse an engine of another space."""
    import torch

    h = hashlib.sha256(b"univl-fast embedding space 1\0")
    for name, tensor in sorted(clip.state_dict().items()):
        if name.split(".")[-1] in _NOT_EMBEDDING:
            continue
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.to(torch.float32)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    h.update(bytes.fromhex(sha256_file(vocab)))
    shape = {
        "embed_dim": spec.embed_dim,
        "context_length": spec.context_length,
        "image_size": spec.image_size,
        "mean": spec.mean,
        "std": spec.std,
        "interpolation": spec.interpolation,
        "resize_mode": spec.resize_mode,
    }
    h.update(json.dumps(shape, sort_keys=True).encode())
    return {
        "id": f"sha256:{h.hexdigest()}",
        "dim": int(spec.embed_dim),
        "of": "float32 model weights (no logit scale) + vocabulary + preprocessing + dim",
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def trt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt as trt

    return str(trt.__version__)


def tool_versions() -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

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
