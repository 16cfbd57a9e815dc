"""TensorRT fp16 plans from the exported ONNX graphs (needs tensorrt + a CUDA GPU).

Unverified on the development machine (no GPU there): written against the TensorRT 10
Python API. ``require_tensorrt`` explains precisely why a build cannot run here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from univl_fast.errors import UnivlFastError
from univl_fast.runtime.backends import GPU_EXTRA, _cuda_devices


class TensorRTUnavailable(UnivlFastError, RuntimeError):
    """TensorRT plans cannot be built here; the message says why."""


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
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, min_shape, opt_shape, max_shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build a plan (see its log above)")
    return bytes(plan)


def trt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt as trt

    return str(trt.__version__)


def build_tower_plan(
    root: Path,
    onnx_rel: str,
    tower: str,
    context_length: int,
    image_size: int,
    max_batch: int = 64,
    opt_batch: int = 16,
) -> tuple[str, dict]:
    """Build ``{tower}_fp16.plan`` from the tower's ONNX graph in engine dir ``root``; returns
    the plan's relative path and its manifest entry (without sha256/size)."""
    from univl_fast.export.onnx_export import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUT, TEXT_OUTPUT
    from univl_fast.utils.io import atomic_write_bytes

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
    }
    return rel, entry


def add_plans_to_engine(engine_dir: str | Path, max_batch: int = 64, opt_batch: int = 16) -> dict:
    """On a GPU host: build fp16 plans for an engine exported elsewhere (e.g. on a CPU box)
    and rewrite its manifest (atomically) to list them. Returns the new manifest."""
    import datetime as _dt

    from univl_fast.export.manifest import file_entry
    from univl_fast.runtime.manifest import MANIFEST_NAME, load_manifest, verify_file
    from univl_fast.utils.io import atomic_write_json

    require_tensorrt()
    root = Path(engine_dir)
    manifest = load_manifest(root)
    for tower in ("text", "image"):
        rel_onnx = manifest["graphs"][tower]["fp32"]
        verify_file(root, manifest, rel_onnx)
        rel, entry = build_tower_plan(
            root,
            rel_onnx,
            tower,
            int(manifest["context_length"]),
            int(manifest["preprocess"]["image_size"]),
            max_batch,
            opt_batch,
        )
        manifest["files"][rel] = file_entry(root, rel, **entry)
        manifest.setdefault("tensorrt_plans", {}).setdefault(tower, {})["fp16"] = rel
    manifest.setdefault("versions", {})["tensorrt"] = trt_version()
    manifest["plans_added"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(root / MANIFEST_NAME, manifest)
    return manifest
