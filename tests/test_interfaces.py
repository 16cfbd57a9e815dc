"""The typed joins (``univl_fast.interfaces``): the real encoder, every index kind and the
engine have what their users are typed against, and the service reads the engine only."""

from __future__ import annotations

import numpy as np

import univl_fast
from univl_fast.index import build_index
from univl_fast.interfaces import QueryEncoder, SearchEngine, SearchIndex
from univl_fast.runtime import Encoder


def _corpus(dim: int, n: int = 60):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, [f"d{i}" for i in range(n)], ["text" if i % 2 else "image" for i in range(n)]


def test_encoder_index_and_engine_fit_their_protocols(tiny_engine, tmp_path):
    enc = Encoder(tiny_engine, precision="fp32")
    assert isinstance(enc, QueryEncoder)
    v, ids, mods = _corpus(enc.dim)
    single = build_index(v, ids, mods, factory="Flat", encoder=enc, progress=False)
    sharded = build_index(
        v, ids, mods, factory="Flat", encoder=enc, progress=False, shards=2, out_dir=tmp_path
    )
    for index in (single, sharded):
        assert isinstance(index, SearchIndex)
    single.save(tmp_path / "one")
    with univl_fast.load(tiny_engine, tmp_path / "one", precision="fp32") as engine:
        assert isinstance(engine, SearchEngine)
        info = engine.describe()
        assert info["index"]["ntotal"] == 60 and info["index"]["factory"] == "Flat"
        assert info["precision"] == "fp32" and info["dim"] == enc.dim
        assert info["engine_sha256"] == enc.manifest_sha256
        assert engine.count_tokens(["a photo"]) == 4  # start, "a", "photo", end
        assert engine.count_tokens(["a photo", "a dog"]) == 8
    with univl_fast.load(tiny_engine, precision="fp32") as bare:
        assert not bare.has_index and bare.describe()["index"] is None


def test_service_info_asks_the_engine_only():
    from univl_fast.serve.config import ServeConfig
    from univl_fast.serve.info import service_info

    class Described:  # an engine that answers describe() and has no encoder or index
        def describe(self):
            return {"model": "m", "dim": 3, "index": {"ntotal": 5}}

    info = service_info(Described(), ServeConfig())
    assert info["model"] == "m" and info["index"] == {"ntotal": 5}
    assert info["service"] == "univl-fast" and "limits" in info and "versions" in info
