"""Starting or joining Ray for the scale-out commands (the only place that decides how)."""

from __future__ import annotations

import logging
from typing import Any

from univl_fast.scale.errors import RayUnavailableError

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: pip install 'univl-fast[ray]' (scripts/setup.sh does)"


def require_ray() -> Any:
    """The ``ray`` module, or RayUnavailableError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError(f"Ray is not installed ({exc}); {INSTALL_HINT}") from None
    return ray


def init_ray(address: str | None = "local", num_cpus: int | None = None) -> Any:
    """Join or start Ray once per process; returns the ``ray`` module.

    address: "local" starts a private single-node Ray (``num_cpus`` CPUs, no dashboard);
    "auto" joins the cluster this machine belongs to (``ray start`` / KubeRay); anything else
    is a cluster address ("ray://host:10001" or "host:6379"). Already initialized: unchanged.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address in (None, "", "local"):
        log.info("starting a local Ray with %s CPUs", num_cpus or "all")
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    else:
        # engine, dataset and work dirs are read by path on every node: shared storage
        log.info("joining Ray at %s", address)
        ray.init(address=address)
    return ray
