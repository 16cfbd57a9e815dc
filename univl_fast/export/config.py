"""Export configuration (saved as ``export_config.json`` beside the engine's graphs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The parity contract (limits and why) lives in univl_fast.runtime.parity, beside the metrics, so the
# torch-free runtime applies the same thresholds when it re-checks an engine where it loads.
from univl_fast.runtime.parity import (  # noqa: F401 - re-exported: the export's defaults
    FP32_MAX_REL_L2,
    FP32_MIN_COSINE,
    LOWP_MAX_NORM_DEVIATION,
    LOWP_MAX_REL_L2,
    LOWP_MIN_COSINE,
    Limits,
)

PRECISIONS = ("fp32", "fp16", "int8")
TOWERS = ("text", "image")


@dataclass
class ExportConfig:
    """How an engine was exported."""

    # precisions to write, in the order given (fp32 is always exported: the others derive from it)
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    # ONNX opset of the exported graphs
    opset: int = 18
    # build TensorRT fp16 plans as well (needs tensorrt + a CUDA GPU)
    tensorrt: bool = False
    # apply ONNX Runtime's transformer fusions (portable python-level fusions, opt_level 0)
    fuse: bool = True
    # int8 text tower: dynamic quantization, per output channel, of these op types
    text_int8_per_channel: bool = True
    text_int8_ops: list[str] = field(default_factory=lambda: ["MatMul", "Attention"])
    # int8 image tower: same (the patch-embedding Conv stays fp32)
    image_int8_per_channel: bool = True
    image_int8_ops: list[str] = field(default_factory=lambda: ["MatMul", "Attention"])
    # with int8: also write the native int8 text tower (univl_fast._C.TextTower weights)
    native_text: bool = True
    # with int8: also write the native int8 image tower (univl_fast._C.ImageTower weights)
    native_image: bool = True
    # reduce_range: 7-bit weights for CPUs without VNNI (avoids u8s8 saturation there)
    int8_reduce_range: bool = False
    # int8: when the setting above misses parity on the exporting host, try the next ONNX
    # Runtime routes (export.quantize.int8_routes) and keep the first that passes
    int8_route_search: bool = True
    # parity thresholds (per row vs PyTorch: min cosine, max relative L2 error)
    fp32_min_cosine: float = FP32_MIN_COSINE
    fp32_max_rel_l2: float = FP32_MAX_REL_L2
    lowp_min_cosine: float = LOWP_MIN_COSINE
    lowp_max_rel_l2: float = LOWP_MAX_REL_L2
    lowp_max_norm_deviation: float = LOWP_MAX_NORM_DEVIATION
    # dataset dir the verification texts / images came from (None = built-in sample)
    data: str | None = None
    # write {tower}_fp32.trt.onnx: the fp32 graph with standard ONNX ops only (no ORT fusions),
    # what TensorRT parses (plans, trtexec); fp32 size again on disk
    tensorrt_graph: bool = True
    # TensorRT optimization profile bounds
    trt_max_batch: int = 64
    trt_opt_batch: int = 16

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def limits(self, precision: str) -> Limits:
        """The parity limits a ``precision`` graph must reach (fp32 tight, fp16/int8 loose)."""
        if precision == "fp32":
            return Limits(self.fp32_min_cosine, self.fp32_max_rel_l2, self.fp32_max_rel_l2)
        return Limits(self.lowp_min_cosine, self.lowp_max_rel_l2, self.lowp_max_norm_deviation)

    def validate(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"--precision: unknown {bad}; choose from {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:
            self.precisions.insert(0, "fp32")
        if not 9 <= self.opset <= 23:
            raise ValueError(f"--opset {self.opset}: supported range is 9..23 (18 recommended)")
