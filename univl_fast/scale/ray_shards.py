"""Shards hosted by Ray actors (one per shard, anywhere in the cluster): fan-out, per-shard
timeout, top-k merge on the caller. Same results as ``sharded.ShardedIndex`` at the same
parameters: the caller runs the shared coarse quantizer once (from the trained index) and
sends its assignment with the queries; each actor scans its shard and returns candidates.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from univl_fast.index.binding import check_binding
from univl_fast.index.params import SearchParams, ShardTimeoutError
from univl_fast.index.sharded import (
    TRAINED_FILE,
    ShardedSearch,
    check_sharded_files,
    is_sharded,
    shard_candidates,
)
from univl_fast.index.store import load_index, read_manifest
from univl_fast.scale.ray_runtime import require_ray

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


class ShardHost:
    """Actor body: one shard dir loaded once; ``candidates`` answers one fan-out."""

    def __init__(self, shard_dir: str, row_start: int, threads: int):
        faiss.omp_set_num_threads(int(threads))
        self.index = load_index(shard_dir, device="cpu")  # bound by the caller
        self.row_start = int(row_start)

    def ready(self) -> int:
        return int(self.index.ntotal)

    def candidates(self, q, k, params: dict, modality, coarse):
        p = SearchParams.from_json(params)
        return shard_candidates(self.index, self.row_start, q, k, p, modality, coarse)

    def hold(self, seconds: float) -> None:
        """Keep this shard busy for ``seconds`` (drills of the timeout path)."""
        time.sleep(float(seconds))


class RayShardedIndex(ShardedSearch):
    """A sharded index dir served by one Ray actor per shard (the ``Index`` search API).

    timeout_s: how long a search waits for each shard; a shard that does not answer in time
    (or whose actor died) makes ``search`` / ``search_arrays`` raise ``ShardTimeoutError``
    naming it, while ``search_partial`` returns the other shards' top-k and the missing ones.
    cpus_per_shard: Ray CPUs per actor (= its faiss threads, at least 1); actors that cannot
    be placed within ``start_timeout_s`` raise ``ShardTimeoutError``. Pass it to
    ``univl_fast.load(engine, index=RayShardedIndex(...))``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        engine_sha256: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cpus_per_shard: float = 1,
        verify: bool = True,
        start_timeout_s: float = 120.0,
        *,
        encoder: Any = None,
    ):
        ray = require_ray()
        if not ray.is_initialized():
            raise RuntimeError("RayShardedIndex: Ray is not initialized (ray_runtime.init_ray)")
        root = Path(directory).resolve()
        manifest = read_manifest(root)
        if not is_sharded(manifest):
            raise ValueError(f"{root}: not a sharded index directory (univl-fast index --shards)")
        mismatch = check_binding(root, manifest, encoder, engine_sha256)
        check_sharded_files(root, manifest, verify)
        ids: list[str] = []
        codes: list[np.ndarray] = []
        for sh in manifest["shards"]:
            text = (root / sh["dir"] / "doc_ids.txt").read_text(encoding="utf-8")
            ids.extend(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"))
            codes.append(np.load(root / sh["dir"] / "modalities.npy", allow_pickle=False))
        super().__init__(
            ids, np.concatenate(codes), manifest, faiss.read_index(str(root / TRAINED_FILE))
        )
        self.encoding_mismatch = mismatch
        self.timeout_s = float(timeout_s)
        self._ray = ray
        self.actors: list = []
        host = ray.remote(num_cpus=cpus_per_shard, max_restarts=-1)(ShardHost)
        threads = max(1, int(cpus_per_shard))
        self.actors = [
            host.remote(str(root / sh["dir"]), int(sh["rows"][0]), threads)
            for sh in manifest["shards"]
        ]
        self.names = [sh["dir"] for sh in manifest["shards"]]
        ready = [a.ready.remote() for a in self.actors]
        _done, pending = ray.wait(ready, num_returns=len(ready), timeout=start_timeout_s)
        if pending:
            self.close()
            raise ShardTimeoutError(
                f"{root}: {len(pending)} of {len(ready)} shard actors did not start within "
                f"{start_timeout_s:g} s (each asks for {cpus_per_shard} CPU; the cluster has "
                f"{ray.cluster_resources().get('CPU', 0):g})"
            )
        sizes = ray.get(ready)
        expect = [int(sh["rows"][1]) - int(sh["rows"][0]) for sh in manifest["shards"]]
        if sizes != expect:
            raise ValueError(f"{root}: shards hold {sizes} rows, manifest says {expect}")

    def _gather(self, q, k, params, modality, coarse):
        ray = self._ray
        q_ref = ray.put(q)
        c_ref = ray.put(coarse)
        refs = [
            a.candidates.remote(q_ref, k, params.to_json(), modality, c_ref) for a in self.actors
        ]
        deadline = time.monotonic() + self.timeout_s
        found, missing = [], []
        for name, ref in zip(self.names, refs, strict=True):
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([ref], timeout=left)
            if not ready:
                try:
                    ray.cancel(ref)
                except Exception as exc:  # noqa: BLE001 - best effort: the answer is dropped
                    log.debug("cancel %s: %s", name, exc)
                missing.append(f"{name}: no answer within {self.timeout_s:g} s")
                continue
            try:
                found.append(ray.get(ref))
            except ray.exceptions.RayError as exc:  # actor died, task failed
                missing.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        if missing:
            log.warning("sharded search: %d shard(s) missing: %s", len(missing), missing)
        return found, missing

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []

    def __repr__(self) -> str:
        return (
            f"RayShardedIndex({self.manifest.get('factory')!r}, shards={len(self.names)}, "
            f"ntotal={self.ntotal}, timeout_s={self.timeout_s:g})"
        )
