"""Weights of the native int8 image tower (``univl_fast._C.ImageTower``) from an open_clip CLIP.

One uncompressed ``.npz`` (numpy only to read, no pickle), beside the ONNX graphs: ``meta`` (a
JSON string: the tower's shape and options) plus

- ``patch_embed.q/.s``: the patch convolution as a linear layer (width x 3*p*p, columns in the
  conv weight's (channel, y, x) order), int8 per output channel;
- ``class_embedding`` (width,), ``positional_embedding`` (1 + grid^2, width), ``ln_pre.w/.b``:
  float32;
- per block ``b{i}.``: as the text tower (``univl_fast.export.native_text``);
- ``ln_post.w/.b``; ``proj.q/.s``: the projection (embed_dim x width).

The exporter (``univl_fast.export.build``) verifies it against PyTorch like an image graph
(``run_native_image``: cosine, relative L2 and norm ratio of the raw embedding), then the
image-document vector it makes with the engine's captions; a tower that misses either, or a
model the native code does not reproduce, is not written and the reason is recorded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from univl_fast.export import verify
from univl_fast.export.native_text import _linear, _np, block_arrays, to_npz_bytes
from univl_fast.export.towers import ImageTower, UnsupportedTowerError
from univl_fast.runtime.native_image import FORMAT


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


def run_native_image(
    data: bytes, inputs: verify.SampleInputs, ref: verify.Reference, limits: verify.Limits
) -> tuple[verify.Parity, verify.Outputs]:
    """The native image tower (weights file bytes ``data``) on the sample, like an image graph
    (all images in one batch, then the first alone) vs PyTorch: its parity and outputs (for
    the image-document vector check)."""
    from univl_fast.runtime.backends import ThreadSettings
    from univl_fast.runtime.native_image import NativeImageTower

    tower = NativeImageTower(data, threads=ThreadSettings().resolved_intra_op())
    from univl_fast.runtime.kernel_class import native_class

    outputs = verify.tower_outputs(tower.run, "image", inputs)
    provider = f"univl_fast native ({tower.isa})"
    p = verify.check_tower(outputs, "image", ref, limits, provider)
    p.measured_on = [native_class(tower.isa)]
    return p, outputs


def measure_speed(
    data: bytes, graph: bytes | None, pixels: np.ndarray, *, batch: int = 16, repeats: int = 3
) -> dict[str, Any]:
    """Images/s of the native tower (weights file bytes ``data``) and of the int8 image graph
    on ONNX Runtime (``graph``; None: none was written) on the same ``batch`` of ``pixels``
    (the verification sample, repeated), with the same threads: one warm-up each, then
    ``repeats`` rounds that run both, alternating which goes first (a load change on a shared
    machine hits both); each side's best round counts. Seconds for ViT-B-32. What
    ``univl_fast.runtime.selection.native_image_speed_problem`` judges."""
    import time

    from univl_fast.runtime.backends import ThreadSettings
    from univl_fast.runtime.native_image import NativeImageTower

    threads = ThreadSettings().resolved_intra_op()
    record: dict[str, Any] = {"batch": batch, "repeats": repeats, "threads": threads}
    if graph is None:
        return {**record, "measured": False, "reason": "no int8 image graph to compare with"}
    x = np.ascontiguousarray(np.resize(pixels, (batch, *pixels.shape[1:])), dtype=np.float32)
    tower = NativeImageTower(data, threads=threads)
    session = verify._session(graph)
    name = session.get_inputs()[0].name
    runners = {
        "native": tower.run,
        "onnxruntime": lambda a: session.run(None, {name: a})[0],
    }
    best = dict.fromkeys(runners, float("inf"))
    for run in runners.values():
        run(x)  # warm-up: workspace, thread pools, caches
    order = list(runners)
    for _ in range(repeats):
        for key in order:
            start = time.perf_counter()
            runners[key](x)
            best[key] = min(best[key], time.perf_counter() - start)
        order.reverse()
    return {
        **record,
        "measured": True,
        "isa": tower.isa,
        "native_images_per_s": round(batch / best["native"], 2),
        "onnxruntime_images_per_s": round(batch / best["onnxruntime"], 2),
    }


__all__ = ["FORMAT", "extract", "measure_speed", "run_native_image", "to_npz_bytes"]
