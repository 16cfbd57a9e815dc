"""The index configurations the budget-driven builder compares (``univl_fast.index.select``).

Every candidate is a faiss ``index_factory`` string over inner product; they share one IVF
list count (``coarse_nlist``) so that the candidates without OPQ share one coarse k-means, and
the OPQ ones another (``select.CoarseCache``). Families, from least to most memory per vector:

- ``ivf-fastscan``: ``IVF{n},PQ{m}x4fs`` - 4-bit PQ scanned with SIMD look-up tables held in
  registers (faiss's fast-scan); m = d/8 sub-quantizers -> d/16 bytes per code. Alone, then
  with an 8-bit (``SQ8``), fp16 (``SQfp16``) or float32 (``RFlat``) re-ranking store;
- ``ivf-fastscan`` with twice the sub-quantizers (``PQ{2m}x4fs``): more PQ capacity;
- ``opq-ivf-fastscan``: the same behind an OPQ rotation;
- ``ivf-hnsw-fastscan``: ``IVF{n}_HNSW32,...``: an HNSW graph over the centroids finds the
  lists to probe instead of a scan of all of them; with twice the lists when their k-means
  fits ``KMEANS_FLOP_BUDGET`` (on 2 cores a larger nlist's k-means would take the whole
  build budget);
- ``opq-ivf-pq``: ``OPQ{m},IVF{n},PQ{m},Refine(SQfp16)``: the 8-bit PQ family used before;
- ``hnsw-sq8``: ``HNSW32_SQ8``: a graph over 8-bit scalar codes, no IVF; its build inserts
  every vector into the graph (minutes per million on 2 cores), so it is a candidate up to
  ``HNSW_MAX_VECTORS`` only (likewise the OPQ and 8-bit PQ families, whose training alone
  exceeds the build budget at 1.17M on 2 cores: ``SLOW_TRAIN_MAX_VECTORS``);
- ``flat``: exact search, the reference point (and the answer when it is fast enough).
"""

from __future__ import annotations

from dataclasses import dataclass

from univl_fast.index.factory import choose_nlist, choose_pq

HNSW_MAX_VECTORS = 150_000
SLOW_TRAIN_MAX_VECTORS = 150_000
KMEANS_FLOP_BUDGET = 2.0e12  # multiply-adds x2 of one coarse k-means (~40 s on 2 cores)
KMEANS_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class Candidate:
    family: str
    factory: str
    skip_reason: str | None = None  # set: listed in the manifest, not built

    def to_json(self) -> dict:
        out = {"family": self.family, "factory": self.factory}
        if self.skip_reason:
            out["skipped"] = self.skip_reason
        return out


def coarse_nlist(n: int) -> int:
    """IVF lists shared by the candidates: half of ``factory.choose_nlist`` (2*sqrt(n)
    rounded to a power of two): k-means and the add's list assignment cost grow with nlist,
    and fast-scan makes the longer lists cheap to scan."""
    return max(1, choose_nlist(n) // 2)


def kmeans_flops(nlist: int, d: int, iterations: int = 10) -> float:
    return 2.0 * d * nlist * nlist * KMEANS_POINTS_PER_CENTROID * iterations


def fastscan_m(d: int, bytes_target: int) -> int | None:
    """The largest divisor of d that is <= 2 * bytes_target (4-bit sub-quantizers) and even,
    or None when d has no such divisor worth using (< a quarter of the target)."""
    want = 2 * bytes_target
    for m in range(min(want, d), 0, -1):
        if d % m == 0 and m % 2 == 0:
            return m if m * 4 >= want else None
    return None


def candidates(n: int, d: int) -> list[Candidate]:
    nl = coarse_nlist(n)
    m8, d_out = choose_pq(d)
    opq = f"OPQ{m8}" if d_out == d else f"OPQ{m8}_{d_out}"
    out: list[Candidate] = []
    m = fastscan_m(d, max(1, d // 16))
    m2 = fastscan_m(d, max(1, d // 8))
    if m is not None:
        fs = f"IVF{nl},PQ{m}x4fs"
        out += [
            Candidate("ivf-fastscan", fs),
            Candidate("ivf-fastscan", f"{fs},Refine(SQ8)"),
            Candidate("ivf-fastscan", f"{fs},Refine(SQfp16)"),
            Candidate("ivf-fastscan", f"{fs},RFlat"),
        ]
        nl2 = 2 * nl if kmeans_flops(2 * nl, d) <= KMEANS_FLOP_BUDGET and 2 * nl * 39 <= n else nl
        out.append(Candidate("ivf-hnsw-fastscan", f"IVF{nl2}_HNSW32,PQ{m}x4fs,Refine(SQfp16)"))
    if m2 is not None and m2 != m:
        out.append(Candidate("ivf-fastscan", f"IVF{nl},PQ{m2}x4fs,Refine(SQfp16)"))
    slow_train = (
        f"{n} vectors > {SLOW_TRAIN_MAX_VECTORS}: OPQ and 8-bit PQ training take minutes on 2 "
        "cores (513 s of a 670 s build at 1.17M, bench/results/index.md), more than the "
        "build budget; 4-bit fast-scan PQ trains in seconds"
        if n > SLOW_TRAIN_MAX_VECTORS
        else None
    )
    if m8 % 2 == 0:
        out.append(
            Candidate("opq-ivf-fastscan", f"{opq},IVF{nl},PQ{m8}x4fs,Refine(SQfp16)", slow_train)
        )
    out.append(Candidate("opq-ivf-pq", f"{opq},IVF{nl},PQ{m8},Refine(SQfp16)", slow_train))
    hnsw_skip = (
        f"{n} vectors > {HNSW_MAX_VECTORS}: inserting each into the graph takes minutes per "
        "million on 2 cores"
        if n > HNSW_MAX_VECTORS
        else None
    )
    out.append(Candidate("hnsw-sq8", "HNSW32_SQ8", hnsw_skip))
    out.append(Candidate("flat", "Flat"))
    return out
