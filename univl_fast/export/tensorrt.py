"""TensorRT fp16 plans from the engine's standard-op fp32 graphs (needs tensorrt + a GPU).

Plans are parsed from ``{tower}_fp32.trt.onnx`` (default-domain ONNX ops only: TensorRT's
ONNX parser does not implement ONNX Runtime's ``com.microsoft`` fusions of the served fp32
graph), then verified like every graph: run on the verification sample, raw outputs and the
image-document vector compared with the reference (PyTorch at export; on a GPU host adding
plans to an engine exported elsewhere, the fp32 graph that passed parity at export). A plan
pair that misses parity is removed and recorded as refused; ``auto`` never picks plans
without recorded, passed parity (``univl_fast.runtime.selection``).

Each plan's manifest entry records the GPU model, compute capability and TensorRT version that
built it; a load elsewhere falls back to ONNX Runtime with a warning
(``runtime.backends.tensorrt_plans_problem``). fp16 comes from ``BuilderFlag.FP16`` where the
TensorRT version has it, else from a strongly-typed network over an fp16 copy of the graph
(``export/fp16_graph.py``).

Unverified on the development machine (no GPU there): written against the TensorRT 10
Python API and tested with a fake tensorrt module. ``require_tensorrt`` explains precisely why
a build cannot run here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from univl_fast.errors import UnivlFastError
from univl_fast.export.manifest import file_entry, trt_version
from univl_fast.runtime.backends import GPU_EXTRA, _cuda_devices, plan_provenance
from univl_fast.runtime.kernel_class import tensorrt_class, tensorrt_version
from univl_fast.runtime.selection import PLAN_KEY  # the plans' parity key


class TensorRTUnavailable(UnivlFastError, RuntimeError):
    """TensorRT plans cannot be built here; the message says why."""


class NonStandardGraphError(UnivlFastError, ValueError):
    """A graph handed to TensorRT holds ops its ONNX parser does not implement."""


def require_tensorrt() -> None:
    reasons = []
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append(f"the tensorrt package is not installed ({GPU_EXTRA})")
    if _cuda_devices() == 0:
        reasons.append("no CUDA device is visible")
    if reasons:
        raise TensorRTUnavailable(
            "--tensorrt: cannot build TensorRT plans here: " + "; ".join(reasons)
        )


def build_plan(
    onnx_path: str | Path,
    input_name: str,
    min_shape: tuple,
    opt_shape: tuple,
    max_shape: tuple,
    fp16: bool = True,
    workspace_gib: float = 4.0,
) -> bytes:
    """Parse an ONNX graph and build a serialized plan with one optimization profile."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # fp16: BuilderFlag.FP16 where this TensorRT has it (10.x; deprecated since 10.12, gone in
    # 11); otherwise a strongly-typed network parsed from an fp16 copy of the graph.
    use_flag = fp16 and hasattr(trt.BuilderFlag, "FP16")
    typed = fp16 and not use_flag
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if typed:
        import onnx

        from univl_fast.export.fp16_graph import to_fp16

        graph = to_fp16(onnx.load(str(onnx_path))).SerializeToString()
        parsed = parser.parse(graph, str(Path(onnx_path).parent))
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if use_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, min_shape, opt_shape, max_shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build a plan (see its log above)")
    return bytes(plan)


def build_tower_plan(
    root: Path,
    onnx_rel: str,
    tower: str,
    context_length: int,
    image_size: int,
    max_batch: int = 64,
    opt_batch: int = 16,
) -> tuple[str, dict]:
    """Build ``{tower}_fp16.plan`` from the tower's standard-op ONNX graph ``onnx_rel`` in
    engine dir ``root`` (refused when the graph holds ops TensorRT does not parse); returns
    the plan's relative path and its manifest entry (without sha256/size)."""
    import onnx

    from univl_fast.export.onnx_export import (
        IMAGE_INPUT,
        IMAGE_OUTPUT,
        TEXT_INPUT,
        TEXT_OUTPUT,
        standard_graph_problems,
    )
    from univl_fast.utils.io import atomic_write_bytes

    problems = standard_graph_problems(onnx.load(Path(root) / onnx_rel))
    if problems:
        raise NonStandardGraphError(
            f"{onnx_rel}: not a graph TensorRT can parse: {'; '.join(problems)}"
        )

    if tower == "text":
        name, out = TEXT_INPUT, TEXT_OUTPUT
        shapes = ((1, 1), (opt_batch, 24), (max_batch, context_length))
    else:
        name, out, s = IMAGE_INPUT, IMAGE_OUTPUT, image_size
        shapes = ((1, 3, s, s), (opt_batch, 3, s, s), (max_batch, 3, s, s))
    plan = build_plan(Path(root) / onnx_rel, name, *shapes, fp16=True)
    rel = f"{tower}_fp16.plan"
    atomic_write_bytes(Path(root) / rel, plan)
    entry = {
        "kind": "tensorrt-plan",
        "tower": tower,
        "precision": "fp16",
        "source": onnx_rel,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "input": name,
        "output": out,
        "note": "valid for the GPU model and TensorRT version that built it only",
        # what it is bound to: a load on another GPU model / TensorRT falls back to ONNX Runtime
        **plan_provenance(),
    }
    return rel, entry


def build_verified_plans(
    root: Path,
    sources: dict[str, str],
    context_length: int,
    image_size: int,
    inputs,
    ref,
    limits,
    max_batch: int = 64,
    opt_batch: int = 16,
) -> tuple[dict[str, str], dict[str, dict], dict[str, dict]]:
    """Build both towers' fp16 plans from the standard-op graphs ``sources`` ({tower: rel}),
    run them on the sample ``inputs`` and compare with ``ref`` (``univl_fast.runtime.parity``: no torch).

    Returns (plans {tower: rel}, their manifest entries {rel: entry without sha256/size},
    parity {"text" | "image" | "combined": Parity json}). When any check fails, both plan
    files are removed, plans and entries are empty and the parity says why.
    """
    from univl_fast.runtime import parity as verify
    from univl_fast.runtime.backends import open_tower

    plans: dict[str, str] = {}
    entries: dict[str, dict] = {}
    outputs = {}
    parity: dict[str, verify.Parity] = {}
    for tower in ("text", "image"):
        rel, entry = build_tower_plan(
            root, sources[tower], tower, context_length, image_size, max_batch, opt_batch
        )
        plans[tower], entries[rel] = rel, entry
        runner = open_tower(Path(root) / rel, "tensorrt", entry)
        outputs[tower] = verify.tower_outputs(runner.run, tower, inputs)
        parity[tower] = verify.check_tower(outputs[tower], tower, ref, limits, "TensorRT fp16")
        parity[tower].measured_on = [tensorrt_class(tensorrt_version())]
    parity["combined"] = verify.check_combined(
        outputs["text"], outputs["image"], ref, limits, "TensorRT fp16"
    )
    failed = [part for part, p in parity.items() if not p.passed]
    if failed:
        for rel in entries:
            (Path(root) / rel).unlink(missing_ok=True)
        for p in parity.values():
            p.refuse(f"the plan pair missed parity on {', '.join(failed)}")
        plans, entries = {}, {}
    return plans, entries, {k: p.to_json() for k, p in parity.items()}


def _reference_from_fp32_graphs(root: Path, manifest: dict, inputs):
    """The engine's fp32 ONNX graphs (verified against PyTorch at export) on the sample: the
    reference for plans built where the PyTorch model is not at hand."""
    from univl_fast.runtime import parity as verify
    from univl_fast.runtime.backends import OrtTower
    from univl_fast.runtime.manifest import verify_file

    out = {}
    for tower in ("text", "image"):
        path = verify_file(root, manifest, manifest["graphs"][tower]["fp32"])
        out[tower] = verify.tower_outputs(OrtTower(path).run, tower, inputs)
    n = len(inputs.texts)
    return verify.Reference(
        out["text"].rows[:n].astype("float64"),
        out["text"].pairs.astype("float64"),
        out["image"].pairs.astype("float64"),
    )


def add_plans_to_engine(engine_dir: str | Path, max_batch: int = 64, opt_batch: int = 16) -> dict:
    """On a GPU host: build fp16 plans for an engine exported elsewhere (e.g. on a CPU box)
    from its standard-op graphs, verify them against the engine's fp32 graphs on the built-in
    sample and rewrite its manifest (atomically) to list them with their parity (refused plans
    are recorded, not written). The engine's embedding space is unchanged, so its indexes stay
    valid. Returns the new manifest."""
    import datetime as _dt

    from univl_fast.export.config import ExportConfig
    from univl_fast.export.samples import builtin_sample
    from univl_fast.runtime.manifest import MANIFEST_NAME, EngineError, load_manifest, verify_file
    from univl_fast.runtime.parity import SampleInputs
    from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig
    from univl_fast.runtime.tokenizer import ClipTokenizer
    from univl_fast.utils.io import atomic_write_json

    root = Path(engine_dir)
    manifest = load_manifest(root)
    sources = manifest.get("tensorrt_graphs") or {}
    if set(sources) != {"text", "image"}:
        raise EngineError(
            f"engine {root}: no standard-op fp32 graphs (tensorrt_graphs) to build plans from; "
            "re-export it with this version of univl_fast (without --no-tensorrt-graph)"
        )
    for rel in sources.values():
        verify_file(root, manifest, rel)
    require_tensorrt()
    tok = manifest["tokenizer"]
    tokenizer = ClipTokenizer(verify_file(root, manifest, tok["vocab_file"]), tok["context_length"])
    pre = manifest["preprocess"]
    sample = builtin_sample()
    pixels = ImagePreprocessor(
        PreprocessConfig(
            pre["image_size"],
            tuple(pre["mean"]),
            tuple(pre["std"]),
            pre["interpolation"],
            pre["resize_mode"],
        )
    )(sample.images)
    inputs = SampleInputs(tokenizer, list(sample.texts), sample.image_captions(), pixels)
    ref = _reference_from_fp32_graphs(root, manifest, inputs)
    plans, entries, parity = build_verified_plans(
        root,
        sources,
        int(manifest["context_length"]),
        int(pre["image_size"]),
        inputs,
        ref,
        ExportConfig().limits("fp16"),
        max_batch,
        opt_batch,
    )
    for rel, entry in entries.items():
        manifest["files"][rel] = file_entry(root, rel, **entry)
    manifest["tensorrt_plans"] = {tower: {"fp16": rel} for tower, rel in plans.items()}
    for part, p in parity.items():
        manifest["parity"].setdefault(part, {})[PLAN_KEY] = {
            **p,
            "reference": "the engine's fp32 ONNX graphs (ONNX Runtime CPU), built-in sample",
        }
    manifest.setdefault("versions", {})["tensorrt"] = trt_version()
    manifest["plans_added"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(root / MANIFEST_NAME, manifest)
    return manifest
