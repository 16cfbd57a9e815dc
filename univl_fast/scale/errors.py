"""Errors of the scale-out layer (all ``UnivlFastError``s, with their builtin bases)."""

from __future__ import annotations

from univl_fast.errors import UnivlFastError


class RayUnavailableError(UnivlFastError, ImportError):
    """Ray is needed (--ray, a Ray-hosted sharded index) but is not installed."""


class ShardTimeoutError(UnivlFastError, TimeoutError):
    """A shard did not answer within its timeout (or its actor died), and partial results
    were not asked for (``search_partial`` returns them)."""
