"""Helpers shared by the Engine / search CLI / eval --engine tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from univl_fast.types import Hit

# Scores of the same query encoded alone or inside a batch differ by float noise only (the
# batch is padded to its longest query; CLIP's causal attention makes padding exact up to
# rounding). Ranks whose scores lie this close are treated as ties.
SCORE_TOL = 2e-4


def encode_corpus(encoder, data_dir: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Every text and image doc of a dataset dir -> ((n, d) float32 unit rows, ids, modalities)."""
    from univl_fast.data import DatasetDir

    ds = DatasetDir(data_dir)
    texts = ds.text_docs()
    images = ds.image_docs()
    tv = encoder.encode_text_docs([t.text for t in texts])
    pics = [ds.images.read_bytes(d.doc_id) for d in images]
    iv = encoder.encode_image_docs(pics, [d.caption for d in images])
    vecs = np.ascontiguousarray(np.concatenate([tv, iv]), dtype=np.float32)
    ids = [t.doc_id for t in texts] + [d.doc_id for d in images]
    mods = ["text"] * len(texts) + ["image"] * len(images)
    return vecs, ids, mods


def exact_hits(
    qvecs: np.ndarray, dvecs: np.ndarray, ids: list[str], mods: list[str], k: int
) -> list[list[Hit]]:
    """Brute-force top-k in float64: the reference the index / engine must reproduce."""
    scores = qvecs.astype(np.float64) @ dvecs.astype(np.float64).T
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([Hit(ids[j], mods[j], float(row[j])) for j in order])
    return out


def assert_same_ranking(got: list[Hit], ref: list[Hit], k: int, what: str = "") -> None:
    """Tie-aware: got == ref[:k] up to swaps among docs whose scores are within SCORE_TOL.

    ``ref`` may be longer than k (it is used to resolve ties at the cut-off).
    """
    expect = min(k, len(ref))
    assert len(got) == expect, f"{what}: {len(got)} hits, expected {expect}"
    ref_score = {h.doc_id: h.score for h in ref}
    for rank, (g, r) in enumerate(zip(got, ref[:k], strict=False)):
        assert abs(g.score - r.score) <= SCORE_TOL, (
            f"{what}: rank {rank}: score {g.score:.6f} vs reference {r.score:.6f}"
        )
        if g.doc_id != r.doc_id:
            # allowed only as a tie: the doc must be in the reference with (nearly) this score
            assert g.doc_id in ref_score and abs(ref_score[g.doc_id] - g.score) <= SCORE_TOL, (
                f"{what}: rank {rank}: got {g.doc_id} ({g.score:.6f}), reference {r.doc_id} "
                f"({r.score:.6f}) and no tie"
            )
    assert len({g.doc_id for g in got}) == len(got), f"{what}: duplicate doc ids"


PRECISION = "fp32"  # batched vs single encodes compare tightly only without dynamic int8 scales
