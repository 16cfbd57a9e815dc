"""Session fixtures of the Engine / search CLI / eval --engine tests (a pytest plugin named in
those modules' ``pytest_plugins``): the tiny engine's encoding of synth_tiny, a Flat index over
it, and the benchmark's questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_helpers import PRECISION, encode_corpus


@pytest.fixture(scope="session")
def corpus(tiny_engine, synth_tiny):
    from univl_fast.runtime import Encoder

    enc = Encoder(tiny_engine, precision=PRECISION)
    vecs, ids, mods = encode_corpus(enc, synth_tiny)
    return {"vecs": vecs, "ids": ids, "mods": mods, "encoder": enc}


@pytest.fixture(scope="session")
def flat_index(tmp_path_factory, corpus) -> Path:
    from univl_fast.index import build_index, save_index

    out = tmp_path_factory.mktemp("engine_test_index")
    idx = build_index(
        corpus["vecs"],
        corpus["ids"],
        corpus["mods"],
        factory="Flat",
        encoder=corpus["encoder"],
        progress=False,
    )
    save_index(idx, out)
    return out


@pytest.fixture(scope="session")
def queries(synth_tiny_dataset) -> list[str]:
    qs = [q.text for q in synth_tiny_dataset.queries("test")]
    qs += [q.text for q in synth_tiny_dataset.queries("dev")]
    return qs
