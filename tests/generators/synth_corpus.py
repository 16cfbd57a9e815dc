"""A synthetic corpus that looks like CLIP-style embeddings rather than uniform noise (the
index benchmark's corpus, bench/bench_index.py, and the tests of index choice):

- a shared mean direction (CLIP embeddings are anisotropic: random pairs have cosine ~0.2);
- a per-modality offset (the modality gap between text and image embeddings);
- ``topics`` topics (Zipf-distributed popularity) x ``sub`` sub-topics: hierarchical clusters;
- per-document noise with a decaying spectrum (scale ~ 1/sqrt(1 + i/32) along a random
  basis), so most variance lies in a few dozen directions, like real embeddings.

Queries (``queries_near``): a corpus row (the query's positive) mixed with fresh noise and a
query-side offset, to cosine ~0.75 with its positive.
"""

from __future__ import annotations

import numpy as np


class Generator:
    def __init__(self, d: int, seed: int = 1234, topics: int = 4096, sub: int = 16):
        rng = np.random.default_rng(seed)
        self.d, self.topics, self.sub = d, topics, sub

        def unit(*shape):
            x = rng.standard_normal(shape).astype(np.float32)
            return x / np.linalg.norm(x, axis=-1, keepdims=True)

        self.mean = unit(d)
        self.gap = {"text": unit(d), "image": unit(d), "query": unit(d)}
        self.topic = unit(topics, d)
        self.subtopic = unit(topics, sub, d)
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
        scale = 1.0 / np.sqrt(1.0 + np.arange(d) / 32.0)
        self.noise_map = (basis * scale[None, :]).T.astype(np.float32)  # z @ noise_map
        p = 1.0 / np.arange(1, topics + 1) ** 0.8
        self.topic_p = p / p.sum()

    def docs(self, n: int, modality: str, rng: np.random.Generator) -> np.ndarray:
        t = rng.choice(self.topics, size=n, p=self.topic_p)
        s = rng.integers(0, self.sub, size=n)
        z = rng.standard_normal((n, self.d)).astype(np.float32) @ self.noise_map
        z /= np.sqrt((self.noise_map**2).sum())  # unit expected norm per row
        x = 0.45 * self.mean + 0.25 * self.gap[modality] + 0.55 * self.topic[t]
        x += 0.45 * self.subtopic[t, s] + 0.40 * z
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def queries_near(self, positives: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = positives.shape[0]
        z = rng.standard_normal((n, self.d)).astype(np.float32) @ self.noise_map
        z /= np.sqrt((self.noise_map**2).sum())
        q = positives + 0.25 * self.gap["query"] + 0.55 * z
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


class NearDuplicates:
    """A heavy-tailed near-duplicate corpus (issue 21), like a web image collection with many
    photos of the same landmarks: ``topics`` topics whose sizes follow a Zipf law of exponent
    ``zipf`` (a few topics hold a large share of all rows), each a centre plus variation
    inside its own ``rank``-dimensional subspace (scale ``spread``) and little full-rank noise
    (``noise``). Rows of a hot topic differ only inside that subspace, so 4-bit PQ codes (whose
    error is about the size of those differences) cannot rank them.

    Queries (``queries``): fresh points of a topic drawn like the rows (not corpus rows),
    with a query-side offset and more full-rank noise.
    """

    def __init__(
        self,
        d: int,
        seed: int = 21,
        topics: int = 2048,
        rank: int = 12,
        zipf: float = 1.1,
        spread: float = 0.35,
        noise: float = 0.04,
    ):
        rng = np.random.default_rng(seed)
        self.d, self.topics, self.rank = d, topics, rank
        self.spread, self.noise = spread, noise
        self.mean = _unit(rng, d)
        self.gap = _unit(rng, d)
        self.centre = _unit(rng, topics, d)
        # an orthonormal basis of each topic's subspace
        self.basis = np.linalg.qr(rng.standard_normal((topics, d, rank)))[0].astype(np.float32)
        p = 1.0 / np.arange(1, topics + 1) ** zipf
        self.topic_p = p / p.sum()

    def _points(self, t: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
        n = t.shape[0]
        z = rng.standard_normal((n, self.rank)).astype(np.float32)
        x = 0.5 * self.mean + self.centre[t]
        x += self.spread * np.einsum("ndr,nr->nd", self.basis[t], z) / np.sqrt(self.rank)
        x += noise * rng.standard_normal((n, self.d)).astype(np.float32) / np.sqrt(self.d)
        return x

    def docs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self._points(rng.choice(self.topics, size=n, p=self.topic_p), rng, self.noise)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def queries(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = rng.choice(self.topics, size=n, p=self.topic_p)
        x = self._points(t, rng, 3 * self.noise) + 0.15 * self.gap
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class LowIntrinsicDim:
    """Rows on a smooth ``rank``-dimensional manifold embedded in d dimensions (a random
    non-linear map of a low-dimensional latent: ``tanh`` of a random projection), plus small
    full-rank noise: the corpus fills few directions, so distances concentrate and many rows
    tie closely. Queries: fresh latents through the same map, with more noise."""

    def __init__(self, d: int, seed: int = 22, rank: int = 16, noise: float = 0.05):
        rng = np.random.default_rng(seed)
        self.d, self.rank, self.noise = d, rank, noise
        self.proj = rng.standard_normal((rank, d)).astype(np.float32) / np.sqrt(rank)
        self.mean = _unit(rng, d)

    def _points(self, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
        z = rng.standard_normal((n, self.rank)).astype(np.float32)
        x = np.tanh(z @ self.proj) / np.sqrt(self.d) * 2.0 + 0.5 * self.mean
        x += noise * rng.standard_normal((n, self.d)).astype(np.float32) / np.sqrt(self.d)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def docs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._points(n, rng, self.noise)

    def queries(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._points(n, rng, 3 * self.noise)


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
