"""Scale-out on Ray: corpus encoding on actors, shard filling as tasks, Ray-hosted shards.

Only Ray lives here; the sharded index itself (its dir, load, search, build) is
``univl_fast.index`` (``sharded``, ``sharded_build``, ``build_index(shards=N)``), which imports
nothing from this package. Ray is imported only inside functions of ``ray_encode``,
``ray_build`` and ``ray_shards`` (install it with ``pip install 'univl-fast[ray]'``). See
docs/scale-out.md.

Modules: ``ray_runtime`` (starting / joining Ray, clear errors), ``ray_encode`` (corpus
encoding over a Ray Data actor pool), ``ray_build`` (a ``fill`` for ``build_index(shards=N)``
running one Ray task per shard), ``ray_shards`` (shards hosted by Ray actors: fan-out, top-k
merge, per-shard timeout), ``errors``.
"""
