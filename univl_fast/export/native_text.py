"""Weights of the native int8 text tower (``univl_fast._C.TextTower``) from an open_clip CLIP.

The exporter writes them as one uncompressed ``.npz`` (numpy only to read, no pickle), beside
the ONNX graphs: ``meta`` (a JSON string: the tower's shape and options) plus

- ``token_embedding`` (vocab, width): float16 (the tower keeps it so, half the memory of
  float32, and converts rows as it gathers them); ``positional_embedding`` (context, width):
  float32;
- per block ``b{i}.``: ``ln_1.w/.b``, ``ln_2.w/.b`` (float32), and four linear layers ``qkv``
  (3*width x width), ``out``, ``fc1`` (hidden x width), ``fc2`` (width x hidden), each as
  ``.q`` int8 weights (out x in), ``.s`` float32 per-output-channel scales, ``.b`` bias;
- ``ln_final.w/.b``; ``proj.q/.s``: the text projection as a linear layer (embed_dim x width).

Weights are quantized symmetrically per output channel: ``q = round(W / s)``,
``s = max|W[row]| / 127``. Activations are quantized per row at run time (csrc/cpu/text_tower.h).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from univl_fast.export.towers import TextTower, UnsupportedTowerError
from univl_fast.runtime.native_text import FORMAT, embedding_fp16


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output row: (q int8, scale float32) with w ~ q * scale[:, None]."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _activation(mlp: nn.Module, where: str) -> str:
    act = getattr(mlp, "gelu", None)
    name = type(act).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    raise UnsupportedTowerError(f"{where}: MLP activation {name} is not supported natively")


def _linear(out: dict[str, np.ndarray], key: str, weight: torch.Tensor, bias, has_bias=True):
    """``key.q`` / ``key.s`` and, for layers the native tower gives a bias, ``key.b`` (zeros
    when the torch layer has none)."""
    q, s = quantize_rows(_np(weight))
    out[f"{key}.q"], out[f"{key}.s"] = q, s
    if has_bias:
        out[f"{key}.b"] = _np(bias) if bias is not None else np.zeros(len(q), np.float32)


def block_arrays(
    arrays: dict[str, np.ndarray], blocks, tower: str
) -> tuple[set[float], set[str], int]:
    """Write each transformer block's arrays (``b{i}.``: ln_1, ln_2, qkv, out, fc1, fc2) into
    ``arrays``; returns (LayerNorm eps values, activations, MLP hidden width). Raises
    UnsupportedTowerError for a block the native towers do not reproduce."""
    eps: set[float] = set()
    acts: set[str] = set()
    hidden = 0
    for i, blk in enumerate(blocks):
        where = f"{tower} block {i}"
        if not (isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)):
            raise UnsupportedTowerError(f"{where}: LayerScale is not supported natively")
        mlp = blk.mlp
        if not (isinstance(mlp.c_fc, nn.Linear) and isinstance(mlp.c_proj, nn.Linear)):
            raise UnsupportedTowerError(f"{where}: MLP is not c_fc -> act -> c_proj")
        acts.add(_activation(mlp, where))
        hidden = mlp.c_fc.out_features
        p = f"b{i}."
        for name in ("ln_1", "ln_2"):
            ln = getattr(blk, name)
            eps.add(float(ln.eps))
            arrays[p + name + ".w"], arrays[p + name + ".b"] = _np(ln.weight), _np(ln.bias)
        qkv_w = torch.cat([blk.q.weight, blk.k.weight, blk.v.weight])
        qkv_b = torch.cat([blk.q.bias, blk.k.bias, blk.v.bias])
        _linear(arrays, p + "qkv", qkv_w, qkv_b)
        _linear(arrays, p + "out", blk.out_proj.weight, blk.out_proj.bias)
        _linear(arrays, p + "fc1", mlp.c_fc.weight, mlp.c_fc.bias)
        _linear(arrays, p + "fc2", mlp.c_proj.weight, mlp.c_proj.bias)
    return eps, acts, hidden


@torch.no_grad()
def extract(clip: nn.Module) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) for ``clip``'s text tower; raises UnsupportedTowerError for a tower the
    native code does not reproduce (the exporter then writes no native weights)."""
    tower = TextTower(clip)  # same support checks as the ONNX export
    try:
        token_embedding = embedding_fp16(_np(tower.token_embedding.weight), "token embedding")
    except ValueError as exc:
        raise UnsupportedTowerError(f"{exc}: not supported natively") from exc
    arrays: dict[str, np.ndarray] = {
        "token_embedding": token_embedding,
        "positional_embedding": _np(tower.positional_embedding),
    }
    width = arrays["token_embedding"].shape[1]
    eps, acts, hidden = block_arrays(arrays, tower.blocks, "text")
    eps.add(float(tower.ln_final.eps))
    arrays["ln_final.w"], arrays["ln_final.b"] = (
        _np(tower.ln_final.weight),
        _np(tower.ln_final.bias),
    )
    if tower.proj_linear is not None:
        if tower.proj_linear.bias is not None:
            raise UnsupportedTowerError("text projection with a bias is not supported natively")
        proj_w = tower.proj_linear.weight
    elif tower.proj is not None:
        proj_w = tower.proj.t()
    else:
        raise UnsupportedTowerError("text tower without a projection is not supported natively")
    _linear(arrays, "proj", proj_w, None, has_bias=False)
    if len(eps) != 1 or len(acts) != 1:
        raise UnsupportedTowerError(
            f"text tower mixes LayerNorm eps {sorted(eps)} / activations {sorted(acts)}"
        )
    meta = {
        "format": FORMAT,
        "vocab": int(arrays["token_embedding"].shape[0]),
        "width": int(width),
        "heads": int(tower.blocks[0].num_heads),
        "layers": len(tower.blocks),
        "hidden": int(hidden),
        "context": int(arrays["positional_embedding"].shape[0]),
        "embed_dim": int(arrays["proj.q"].shape[0]),
        "act": acts.pop(),
        "pool": tower.pool_type,
        "eos_id": int(tower.eos_id or 0),
        "ln_eps": eps.pop(),
        "weights": "int8 symmetric per output channel",
        "activations": "uint8 asymmetric per row, dynamic",
    }
    bad = [k for k in ("width", "hidden", "embed_dim") if meta[k] % 32]
    if bad:
        raise UnsupportedTowerError(
            f"native text tower needs multiples of 32: {', '.join(f'{k}={meta[k]}' for k in bad)}"
        )
    return meta, arrays


def to_npz_bytes(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return buf.getvalue()


__all__ = ["FORMAT", "block_arrays", "embedding_fp16", "extract", "quantize_rows", "to_npz_bytes"]
