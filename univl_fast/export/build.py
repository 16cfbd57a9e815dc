"""The export pipeline: towers -> ONNX (fp32 / fp16 / int8) -> verified -> engine dir.

Order of writes: the old ``manifest.json`` is removed first, every graph is verified in memory
before it is written (atomically), ``manifest.json`` is written last. An interrupted export
therefore leaves no manifest (the runtime refuses the dir) and never one that points at a
missing or partial file; re-running the export redoes it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from univl_fast.errors import UnivlFastError
from univl_fast.export import onnx_export, optimize, quantize, verify
from univl_fast.export.config import ExportConfig
from univl_fast.export.manifest import MANIFEST_NAME, file_entry, tool_versions, write_manifest
from univl_fast.export.samples import VerificationSample, builtin_sample
from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig
from univl_fast.runtime.tokenizer import VOCAB_FILENAME, ClipTokenizer
from univl_fast.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)
TOKENIZER_DIR = "tokenizer"


class ExportError(UnivlFastError, RuntimeError):
    """The export could not produce a verified engine; the message says which graph and why."""


@dataclass
class ModelSpec:
    """What the exporter needs to know about the model besides its weights."""

    model_config: dict[str, Any]  # the checkpoint's model_config.json (ModelConfig)
    embed_dim: int
    image_size: int
    context_length: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path, model name

    @classmethod
    def from_model_config(cls, cfg: dict[str, Any], source: dict | None = None) -> ModelSpec:
        return cls(
            model_config=cfg,
            embed_dim=int(cfg["embed_dim"]),
            image_size=int(cfg["image_size"]),
            context_length=int(cfg.get("context_length", 77)),
            mean=[float(x) for x in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))],
            std=[float(x) for x in cfg.get("std", (0.26862954, 0.26130258, 0.27577711))],
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
            source=source or {},
        )


def _bundled_vocab() -> Path:
    from open_clip.tokenizer import default_bpe

    return Path(default_bpe())


def export_engine(
    clip: nn.Module,
    spec: ModelSpec,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    sample: VerificationSample | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``clip`` (an open_clip CLIP in eval mode) into ``out_dir``; returns the manifest."""
    config = config or ExportConfig()
    config.validate()
    sample = sample or builtin_sample()
    clip = clip.eval().float()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)

    with_native = config.native_text and "int8" in config.precisions
    steps = 1 + 2 * (1 + len(config.precisions)) + (2 if config.tensorrt else 0) + with_native
    bar = tqdm(total=steps, desc="export", file=sys.stderr, disable=not progress, unit="step")

    # tokenizer: the runtime needs neither torch nor open_clip
    vocab_rel = f"{TOKENIZER_DIR}/{VOCAB_FILENAME}"
    atomic_write_bytes(root / vocab_rel, _bundled_vocab().read_bytes())
    tokenizer = ClipTokenizer(root / vocab_rel, spec.context_length)
    pre_cfg = PreprocessConfig(
        spec.image_size, tuple(spec.mean), tuple(spec.std), spec.interpolation, spec.resize_mode
    )
    pixels = ImagePreprocessor(pre_cfg)(sample.images)
    texts = list(sample.texts)
    text_ref = verify.text_reference(clip, tokenizer, texts)
    image_ref = verify.image_reference(clip, pixels)
    bar.update(1)

    files: dict[str, dict] = {
        vocab_rel: {"kind": "tokenizer", "format": "clip-bpe-merges"},
    }
    graphs: dict[str, dict[str, str]] = {"text": {}, "image": {}}
    parity: dict[str, dict[str, dict]] = {"text": {}, "image": {}}
    fusions: dict[str, dict[str, int]] = {}
    check_kw = {
        "text": {"tokenizer": tokenizer, "texts": texts},
        "image": {"pixels": pixels},
    }
    refs = {"text": text_ref, "image": image_ref}

    for tower in ("text", "image"):
        bar.set_description(f"export {tower} fp32")
        if tower == "text":
            proto, gspec = onnx_export.export_text(
                clip, spec.context_length, spec.embed_dim, config.opset
            )
        else:
            proto, gspec = onnx_export.export_image(
                clip, spec.image_size, spec.embed_dim, config.opset
            )
        stats: dict[str, int] = {}
        if config.fuse:
            proto, stats = optimize.fuse_transformer(proto, gspec.num_heads, gspec.hidden_size)
        fusions[tower] = stats
        fp32_bytes = proto.SerializeToString()
        bar.update(1)
        for precision in config.precisions:
            bar.set_description(f"export {tower} {precision}")
            info: dict[str, Any] = {}
            if precision == "fp32":
                data, threshold = fp32_bytes, config.fp32_min_cosine
            elif precision == "int8":
                per_channel = (
                    config.text_int8_per_channel
                    if tower == "text"
                    else config.image_int8_per_channel
                )
                ops = config.text_int8_ops if tower == "text" else config.image_int8_ops
                q, info = quantize.quantize_int8(
                    proto, per_channel, config.int8_reduce_range, tuple(ops)
                )
                data, threshold = q.SerializeToString(), config.lowp_min_cosine
            else:
                data, threshold = (
                    optimize.to_fp16(proto).SerializeToString(),
                    config.lowp_min_cosine,
                )
            p = verify.check_graph(
                data,
                tower,
                refs[tower],
                threshold,
                allow_unrunnable=(precision == "fp16"),
                **check_kw[tower],
            )
            if precision == "fp32" and not p.passed:
                raise ExportError(
                    f"{tower} tower fp32 graph failed parity with PyTorch ({p.reason}); "
                    "not written. The model uses a feature the exporter does not reproduce."
                )
            if p.measured and not p.passed:
                log.warning(
                    "%s %s graph misses parity (%s): written, marked failed in the "
                    "manifest, never picked by default",
                    tower,
                    precision,
                    p.reason,
                )
            rel = f"{tower}_{precision}.onnx"
            atomic_write_bytes(root / rel, data)
            files[rel] = {
                "kind": "onnx",
                "tower": tower,
                "precision": precision,
                "opset": config.opset,
                **gspec.to_json(),
                "fusions": stats,
                **({"quantization": info} if info else {}),
            }
            graphs[tower][precision] = rel
            parity[tower][precision] = p.to_json()
            bar.update(1)

    native: dict[str, Any] = {"text": {}}
    if config.native_text and "int8" in config.precisions:
        bar.set_description("export native text int8")
        native = _export_native_text(clip, root, files, parity, tokenizer, texts, text_ref, config)
        bar.update(1)

    plans: dict[str, dict[str, str]] = {}
    if config.tensorrt:
        from univl_fast.export import tensorrt as trt_build

        for tower in ("text", "image"):
            bar.set_description(f"tensorrt {tower}")
            rel, entry = trt_build.build_tower_plan(
                root,
                graphs[tower]["fp32"],
                tower,
                spec.context_length,
                spec.image_size,
                config.trt_max_batch,
                config.trt_opt_batch,
            )
            files[rel] = entry
            plans.setdefault(tower, {})["fp16"] = rel
            bar.update(1)

    for rel in list(files):
        files[rel] = file_entry(root, rel, **files[rel])
    body = {
        "model_name": spec.model_config.get("model_name"),
        "model_config": spec.model_config,
        "embed_dim": spec.embed_dim,
        "context_length": spec.context_length,
        "preprocess": {
            "image_size": spec.image_size,
            "mean": spec.mean,
            "std": spec.std,
            "interpolation": spec.interpolation,
            "resize_mode": spec.resize_mode,
        },
        "tokenizer": {
            "type": "clip-bpe",
            "vocab_file": vocab_rel,
            "context_length": spec.context_length,
            "sot_token_id": tokenizer.sot_token_id,
            "eot_token_id": tokenizer.eot_token_id,
            "vocab_size": tokenizer.vocab_size,
            "clean": "lower (ftfy + html unescape x2 + whitespace collapse + lowercase)",
            "truncation": "first context_length ids, last one replaced by eot (open_clip 3.x)",
            "padding": 0,
        },
        "outputs": "raw (unnormalized) projected embeddings; the runtime L2-normalizes",
        "files": files,
        "graphs": graphs,
        "tensorrt_plans": plans,
        "native": native,
        "parity": parity,
        "parity_sample": {
            "source": sample.source,
            "texts": len(texts),
            "images": len(sample.images),
            "notes": sample.notes,
        },
        "fusions": fusions,
        "export_config": config.to_json(),
        "source": spec.source,
        "versions": tool_versions(),
    }
    manifest = write_manifest(root, body)
    bar.set_description("export done")
    bar.close()
    return manifest


def _export_native_text(
    clip: nn.Module,
    root: Path,
    files: dict[str, dict],
    parity: dict[str, dict[str, dict]],
    tokenizer: ClipTokenizer,
    texts: list[str],
    text_ref,
    config: ExportConfig,
) -> dict[str, Any]:
    """The native int8 text tower's weights, verified like a graph: ``{"text": {"int8": rel}}``,
    or ``{"text": {}, "reason": ...}`` when this model's text tower is not supported natively
    (the ONNX graphs are unaffected)."""
    from univl_fast.export import native_text
    from univl_fast.export.towers import UnsupportedTowerError

    try:
        meta, arrays = native_text.extract(clip)
    except UnsupportedTowerError as exc:
        log.warning("native text tower not written: %s", exc)
        return {"text": {}, "reason": str(exc)}
    data = native_text.to_npz_bytes(meta, arrays)
    p = verify.check_native_text(
        data, text_ref, config.lowp_min_cosine, tokenizer=tokenizer, texts=texts
    )
    if not p.passed:
        log.warning(
            "native int8 text tower misses parity (%s): written, marked failed in the manifest, "
            "never picked by default",
            p.reason,
        )
    rel = "text_int8.native.npz"
    atomic_write_bytes(root / rel, data)
    files[rel] = {
        "kind": "native-text",
        "tower": "text",
        "precision": "int8",
        "format": meta["format"],
    }
    parity["text"]["int8-native"] = p.to_json()
    return {"text": {"int8": rel}}


def summarize(manifest: dict[str, Any]) -> str:
    lines = []
    for tower, by_prec in manifest["parity"].items():
        for prec, p in by_prec.items():
            if p["measured"]:
                state = "ok" if p["passed"] else "FAILED"
                lines.append(
                    f"{tower:5s} {prec:4s} min cos {p['min_cosine']:.6f}  mean "
                    f"{p['mean_cosine']:.6f}  max|err| {p['max_abs_err']:.2e}  {state}"
                )
            else:
                lines.append(f"{tower:5s} {prec:4s} {p['reason']}")
    return "\n".join(lines)


__all__ = ["ExportError", "ModelSpec", "export_engine", "summarize"]
