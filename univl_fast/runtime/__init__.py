"""Torch-free runtime: tokenizer, image preprocessing, backends and the :class:`Encoder` over an
exported engine directory. Nothing here imports torch or open_clip."""

from univl_fast.runtime.backends import BackendUnavailable, ThreadSettings, available_backends
from univl_fast.runtime.encoder import EncodeError, Encoder, EncodeResult, ItemError
from univl_fast.runtime.manifest import EngineError, load_manifest, manifest_sha256

__all__ = [
    "BackendUnavailable",
    "EncodeError",
    "EncodeResult",
    "Encoder",
    "EngineError",
    "ItemError",
    "ThreadSettings",
    "available_backends",
    "load_manifest",
    "manifest_sha256",
]
