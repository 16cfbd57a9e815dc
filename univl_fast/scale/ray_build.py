"""Filling the shards of a distributed index build with Ray tasks (one per shard)."""

from __future__ import annotations

from typing import Any

import numpy as np

from univl_fast.index.sharded_build import fill_shard
from univl_fast.scale.ray_runtime import require_ray


def make_fill_ray(cpus_per_task: int = 1):
    """A ``fill`` for ``build.build_sharded_index`` that runs each shard as a Ray task with
    ``cpus_per_task`` CPUs (= its faiss threads); the trained index is put in the object store
    once and shared, each task gets only its row range."""
    ray = require_ray()

    @ray.remote(num_cpus=cpus_per_task, max_retries=2)
    def _fill(trained, out_dir, vectors, ids, codes, manifest, chunk):
        return fill_shard(trained, out_dir, vectors, ids, codes, manifest, chunk, cpus_per_task)

    def fill_ray(trained, ranges, vectors, ids, codes, manifest, chunk) -> list[dict[str, Any]]:
        trained_ref = ray.put(trained)
        refs = [
            _fill.remote(
                trained_ref,
                d,
                np.ascontiguousarray(vectors[a:b]),
                ids[a:b],
                codes[a:b],
                manifest,
                chunk,
            )
            for d, a, b in ranges
        ]
        return ray.get(refs)

    return fill_ray
