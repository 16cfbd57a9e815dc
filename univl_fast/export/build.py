"""The export pipeline: towers -> ONNX (fp32 / fp16 / int8) -> verified -> engine dir.

Order of writes: the old ``manifest.json`` is removed first, every graph is verified in memory
(raw outputs vs PyTorch: ``verify``) before it is written (atomically), then the image-document
vector of each precision and runtime is verified from the towers' outputs; an artifact that
misses parity is not written (or, when only the combined check refuses it, removed again) and
is recorded as refused in the manifest's parity block; an fp32 failure stops the export.
``manifest.json`` is written last. An interrupted export therefore leaves no manifest (the
runtime refuses the dir) and never one that points at a missing or partial file; re-running
the export redoes it.

Besides the served graphs, ``{tower}_fp32.trt.onnx`` is the unfused fp32 graph with standard
ONNX ops only, verified too: what TensorRT plans are built from (``tensorrt``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from univl_fast.errors import UnivlFastError
from univl_fast.export import onnx_export, optimize, quantize, verify
from univl_fast.export.config import ExportConfig
from univl_fast.export.manifest import (
    MANIFEST_NAME,
    embedding_space,
    file_entry,
    tool_versions,
    write_manifest,
)
from univl_fast.export.samples import VerificationSample, builtin_sample
from univl_fast.runtime import kernel_class, selection, verify_load
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


@dataclass
class _Artifacts:
    """What an export has written so far (relative paths -> manifest entries) and measured."""

    root: Path
    files: dict[str, dict] = field(default_factory=dict)
    graphs: dict[str, dict[str, str]] = field(default_factory=lambda: {"text": {}, "image": {}})
    parity: dict[str, dict[str, dict]] = field(
        default_factory=lambda: {"text": {}, "image": {}, "combined": {}}
    )
    # raw outputs on the sample of every artifact that ran, by (tower, runtime key)
    outputs: dict[tuple[str, str], verify.Outputs] = field(default_factory=dict)

    def write(self, rel: str, data: bytes, entry: dict) -> None:
        atomic_write_bytes(self.root / rel, data)
        self.files[rel] = entry

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)
        self.files.pop(rel, None)


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
    with_native_image = config.native_image and "int8" in config.precisions
    steps = 1 + 2 * (1 + len(config.precisions)) + (2 if config.tensorrt else 0) + with_native
    steps += with_native_image
    bar = tqdm(total=steps, desc="export", file=sys.stderr, disable=not progress, unit="step")

    # tokenizer: the runtime needs neither torch nor open_clip
    vocab_rel = f"{TOKENIZER_DIR}/{VOCAB_FILENAME}"
    atomic_write_bytes(root / vocab_rel, _bundled_vocab().read_bytes())
    tokenizer = ClipTokenizer(root / vocab_rel, spec.context_length)
    pre_cfg = PreprocessConfig(
        spec.image_size, tuple(spec.mean), tuple(spec.std), spec.interpolation, spec.resize_mode
    )
    inputs = verify.SampleInputs(
        tokenizer,
        list(sample.texts),
        sample.image_captions(),
        ImagePreprocessor(pre_cfg)(sample.images),
    )
    ref = verify.reference(clip, inputs)
    bar.update(1)

    art = _Artifacts(root)
    art.files[vocab_rel] = {"kind": "tokenizer", "format": "clip-bpe-merges"}
    _write_references(art, clip, inputs, ref)
    fusions: dict[str, dict[str, int]] = {}
    trt_graphs: dict[str, str] = {}
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
        base_entry = {"kind": "onnx", "tower": tower, "opset": config.opset, **gspec.to_json()}
        standard = None
        if config.tensorrt_graph or config.tensorrt:
            problems = onnx_export.standard_graph_problems(proto)
            if problems:
                raise ExportError(f"{tower} standard-op graph for TensorRT: {'; '.join(problems)}")
            standard = proto.SerializeToString()  # before the fusions (they edit proto)
        stats: dict[str, int] = {}
        if config.fuse:
            proto, stats = optimize.fuse_transformer(proto, gspec.num_heads, gspec.hidden_size)
        fusions[tower] = stats
        bar.update(1)
        for precision in config.precisions:
            bar.set_description(f"export {tower} {precision}")
            rel = f"{tower}_{precision}.onnx"
            data, info, p, outputs = _measured_graph(proto, tower, precision, inputs, ref, config)
            if precision == "fp32" and not p.passed:
                raise ExportError(
                    f"{tower} tower fp32 graph failed parity with PyTorch ({p.reason}); "
                    "not written. The model uses a feature the exporter does not reproduce."
                )
            if p.measured and not p.passed:
                log.warning(
                    "%s %s graph misses parity (%s): not written", tower, precision, p.reason
                )
                p.refuse(f"{tower} tower parity")
            art.parity[tower][precision] = p.to_json()
            bar.update(1)
            if not p.written:
                continue
            if outputs is not None:
                art.outputs[(tower, precision)] = outputs
            entry = {**base_entry, "precision": precision, "fusions": stats}
            art.write(rel, data, {**entry, **({"quantization": info} if info else {})})
            art.graphs[tower][precision] = rel
        del proto
        if standard is not None:
            trt_graphs[tower] = _write_standard_graph(
                art, standard, tower, base_entry, inputs, ref, config
            )

    for precision in config.precisions:
        _verify_combined(art, precision, ref, config.limits(precision))

    native: dict[str, Any] = {"text": {}}
    towers = [t for t, on in (("text", with_native), ("image", with_native_image)) if on]
    if towers:
        bar.set_description(f"export native {' + '.join(towers)} int8")
        native.update(_export_natives(towers, clip, art, inputs, ref, config))
        bar.update(len(towers))

    plans: dict[str, dict[str, str]] = {}
    if config.tensorrt:
        from univl_fast.export import tensorrt as trt_build

        bar.set_description("tensorrt plans")
        plans_by_tower, entries, plan_parity = trt_build.build_verified_plans(
            root,
            trt_graphs,
            spec.context_length,
            spec.image_size,
            inputs,
            ref,
            config.limits("fp16"),
            config.trt_max_batch,
            config.trt_opt_batch,
        )
        art.files.update(entries)
        plans = {tower: {"fp16": rel} for tower, rel in plans_by_tower.items()}
        for part, p in plan_parity.items():
            art.parity[part][trt_build.PLAN_KEY] = p
        bar.update(2)

    files = {rel: file_entry(root, rel, **entry) for rel, entry in art.files.items()}
    body = {
        "model_name": spec.model_config.get("model_name"),
        "model_config": spec.model_config,
        "embed_dim": spec.embed_dim,
        "context_length": spec.context_length,
        "embedding_space": embedding_space(clip, spec, root / vocab_rel),
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
        "reference_inputs": verify_load.REFERENCE_FILE,
        "graphs": art.graphs,
        "tensorrt_graphs": trt_graphs,
        "tensorrt_plans": plans,
        "native": native,
        "parity": art.parity,
        "parity_sample": {
            "source": sample.source,
            "texts": len(inputs.texts),
            "images": len(sample.images),
            "image_documents": len(inputs.captions),
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


def _measured_graph(
    proto,
    tower: str,
    precision: str,
    inputs: verify.SampleInputs,
    ref: verify.Reference,
    config: ExportConfig,
) -> tuple[bytes, dict, verify.Parity, verify.Outputs | None]:
    """The ``precision`` graph of a fused fp32 tower graph, run on the sample here: (bytes,
    settings, parity, outputs). int8: the ONNX Runtime quantization routes
    (``quantize.int8_routes``) in order, the first that passes parity on this host kept (its
    name and the refused ones recorded in the settings); none passing: the first's bytes with a
    parity naming every route's failure (the caller does not write it)."""
    limits = config.limits(precision)
    if precision != "int8":
        proto_p = proto if precision == "fp32" else optimize.to_fp16(proto)
        data = proto_p.SerializeToString()
        p, outputs = verify.run_graph(
            data, tower, inputs, ref, limits, allow_unrunnable=(precision == "fp16")
        )
        if p.measured:
            p.measured_on = [kernel_class.onnxruntime_class(precision)]
        return data, {}, p, outputs
    per_channel = config.text_int8_per_channel if tower == "text" else config.image_int8_per_channel
    ops = tuple(config.text_int8_ops if tower == "text" else config.image_int8_ops)
    routes = quantize.int8_routes(per_channel, config.int8_reduce_range)
    if not config.int8_route_search:
        routes = routes[:1]
    refused: list[dict] = []
    first = None
    for route in routes:
        q, info = quantize.quantize_int8(
            proto, route.per_channel, route.reduce_range, ops, route.weight_type
        )
        data = q.SerializeToString()
        del q
        p, outputs = verify.run_graph(data, tower, inputs, ref, limits)
        p.measured_on = [kernel_class.onnxruntime_class(precision)]
        info = {**info, "route": route.name, "refused_routes": list(refused)}
        if p.passed:
            if refused:
                log.warning(
                    "%s int8: route %s passes parity on this host after %s missed it",
                    tower,
                    route.name,
                    ", ".join(r["route"] for r in refused),
                )
            return data, info, p, outputs
        refused.append({"route": route.name, "reason": p.reason, "max_rel_l2": p.max_rel_l2})
        first = first or (data, info, p, outputs)
    data, info, p, outputs = first
    p.reason = "every int8 route missed parity here: " + "; ".join(
        f"{r['route']}: {r['reason']}" for r in refused
    )
    return data, {**info, "refused_routes": refused}, p, None


def _write_references(
    art: _Artifacts, clip: nn.Module, inputs: verify.SampleInputs, ref: verify.Reference
) -> None:
    """``reference_inputs.npz``: the first texts and image documents of the sample with
    PyTorch's fp32 outputs on them, what the runtime re-checks an engine on where it loads on
    other kernels (``univl_fast.runtime.verify_load``). Pixels are kept as float16; the image
    reference is recomputed on exactly those pixels."""
    n_t = min(verify_load.REFERENCE_TEXTS, len(inputs.texts))
    n_i = min(verify_load.REFERENCE_IMAGES, len(inputs.pixels))
    pixels = np.asarray(inputs.pixels[:n_i], dtype=np.float16)
    kept = verify.Reference(
        ref.texts[:n_t],
        ref.captions[:n_i],
        verify.image_reference(clip, pixels.astype(np.float32)),
    )
    data = verify_load.reference_bytes(inputs.texts[:n_t], inputs.captions[:n_i], pixels, kept)
    rel = verify_load.REFERENCE_FILE
    art.write(rel, data, {"kind": "reference-inputs", "format": verify_load.REFERENCE_FORMAT})


def _write_standard_graph(
    art: _Artifacts,
    data: bytes,
    tower: str,
    base_entry: dict,
    inputs: verify.SampleInputs,
    ref: verify.Reference,
    config: ExportConfig,
) -> str:
    """``{tower}_fp32.trt.onnx``: the unfused fp32 graph (``data``), default-domain ops only
    (what TensorRT's ONNX parser implements; checked before), verified against PyTorch like
    every graph. Returns its relative path."""
    p, _ = verify.run_graph(data, tower, inputs, ref, config.limits("fp32"))
    p.measured_on = [kernel_class.onnxruntime_class("fp32")]
    art.parity[tower]["fp32-standard"] = p.to_json()
    if not p.passed:
        raise ExportError(
            f"{tower} tower standard-op fp32 graph (for TensorRT) failed parity with PyTorch "
            f"({p.reason}); not written"
        )
    rel = f"{tower}_fp32.trt.onnx"
    entry = {**base_entry, "precision": "fp32", "purpose": "tensorrt-source", "fusions": {}}
    art.write(rel, data, entry)
    return rel


def _combined(
    art: _Artifacts, text_key: str, image_key: str, ref: verify.Reference, limits: verify.Limits
) -> verify.Parity:
    """The image-document vector from the ``text_key`` text and ``image_key`` image outputs
    vs PyTorch's (not measured when either did not run or was refused)."""
    text, image = art.outputs.get(("text", text_key)), art.outputs.get(("image", image_key))
    if text is None or image is None:
        missing = [
            f"{t} {k}"
            for t, k, o in (("text", text_key, text), ("image", image_key, image))
            if o is None
        ]
        return verify.not_measured(
            limits, f"not measured: no verified {' and '.join(missing)} output"
        )
    return verify.check_combined(text, image, ref, limits, f"text {text_key} + image {image_key}")


def _verify_combined(
    art: _Artifacts, precision: str, ref: verify.Reference, limits: verify.Limits
) -> None:
    """The ``precision`` graphs' image-document vector; on failure both graphs are removed
    and recorded as refused (an fp32 failure stops the export)."""
    p = _combined(art, precision, precision, ref, limits)
    if p.measured and not p.passed:
        if precision == "fp32":
            raise ExportError(
                f"fp32 image-document vector failed parity with PyTorch ({p.reason}); "
                "no manifest written"
            )
        log.warning(
            "%s image-document vector misses parity (%s): graphs removed", precision, p.reason
        )
        p.refuse("image-document vector parity")
        for tower in ("text", "image"):
            rel = art.graphs[tower].pop(precision, None)
            if rel is not None:
                art.remove(rel)
                art.parity[tower][precision]["written"] = False
                art.parity[tower][precision]["reason"] = (
                    f"not written (image-document vector parity): {p.reason}"
                )
    art.parity["combined"][precision] = p.to_json()


def _export_natives(
    towers: list[str],
    clip: nn.Module,
    art: _Artifacts,
    inputs: verify.SampleInputs,
    ref: verify.Reference,
    config: ExportConfig,
) -> dict[str, Any]:
    """The native int8 towers' weights (``towers``: "text" and/or "image"), each verified on
    its own like a graph (raw outputs), then the image-document vector it makes: native text
    with the verified int8 image output there is (the int8 graph, else the native image tower);
    native image with the text tower auto serves (native when it passed, else the int8 graph).
    One tower's ONNX Runtime result does not veto the other's native weights.
    ``{tower: {"int8": rel}}``, or ``{tower: {}, <reason key>: why}`` ("reason" for text,
    "image_reason" for image) when the model's tower is not supported natively or misses parity
    (then nothing is written; the ONNX graphs are unaffected)."""
    from univl_fast.export import native_image, native_text
    from univl_fast.export.towers import UnsupportedTowerError

    key, limits = selection.NATIVE_KEY, config.limits("int8")
    out: dict[str, Any] = {}
    staged: dict[str, tuple[dict, bytes, verify.Parity]] = {}
    for tower in towers:
        module = native_text if tower == "text" else native_image
        try:
            meta, arrays = module.extract(clip)
        except UnsupportedTowerError as exc:
            log.warning("native %s tower not written: %s", tower, exc)
            out.update({tower: {}, _NATIVE_REASON[tower]: str(exc)})
            continue
        data = module.to_npz_bytes(meta, arrays)
        run = verify.run_native_text if tower == "text" else native_image.run_native_image
        p, outputs = run(data, inputs, ref, limits)
        staged[tower] = (meta, data, p)
        if p.passed:
            art.outputs[(tower, key)] = outputs
    for tower, (meta, data, p) in staged.items():
        if p.passed:
            if tower == "text":
                image_key = "int8" if ("image", "int8") in art.outputs else key
                text_key, combined_key = key, key
            else:
                text_key = key if ("text", key) in art.outputs else "int8"
                image_key, combined_key = key, selection.NATIVE_IMAGE_COMBINED_KEY
            combined = _combined(art, text_key, image_key, ref, limits)
            if not combined.passed:  # also when not measured: no verified int8 output to pair
                p.passed, p.reason = False, f"image-document vector: {combined.reason}"
                combined.refuse("image-document vector parity")
                art.outputs.pop((tower, key), None)
            art.parity["combined"][combined_key] = combined.to_json()
        out.update(_write_native(tower, meta, data, p, art, inputs))
    return out


_NATIVE_REASON = {"text": "reason", "image": "image_reason"}


def _write_native(
    tower: str, meta: dict, data: bytes, p: verify.Parity, art: _Artifacts, inputs
) -> dict[str, Any]:
    """Write a native tower's weights that passed (``p``), or record why not; for the image
    tower also time it against the int8 image graph (what auto judges)."""
    from univl_fast.export import native_image

    key, reason_key = selection.NATIVE_KEY, _NATIVE_REASON[tower]
    if not p.passed:
        why = f"missed parity at export ({p.reason}); ONNX Runtime runs the {tower} tower"
        log.warning("native int8 %s tower not written: %s", tower, why)
        art.parity[tower][key] = p.refuse(f"native {tower} tower parity").to_json()
        return {tower: {}, reason_key: why}
    art.parity[tower][key] = p.to_json()
    rel = f"{tower}_int8.native.npz"
    entry = {"kind": f"native-{tower}", "tower": tower, "precision": "int8"}
    art.write(rel, data, {**entry, "format": meta["format"]})
    if tower == "text":
        return {tower: {"int8": rel}}
    # auto serves the image tower natively only where it is faster than the int8 graph
    graph_rel = art.graphs["image"].get("int8")
    graph = (art.root / graph_rel).read_bytes() if graph_rel else None
    speed = native_image.measure_speed(data, graph, inputs.pixels)
    out: dict[str, Any] = {tower: {"int8": rel}, "image_speed": speed}
    if graph is None:  # no int8 image graph passed here: the native tower is int8's only route
        log.info("native int8 image tower: the only int8 image route of this engine")
        return out
    slower = selection.native_image_speed_problem({"native": out})
    if slower is not None:
        log.warning("native int8 image tower written but not picked by auto: %s", slower)
        out["image_reason"] = f"not picked by auto: {slower}"
    else:
        log.info("native int8 image tower picked by auto: %s", speed)
    return out


def summarize(manifest: dict[str, Any]) -> str:
    lines = []
    for part, by_key in manifest["parity"].items():
        for key, p in by_key.items():
            if p["measured"] and p.get("min_cosine") is not None:
                state = "ok" if p["passed"] else "FAILED, not written"
                lines.append(
                    f"{part:8s} {key:14s} min cos {p['min_cosine']:.6f}  max rel L2 "
                    f"{p['max_rel_l2']:.2e}  norm ratio {p['norm_ratio'][0]:.4f}.."
                    f"{p['norm_ratio'][1]:.4f}  {state}"
                )
            else:
                lines.append(f"{part:8s} {key:14s} {p['reason']}")  # not measured / no output
    for rel, entry in manifest["files"].items():
        q = entry.get("quantization") or {}
        if q.get("refused_routes"):
            refused = ", ".join(r["route"] for r in q["refused_routes"])
            lines.append(f"{rel}: int8 route {q['route']} (missed parity here: {refused})")
    speed = manifest.get("native", {}).get("image_speed")
    if speed and speed.get("measured"):
        slower = selection.native_image_speed_problem(manifest)
        lines.append(
            f"image speed: native int8 {speed['native_images_per_s']:.1f} vs ONNX Runtime int8 "
            f"{speed['onnxruntime_images_per_s']:.1f} images/s (batch {speed['batch']}, "
            f"{speed['threads']} threads): auto runs {'onnxruntime' if slower else 'native'}"
        )
    return "\n".join(lines)


__all__ = ["ExportError", "ModelSpec", "export_engine", "summarize"]
