"""Searching through an engine: ``Engine`` (exported encoder + index + the compiled query
batcher; ``load``) in ``engine``, and ``batching`` (the Python face of ``_C.QueryBatcher``)."""

from univl_fast.search.engine import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_WAIT_US,
    Engine,
    EngineConfig,
    SearchError,
    load,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "SearchError",
    "load",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_US",
]
