"""The index configurations the budget-driven builder compares (``univl_fast.index.select``).

Every candidate is a faiss ``index_factory`` string over inner product; the IVF ones share a
few list counts (``coarse_nlist`` and twice it), so that candidates with the same coarse
structure share one k-means (``select.CoarseCache``). Families, roughly from least to most
memory per vector:

- ``ivf-fastscan``: ``IVF{n},PQ{m}x4fs`` - 4-bit PQ scanned with SIMD look-up tables held in
  registers (faiss's fast-scan); m = d/8 sub-quantizers -> d/16 bytes per code. Alone, then
  with an 8-bit (``SQ8``), fp16 (``SQfp16``) or float32 (``RFlat``) re-ranking store; then
  with 2x and 4x the sub-quantizers (d/8 and d/4 bytes: the last is ScaNN's 2-dimensional
  asymmetric hashing blocks), which rank near-duplicates that d/16 bytes cannot tell apart;
- ``ivf-hnsw-fastscan``: ``IVF{n}_HNSW32,...``: an HNSW graph over the centroids finds the
  lists to probe instead of a scan of all of them;
- ``ivf-sq``: ``IVF{n},SQ4|SQ6|SQ8`` scalar codes (d/2 .. d bytes), alone and with an fp16
  re-ranking store: codes that keep every dimension, for corpora whose rows differ only a
  little (heavy-tailed near-duplicates, bench/index_corpora.py);
- ``ivf-flat``: ``IVF{n},Flat``: exact scores inside the probed lists (4d bytes);
- ``opq-ivf-fastscan`` / ``opq-ivf-pq``: OPQ rotation + 4-bit or 8-bit PQ + fp16 re-ranking;
- ``hnsw-sq8``: ``HNSW32_SQ8``: a graph over 8-bit scalar codes, no IVF;
- ``flat``: exact search: a candidate below ``FLAT_MAX_VECTORS`` rows (or when the caller
  lists it), above that only the reference point of the frontier: the builder never returns
  an exact index by surprise (``select``).

The scalar-code and flat IVF families scan d/2..4d bytes per probed row where fast-scan
scans d/16, so they get twice the lists when that k-means fits ``KMEANS_FLOP_BUDGET`` (the
usual 4*sqrt(N) instead of 2*sqrt(N)): shorter lists to scan.

No family is dropped by its row count: ``select`` trains each candidate, times adding the
first rows of its sample, and abandons it (listed with the estimate) when the extrapolated
build at full size exceeds ``IndexConfig.build_budget_s``. ``slow`` candidates (OPQ, 8-bit
PQ, graph insertion: minutes per million rows on 2 cores) are measured last.
"""

from __future__ import annotations

from dataclasses import dataclass

from univl_fast.index.factory import choose_nlist, choose_pq

KMEANS_FLOP_BUDGET = 2.0e12  # multiply-adds x2 of one coarse k-means (~40 s on 2 cores)
KMEANS_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class Candidate:
    family: str
    factory: str
    skip_reason: str | None = None  # set: listed in the manifest, not built
    slow: bool = False  # training or insertion costs minutes per million rows: measured last

    def to_json(self) -> dict:
        out = {"family": self.family, "factory": self.factory}
        if self.skip_reason:
            out["skipped"] = self.skip_reason
        return out

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"


def coarse_nlist(n: int) -> int:
    """IVF lists shared by the candidates: half of ``factory.choose_nlist`` (2*sqrt(n)
    rounded to a power of two): k-means and the add's list assignment cost grow with nlist,
    and fast-scan makes the longer lists cheap to scan."""
    return max(1, choose_nlist(n) // 2)


def wide_nlist(n: int, d: int) -> int:
    """Twice ``coarse_nlist`` when its k-means fits ``KMEANS_FLOP_BUDGET`` and every list
    keeps >= 39 training points, else ``coarse_nlist``."""
    nl = coarse_nlist(n)
    return 2 * nl if kmeans_flops(2 * nl, d) <= KMEANS_FLOP_BUDGET and 2 * nl * 39 <= n else nl


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
    nl, nlw = coarse_nlist(n), wide_nlist(n, d)
    m8, d_out = choose_pq(d)
    opq = f"OPQ{m8}" if d_out == d else f"OPQ{m8}_{d_out}"
    out: list[Candidate] = []
    m = fastscan_m(d, max(1, d // 16))
    if m is not None:
        fs = f"IVF{nl},PQ{m}x4fs"
        out += [
            Candidate("ivf-fastscan", fs),
            Candidate("ivf-fastscan", f"{fs},Refine(SQ8)"),
            Candidate("ivf-fastscan", f"{fs},Refine(SQfp16)"),
            Candidate("ivf-fastscan", f"{fs},RFlat"),
            Candidate("ivf-hnsw-fastscan", f"IVF{nlw}_HNSW32,PQ{m}x4fs,Refine(SQfp16)"),
        ]
    seen = {m}
    for bytes_target in (d // 8, d // 4):
        mm = fastscan_m(d, max(1, bytes_target))
        if mm is not None and mm not in seen:
            seen.add(mm)
            out.append(Candidate("ivf-fastscan", f"IVF{nl},PQ{mm}x4fs,Refine(SQfp16)"))
    for sq in ("SQ4", "SQ6", "SQ8"):
        out.append(Candidate("ivf-sq", f"IVF{nlw},{sq}"))
        out.append(Candidate("ivf-sq", f"IVF{nlw},{sq},Refine(SQfp16)"))
    out.append(Candidate("ivf-flat", f"IVF{nlw},Flat"))
    if m8 % 2 == 0:
        out.append(
            Candidate("opq-ivf-fastscan", f"{opq},IVF{nl},PQ{m8}x4fs,Refine(SQfp16)", slow=True)
        )
    out.append(Candidate("opq-ivf-pq", f"{opq},IVF{nl},PQ{m8},Refine(SQfp16)", slow=True))
    out.append(Candidate("hnsw-sq8", "HNSW32_SQ8", slow=True))
    out.append(Candidate("flat", "Flat"))
    return out
