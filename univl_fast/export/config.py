"""Export configuration (saved as ``export_config.json`` beside the engine's graphs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PRECISIONS = ("fp32", "fp16", "int8")
TOWERS = ("text", "image")
# parity contract (design.md): min per-row cosine against the PyTorch model
FP32_MIN_COSINE = 0.9999
LOWP_MIN_COSINE = 0.99


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
    # reduce_range: 7-bit weights for CPUs without VNNI (avoids u8s8 saturation there)
    int8_reduce_range: bool = False
    # parity thresholds (min per-row cosine vs PyTorch)
    fp32_min_cosine: float = FP32_MIN_COSINE
    lowp_min_cosine: float = LOWP_MIN_COSINE
    # dataset dir the verification texts / images came from (None = built-in sample)
    data: str | None = None
    # TensorRT optimization profile bounds
    trt_max_batch: int = 64
    trt_opt_batch: int = 16

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"--precision: unknown {bad}; choose from {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:
            self.precisions.insert(0, "fp32")
        if not 9 <= self.opset <= 23:
            raise ValueError(f"--opset {self.opset}: supported range is 9..23 (18 recommended)")
