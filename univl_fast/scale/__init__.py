"""Scale-out on Ray: distributed corpus encoding, distributed index build, sharded search.

Nothing here is imported by the serving path unless asked for: ``univl_fast.load`` reads a
sharded index directory through ``sharded`` (faiss only, no Ray), and Ray itself is imported
only by ``ray_encode``, ``ray_build`` and ``ray_shards`` (install it with
``pip install 'univl-fast[ray]'``). See docs/scale-out.md.

Modules: ``ray_runtime`` (starting / joining Ray, clear errors), ``ray_encode`` (corpus
encoding over a Ray Data actor pool), ``build`` + ``ray_build`` (train once, add in parallel,
write a sharded index or merge), ``sharded`` (sharded index: manifest, load, search with one
shared coarse quantizer), ``ray_shards`` (shards hosted by Ray actors: fan-out, top-k merge,
per-shard timeout).
"""
