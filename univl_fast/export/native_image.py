"""Weights of the native int8 image tower (``univl_fast._C.ImageTower``) from an open_clip CLIP.

One uncompressed ``.npz`` (numpy only to read, no pickle), beside the ONNX graphs: ``meta`` (a
JSON string: the tower's shape and options) plus

- ``patch_embed.q/.s``: the patch convolution as a linear layer (width x 3*p*p, columns in the
  conv weight's (channel, y, x) order), int8 per output channel;
- ``class_embedding`` (width,), ``positional_embedding`` (1 + grid^2, width), ``ln_pre.w/.b``:
  float32;
- per block ``b{i}.``: as the text tower (``univl_fast.export.native_text``);
- ``ln_post.w/.b``; ``proj.q/.s``: the projection (embed_dim x width).

``export_native_image`` extracts, verifies against PyTorch (cosine and relative L2 of the raw
embedding, and the combined image-document vector with the engine's captions) and writes it;
a model the native code does not reproduce is refused with the reason recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from univl_fast.export.native_text import _linear, _np, block_arrays, to_npz_bytes
from univl_fast.export.towers import ImageTower, UnsupportedTowerError
from univl_fast.runtime.native_image import FORMAT

log = logging.getLogger(__name__)
WEIGHTS_FILE = "image_int8.native.npz"
# relative L2 / norm limits of the int8 contract (cosine: ExportConfig.lowp_min_cosine)
MAX_REL_L2 = 0.08
MAX_NORM_DEVIATION = 0.02


@dataclass(frozen=True)
class Limits:
    """What a native image tower must reach on every row to be written."""

    min_cosine: float
    max_rel_l2: float = MAX_REL_L2
    max_norm_deviation: float = MAX_NORM_DEVIATION


@torch.no_grad()
def extract(clip: nn.Module) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) for ``clip``'s image tower; raises UnsupportedTowerError for a tower the
    native code does not reproduce (the exporter then writes no native image weights)."""
    tower = ImageTower(clip)  # same support checks as the ONNX export
    v = clip.visual
    conv = tower.conv1
    if conv.bias is not None:
        raise UnsupportedTowerError("image tower: patch convolution with a bias")
    width, channels, p, p2 = conv.weight.shape
    if (
        channels != 3
        or p != p2
        or tuple(conv.stride) != (p, p)
        or conv.padding
        not in (
            (0, 0),
            0,
            "valid",
        )
    ):
        raise UnsupportedTowerError(
            f"image tower: patch convolution {tuple(conv.weight.shape)} stride "
            f"{tuple(conv.stride)} padding {conv.padding}: only non-overlapping square RGB "
            "patches are supported natively"
        )
    if getattr(v, "patch_dropout", None) is not None and not isinstance(
        v.patch_dropout, nn.Identity
    ):
        raise UnsupportedTowerError("image tower: patch dropout is not supported natively")
    image_size = v.image_size[0] if isinstance(v.image_size, (tuple, list)) else v.image_size
    if image_size % p or (isinstance(v.image_size, (tuple, list)) and len(set(v.image_size)) > 1):
        raise UnsupportedTowerError(f"image tower: image size {v.image_size} with patch {p}")
    arrays: dict[str, np.ndarray] = {}
    _linear(arrays, "patch_embed", conv.weight.reshape(width, -1), None, has_bias=False)
    arrays["class_embedding"] = _np(tower.class_embedding).reshape(width)
    arrays["positional_embedding"] = _np(tower.positional_embedding)
    arrays["ln_pre.w"], arrays["ln_pre.b"] = _np(tower.ln_pre.weight), _np(tower.ln_pre.bias)
    eps, acts, hidden = block_arrays(arrays, tower.blocks, "image")
    eps |= {float(tower.ln_pre.eps), float(tower.ln_post.eps)}
    arrays["ln_post.w"], arrays["ln_post.b"] = _np(tower.ln_post.weight), _np(tower.ln_post.bias)
    if tower.proj is None:
        raise UnsupportedTowerError("image tower without a projection is not supported natively")
    _linear(arrays, "proj", tower.proj.t(), None, has_bias=False)
    if len(eps) != 1 or len(acts) != 1:
        raise UnsupportedTowerError(
            f"image tower mixes LayerNorm eps {sorted(eps)} / activations {sorted(acts)}"
        )
    meta = {
        "format": FORMAT,
        "width": int(width),
        "heads": int(tower.blocks[0].num_heads),
        "layers": len(tower.blocks),
        "hidden": int(hidden),
        "embed_dim": int(arrays["proj.q"].shape[0]),
        "patch": int(p),
        "image_size": int(image_size),
        "act": acts.pop(),
        "ln_eps": eps.pop(),
        "weights": "int8 symmetric per output channel (patch embedding included)",
        "activations": "uint8 asymmetric per row, dynamic",
    }
    bad = [k for k in ("width", "hidden", "embed_dim") if meta[k] % 32]
    if bad:
        raise UnsupportedTowerError(
            f"native image tower needs multiples of 32: {', '.join(f'{k}={meta[k]}' for k in bad)}"
        )
    return meta, arrays


def _row_stats(out: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row cosine, relative L2 error ``||out - ref|| / ||ref||`` and norm ratio, float64."""
    o, r = out.astype(np.float64), ref.astype(np.float64)
    on, rn = np.linalg.norm(o, axis=1), np.maximum(np.linalg.norm(r, axis=1), 1e-300)
    cos = (o * r).sum(1) / np.maximum(on * rn, 1e-300)
    return cos, np.linalg.norm(o - r, axis=1) / rn, on / rn


def compare(
    out: np.ndarray,
    ref: np.ndarray,
    limits: Limits,
    provider: str,
    cos_of: np.ndarray | None = None,
) -> dict[str, Any]:
    """Parity of raw rows ``out`` vs ``ref`` (n, d) under ``limits``, as the manifest records
    it. cos_of: rows whose cosine is judged instead of ``out``'s (the served unit vectors)."""
    p: dict[str, Any] = {
        "measured": True,
        "passed": False,
        "threshold": limits.min_cosine,
        "max_rel_l2_allowed": limits.max_rel_l2,
        "max_norm_deviation_allowed": limits.max_norm_deviation,
        "rows": int(len(out)),
        "provider": provider,
        "reason": None,
    }
    if out.shape != ref.shape or not np.isfinite(out).all():
        p["measured"] = False  # nothing to measure: summarize() prints the reason
        p["reason"] = f"output {out.shape} (finite: {bool(np.isfinite(out).all())}) vs {ref.shape}"
        return p
    cos, rel, ratio = _row_stats(out, ref)
    if cos_of is not None:
        cos = _row_stats(cos_of, ref)[0]
    p.update(
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_rel_l2=float(rel.max()),
        mean_rel_l2=float(rel.mean()),
        norm_ratio=[float(ratio.min()), float(ratio.max())],
        max_abs_err=float(np.abs(out.astype(np.float64) - ref).max()),
        max_abs_ref=float(np.abs(ref).max()),
    )
    reasons = []
    if cos.min() < limits.min_cosine:
        reasons.append(f"min cosine {cos.min():.6f} < {limits.min_cosine} (row {cos.argmin()})")
    if rel.max() > limits.max_rel_l2:
        reasons.append(
            f"relative L2 error {rel.max():.4f} > {limits.max_rel_l2} (row {rel.argmax()})"
        )
    if np.abs(ratio - 1).max() > limits.max_norm_deviation:
        reasons.append(f"norm ratio off 1 by {np.abs(ratio - 1).max():.4f}: a scale error")
    p["passed"], p["reason"] = not reasons, "; ".join(reasons) or None
    return p


def verify(
    data: bytes,
    pixels: np.ndarray,
    image_ref: np.ndarray,
    caption_raw: np.ndarray,
    caption_ref: np.ndarray,
    limits: Limits,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The native image tower (weights file bytes ``data``) on the sample: (image parity,
    combined parity). Image rows: all images in one batch, then the first alone (the batch row
    must not depend on its neighbours). Combined: the image-document vector as the runtime
    serves it, ``combine_image_docs(native image, caption)`` (captions from the engine's text
    tower: ``caption_raw``), vs PyTorch's ``normalize(image + caption)``; cosine on the served
    unit rows, relative L2 on the raw sums."""
    from univl_fast.ops import combine_image_docs
    from univl_fast.runtime.backends import ThreadSettings
    from univl_fast.runtime.native_image import NativeImageTower

    tower = NativeImageTower(data, threads=ThreadSettings().resolved_intra_op())
    provider = f"univl_fast native ({tower.isa})"
    together = tower.run(pixels)
    out = np.concatenate([together, tower.run(pixels[:1])])
    image = compare(out, np.concatenate([image_ref, image_ref[:1]]), limits, provider)
    served = combine_image_docs(together, np.ascontiguousarray(caption_raw, dtype=np.float32))
    ref_sum = image_ref.astype(np.float64) + caption_ref
    raw_sum = together.astype(np.float64) + caption_raw
    combined = compare(raw_sum, ref_sum, limits, f"{provider} + engine text tower", served)
    return image, combined


def export_native_image(
    clip: nn.Module,
    root: Path,
    pixels: np.ndarray,
    image_ref: np.ndarray,
    caption_raw: np.ndarray,
    caption_ref: np.ndarray,
    limits: Limits,
) -> tuple[str | None, dict[str, Any]]:
    """Extract, verify and (when it passes) write the native image tower into ``root``:
    (the file's name or None, the record: ``reason`` when refused, ``parity`` / ``combined``
    when measured). A tower that misses parity is refused (not written)."""
    from univl_fast.utils.io import atomic_write_bytes

    try:
        meta, arrays = extract(clip)
    except UnsupportedTowerError as exc:
        log.warning("native image tower not written: %s", exc)
        return None, {"reason": str(exc), "format": FORMAT}
    data = to_npz_bytes(meta, arrays)
    image, combined = verify(data, pixels, image_ref, caption_raw, caption_ref, limits)
    record = {"parity": image, "combined": combined, "format": meta["format"]}
    failed = [
        f"{k}: {p['reason']}"
        for k, p in (("image", image), ("combined", combined))
        if not p["passed"]
    ]
    if failed:
        image["passed"] = False
        record["reason"] = "not written (misses parity with PyTorch): " + "; ".join(failed)
        log.warning("native int8 image tower %s", record["reason"])
        return None, record
    atomic_write_bytes(root / WEIGHTS_FILE, data)
    return WEIGHTS_FILE, record


__all__ = [
    "FORMAT",
    "WEIGHTS_FILE",
    "Limits",
    "compare",
    "export_native_image",
    "extract",
    "to_npz_bytes",
    "verify",
]
