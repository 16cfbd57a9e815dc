"""Export-friendly wrappers around open_clip's text and image towers (torch world).

The stock open_clip modules cannot be exported with a dynamic sequence length (positional
embedding and causal mask are fixed at the context length) and their ``nn.MultiheadAttention``
exports to a graph ONNX Runtime's transformer fusions do not recognise. These wrappers run the
*same weights* through an explicit, equivalent computation:

- text: slice positional embedding and causal mask to the actual length ``L`` of
  ``input_ids`` (exact for CLIP: attention is causal and the output is read at the
  end-of-text token, so padding after it never changes the result), pool at ``argmax(ids)``
  (open_clip's ``text_pool_type="argmax"``: the end-of-text id is the largest id) or at the
  first ``eos_id`` (``"eos"``), then project. Output is the RAW projected embedding.
- image: open_clip's ``VisionTransformer`` forward for the standard config (class token,
  ``pool_type="tok"``, no attention pooling), RAW projected embedding out.

Attention is written as separate q/k/v projections, scaled ``q @ k^T`` + additive mask,
softmax, ``@ v``: the pattern ONNX Runtime's attention fusion looks for.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from univl_fast.errors import UnivlFastError


class UnsupportedTowerError(UnivlFastError, ValueError):
    """The open_clip model uses a feature these wrappers do not reproduce exactly."""


def _check_block(block: nn.Module, where: str) -> None:
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise UnsupportedTowerError(
            f"{where}: attention is {type(getattr(block, 'attn', None)).__name__}, "
            "only nn.MultiheadAttention blocks (open_clip ResidualAttentionBlock) are supported"
        )
    if hasattr(block, "ln_1_kv"):
        raise UnsupportedTowerError(f"{where}: cross-attention blocks are not supported")
    attn = block.attn
    if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
        raise UnsupportedTowerError(f"{where}: unsupported nn.MultiheadAttention options")


class _Block(nn.Module):
    """One pre-norm residual attention block with explicit multi-head attention."""

    def __init__(self, block: nn.Module):
        super().__init__()
        attn: nn.MultiheadAttention = block.attn
        d = attn.embed_dim
        self.num_heads = attn.num_heads
        self.head_dim = d // attn.num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(w[i * d : (i + 1) * d])
                lin.bias.copy_(b[i * d : (i + 1) * d] if b is not None else torch.zeros(d))
        self.out_proj = attn.out_proj
        self.ln_1, self.ln_2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.ls_1, self.ls_2 = block.ls_1, block.ls_2

    def _attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, h, hd).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, hd).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls_1(self._attention(self.ln_1(x), mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    def forward_rows(
        self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """The block's output at one position per sequence, ``(batch, 1, d)``.

        Attention runs over every position; the MLP is per-position, so only the rows
        ``[rows, cols]`` go through it (exact, and it skips the MLP for every other
        position). ``ln_2`` still runs on all positions (cheap) so the graph keeps the
        residual-add -> LayerNorm shape ONNX Runtime's attention fusion anchors on, and the
        gathered rows stay 3-D so the MLP exports as MatMul (quantizable), not Gemm.
        """
        x = x + self.ls_1(self._attention(self.ln_1(x), mask))
        h = self.ln_2(x)[rows, cols].unsqueeze(1)
        return x[rows, cols].unsqueeze(1) + self.ls_2(self.mlp(h))


def _text_parts(clip: nn.Module) -> nn.Module:
    """The module holding the text transformer's parts (CLIP itself or CustomTextCLIP.text)."""
    if hasattr(clip, "token_embedding") and hasattr(clip, "transformer"):
        return clip
    text = getattr(clip, "text", None)
    if text is not None and hasattr(text, "token_embedding"):
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise UnsupportedTowerError(
                "text tower: class token / pad mask text towers are not supported"
            )
        return text
    raise UnsupportedTowerError(
        f"text tower of {type(clip).__name__} is not an open_clip TextTransformer "
        "(HF / timm text towers are not supported by the dynamic-length exporter)"
    )


class TextTower(nn.Module):
    """``input_ids`` int64 (batch, seq<=context) -> raw text embedding float32 (batch, d)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        parts = _text_parts(clip)
        self.pool_type = getattr(parts, "text_pool_type", None) or getattr(
            parts, "pool_type", "argmax"
        )
        if self.pool_type not in ("argmax", "eos"):
            raise UnsupportedTowerError(
                f"text pool type {self.pool_type!r}: only 'argmax'/'eos' are exact with trimmed "
                "sequences"
            )
        self.eos_id = getattr(parts, "text_eos_id", None) or getattr(parts, "eos_id", None)
        for i, blk in enumerate(parts.transformer.resblocks):
            _check_block(blk, f"text block {i}")
        self.token_embedding = parts.token_embedding
        self.positional_embedding = parts.positional_embedding
        self.blocks = nn.ModuleList(_Block(b) for b in parts.transformer.resblocks)
        self.ln_final = parts.ln_final
        proj = parts.text_projection
        self.proj_linear = proj if isinstance(proj, nn.Linear) else None
        self.proj = None if isinstance(proj, nn.Linear) else proj
        mask = parts.attn_mask
        if mask is None:
            raise UnsupportedTowerError(
                "text tower without a causal mask: trimming would not be exact"
            )
        blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask.float())
        causal = torch.ones(blocked.shape, dtype=torch.bool).triu(1)
        if blocked.shape[0] != blocked.shape[1] or not torch.equal(blocked.cpu(), causal):
            raise UnsupportedTowerError(
                "text tower: attention mask is not the standard causal mask"
            )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        # Causal mask built from the length (not sliced from the stored buffer): position i
        # sees j <= i. Written as Where(Less) + Unsqueeze + Expand, the shape ONNX Runtime's
        # CLIP attention fusion recognises as causal (it then drops the mask input and sets
        # unidirectional=1). Equal to open_clip's -inf mask after softmax.
        r = torch.arange(n, device=input_ids.device)
        mask = torch.full((n, n), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(r < (r + 1).view(n, 1), 0.0)
        mask = mask.unsqueeze(0).unsqueeze(1).expand(b, 1, n, n)
        if self.pool_type == "argmax":
            idx = input_ids.argmax(dim=-1)
        else:
            idx = (input_ids == self.eos_id).int().argmax(dim=-1)
        for blk in self.blocks[:-1]:
            x = blk(x, mask)
        # Only the pooled position is read after the last block: its MLP, ln_final and the
        # projection run on that row alone (all per-position, so exact).
        x = self.blocks[-1].forward_rows(x, mask, torch.arange(b, device=x.device), idx)
        x = self.ln_final(x[:, 0])
        if self.proj_linear is not None:
            return self.proj_linear(x)
        if self.proj is not None:
            return x @ self.proj
        return x


class ImageTower(nn.Module):
    """``pixel_values`` float32 (batch, 3, H, W) normalized -> raw image embedding (batch, d)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        v = clip.visual
        if type(v).__name__ != "VisionTransformer":
            raise UnsupportedTowerError(
                f"image tower {type(v).__name__}: only open_clip VisionTransformer is supported"
            )
        if v.attn_pool is not None or v.pool_type != "tok" or v.final_ln_after_pool:
            raise UnsupportedTowerError(
                "image tower: attention pooling / non-token pooling is not supported"
            )
        for i, blk in enumerate(v.transformer.resblocks):
            _check_block(blk, f"image block {i}")
        self.conv1 = v.conv1
        self.class_embedding = v.class_embedding
        self.positional_embedding = v.positional_embedding
        self.ln_pre = v.ln_pre
        self.blocks = nn.ModuleList(_Block(b) for b in v.transformer.resblocks)
        self.ln_post = v.ln_post
        self.proj = v.proj

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_post(x[:, 0])
        if self.proj is not None:
            x = x @ self.proj
        return x
