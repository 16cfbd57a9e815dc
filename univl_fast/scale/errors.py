"""Errors of the scale-out layer (all ``UnivlFastError``s, with their builtin bases)."""

from __future__ import annotations

from univl_fast.errors import UnivlFastError
from univl_fast.index.params import ShardTimeoutError  # noqa: F401 - its home is index/


class RayUnavailableError(UnivlFastError, ImportError):
    """Ray is needed (--ray, a Ray-hosted sharded index) but is not installed."""
