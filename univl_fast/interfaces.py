"""The typed joins between stages: what the engine needs of an encoder and of an index, and
what the service (``univl_fast.serve``) needs of an engine. ``typing.Protocol``s, so any
object with these members fits (``runtime.Encoder``; ``index.Index``, ``ShardedIndex``,
``scale.ray_shards.RayShardedIndex``; ``search.Engine``) and nothing here imports a stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from univl_fast.types import Hit


@runtime_checkable
class QueryEncoder(Protocol):
    """What ``Engine`` needs of an encoder (``univl_fast.runtime.Encoder``)."""

    dim: int
    manifest: dict[str, Any]
    manifest_sha256: str
    embedding_space: dict[str, Any] | None
    precision: str
    backend: str
    text_runtime: str
    image_runtime: str

    @property
    def encoding(self) -> dict[str, Any]: ...

    def encode_queries(self, texts: Sequence[str], on_error: Any = "raise") -> Any: ...

    def encode_text_docs(self, texts: Sequence[str], on_error: Any = "raise") -> Any: ...

    def encode_image_docs(
        self, images: Sequence[Any], captions: Sequence[str], on_error: Any = "raise"
    ) -> Any: ...

    def with_text_threads(self, threads: Any) -> QueryEncoder: ...


@runtime_checkable
class SearchIndex(Protocol):
    """What ``Engine`` (and the evaluation) needs of an index: ``index.base.SearchableIndex``
    and its subclasses."""

    manifest: dict[str, Any]
    doc_ids: list[str]
    encoding_mismatch: str | None

    @property
    def ntotal(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def modalities(self) -> list[str]: ...

    @property
    def embedding_space(self) -> dict[str, Any] | None: ...

    @property
    def encoding(self) -> dict[str, Any] | None: ...

    def search(
        self, queries: np.ndarray, k: int, params: Any = None, modality: str | None = None
    ) -> list[list[Hit]]: ...


@runtime_checkable
class SearchEngine(Protocol):
    """What the service needs of an engine (``univl_fast.search.Engine``)."""

    @property
    def dim(self) -> int: ...

    @property
    def has_index(self) -> bool: ...

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        modality: str | None = None,
        timeout: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[list[Hit]]: ...

    def encode_text_docs(self, texts: Sequence[str], on_error: str = "raise") -> Any: ...

    def encode_image_docs(
        self, images: Sequence[Any], captions: Sequence[str], on_error: str = "raise"
    ) -> Any: ...

    def describe(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
