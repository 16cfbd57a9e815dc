"""Default index choice from the corpus size, following faiss's guidance.

- Fewer than ``FLAT_MAX_VECTORS`` vectors: exact ``Flat`` (inner product). At 100k x 512 a Flat
  index is 205 MB and one query costs ~51 M multiply-adds (a few ms on 2 cores); an IVF index
  that small would need nlist >= 4*sqrt(N) ~ 1265 lists trained from >= 39 points each (~50k
  of the 100k vectors), saving little time while giving up exactness and adding a tuning step.
- Above: ``OPQ{M}[_{D'}],IVF{nlist},PQ{M},Refine(SQfp16)``:
  * nlist: the power of two nearest to 4*sqrt(N) (log scale; faiss suggests 4*sqrt(N) to
    16*sqrt(N)), halved until the corpus has >= 39 training points per centroid. We sit at the
    low end of faiss's range because k-means cost grows with nlist squared (points ~ nlist):
    at N = 1.18M this gives 4096 lists (3.8*sqrt(N)), trained in minutes on 2 cores, where
    8192 would take 4x longer; a larger nprobe makes up the difference at search time;
  * PQ with M = d // 8 sub-quantizers of 8 bits (8 dims per byte: 64 bytes for d=512, i.e.
    72 B/vector with the 8-byte id, 1/28 of float32 Flat); when M does not divide d the OPQ
    rotation also maps d -> D' = M * (d // M) (e.g. d=97 -> M=12, D'=96), the exact
    re-ranking step restores the full-dimensional score;
  * exact re-ranking of a candidate pool (k_factor * k) from an fp16 copy of the vectors:
    half the memory of a float32 copy (``RFlat``) with the same recall@10 in our measurement
    (bench/results/index.md); scores are the fp16 vectors' inner products (|err| < 1e-3).
"""

from __future__ import annotations

import math

FLAT_MAX_VECTORS = 100_000
MIN_POINTS_PER_CENTROID = 39
MAX_POINTS_PER_CENTROID = 256
DEFAULT_REFINE = "SQfp16"


def choose_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: power of two nearest 4*sqrt(n), >= 39 points each."""
    if n < 1:
        raise ValueError(f"cannot size an IVF index for {n} vectors")
    nlist = 1 << max(0, round(math.log2(4.0 * math.sqrt(n))))
    while nlist > 1 and nlist * MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    return nlist


def choose_pq(d: int) -> tuple[int, int]:
    """(M, D'): PQ sub-quantizer count (bytes per code) and the OPQ output dim (M divides D')."""
    if d < 1:
        raise ValueError(f"invalid vector dimension {d}")
    m = max(1, d // 8)
    return m, m * (d // m)


def default_factory(
    n: int, d: int, flat_max: int = FLAT_MAX_VECTORS, refine: str = DEFAULT_REFINE
) -> str:
    """The faiss factory string used when the caller gives none (see module docstring)."""
    if n < flat_max:
        return "Flat"
    nlist = choose_nlist(n)
    m, d_out = choose_pq(d)
    opq = f"OPQ{m}" if d_out == d else f"OPQ{m}_{d_out}"
    refine_part = "RFlat" if refine in ("Flat", "RFlat") else f"Refine({refine})"
    return f"{opq},IVF{nlist},PQ{m},{refine_part}"


def training_size(n: int, nlist: int, points_per_centroid: int) -> int:
    """How many vectors to train on: ``points_per_centroid`` per list, within faiss's 39-256."""
    ppc = min(max(points_per_centroid, MIN_POINTS_PER_CENTROID), MAX_POINTS_PER_CENTROID)
    return min(n, max(nlist * ppc, 10_000))
