"""The two training objectives (one-directional cross-entropy, query -> candidates).

Scores are cosine x exp(logit_scale) (CLIP's learnable scale, the paper's tau = 0.01 start).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from univl_fast.model import UniVLDR
from univl_fast.train.batches import Batch


def embed_batch(model: UniVLDR, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit query vectors (B, d) and unit candidate vectors (C, d) for a batch.

    All texts (queries, text docs, captions) go through the text tower in one call (trimmed to
    the batch's longest sequence); image docs are normalize(image_raw + caption_raw) (Eq. 3).
    """
    nq, nt, nc = len(batch.query_tokens), len(batch.text_tokens), len(batch.caption_tokens)
    parts = [batch.query_tokens]
    if nt:
        parts.append(batch.text_tokens)
    if nc:
        parts.append(batch.caption_tokens)
    raw = model.text_features(torch.cat(parts))
    q = F.normalize(raw[:nq], dim=-1)
    docs = []
    if nt:
        docs.append(F.normalize(raw[nq : nq + nt], dim=-1))
    if nc:
        img_raw = model.image_features(batch.pixels)
        docs.append(F.normalize(img_raw + raw[nq + nt :], dim=-1))
    pool = torch.cat(docs)
    index = torch.where(batch.doc_is_image, batch.doc_slot + nt, batch.doc_slot)
    return q, pool[index]


def inbatch_loss(
    scale: torch.Tensor, q: torch.Tensor, d: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Every candidate in the batch is a negative for every other query: CE over (B, C)."""
    return F.cross_entropy(scale * q @ d.T, targets)


def own_candidates_loss(
    scale: torch.Tensor, q: torch.Tensor, d: torch.Tensor, own: torch.Tensor
) -> torch.Tensor:
    """Stage 2 without in-batch negatives: CE over each query's own positive (column 0) and
    its own hard negatives. own: (B, W) candidate indices, -1 = padding."""
    valid = own >= 0
    cand = d[own.clamp(min=0)]  # (B, W, dim)
    logits = scale * torch.einsum("bd,bwd->bw", q, cand)
    logits = logits.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def batch_loss(model: UniVLDR, batch: Batch, stage: str, inbatch: bool) -> torch.Tensor:
    q, d = embed_batch(model, batch)
    scale = model.logit_scale.exp()
    if stage == "inbatch" or inbatch:
        return inbatch_loss(scale, q, d, batch.targets)
    return own_candidates_loss(scale, q, d, batch.own)
