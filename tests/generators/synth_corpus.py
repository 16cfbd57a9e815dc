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
