"""univl_fast: fast universal vision-language dense retrieval (UniVL-DR).

The serving API imports no torch: ``univl_fast.load(engine_dir, index=...)`` returns an
Engine with ``encode_queries``, ``encode_text_docs``, ``encode_image_docs`` and ``search``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from univl_fast.types import IMAGE, TEXT, Hit

if TYPE_CHECKING:  # pragma: no cover
    from univl_fast.search.engine import Engine

__version__ = "0.1.0"
__all__ = ["Hit", "TEXT", "IMAGE", "load", "__version__"]


def load(engine_dir, index=None, precision=None, backend=None, **kwargs) -> Engine:
    """Load an exported engine directory (and optionally an index directory built from it).

    precision: "fp32" | "fp16" | "int8" (default: the fastest whose parity passed).
    backend: "onnxruntime" | "tensorrt" (default: the best available here).
    """
    from univl_fast.search.engine import load as _load  # lazy: `import univl_fast` stays light

    return _load(engine_dir, index=index, precision=precision, backend=backend, **kwargs)
