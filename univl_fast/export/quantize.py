"""int8 graphs with ONNX Runtime dynamic quantization.

Dynamic quantization stores weights as int8 (per output channel when asked) and quantizes
activations per batch at run time to uint8 (u8s8: the VNNI fast path on AVX-512 CPUs).
Quantized op types: ``MatMul`` (MLP, projections) and the fused ``Attention`` ops (their QKV
weights; they become ``QAttention``). Not quantized: the image tower's patch-embedding Conv
(kept float32 for accuracy on the pixels), the token-embedding Gather, and the attention
score/value products (no constant weight, ``MatMulConstBOnly``). The variants measured are in
bench/results/encode.md.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx


@dataclass(frozen=True)
class Int8Route:
    """One ONNX Runtime dynamic int8 quantization setting the exporter may try."""

    name: str
    per_channel: bool
    reduce_range: bool
    weight_type: str  # "QInt8" (u8s8) or "QUInt8" (u8u8)

    def settings(self) -> dict:
        return {
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "weight_type": self.weight_type,
        }


def int8_routes(per_channel: bool = True, reduce_range: bool = False) -> list[Int8Route]:
    """The routes the exporter tries, in order, keeping the first that passes parity on the
    exporting host: the configured one (fastest where the CPU has VNNI), then 7-bit weights
    (per channel + reduce_range: no u8s8 saturation on AVX2 / AVX-512 without VNNI; ~1.9x ORT
    fp32 for a query on Zen 3), then U8U8 weights (twice reduce_range's margin on Zen 3,
    slower). Measured: ``../shared/docs/anchors.md`` (AVX2 table)."""
    routes = [
        Int8Route(
            f"{'per-channel' if per_channel else 'per-tensor'}"
            f"{' + reduce_range' if reduce_range else ''} s8 weights",
            per_channel,
            reduce_range,
            "QInt8",
        ),
        Int8Route("per-channel + reduce_range s8 weights", True, True, "QInt8"),
        Int8Route("per-channel u8 weights (U8U8)", True, False, "QUInt8"),
    ]
    out: list[Int8Route] = []
    for r in routes:
        if all(r.settings() != o.settings() for o in out):
            out.append(r)
    return out


def quantize_int8(
    proto: onnx.ModelProto,
    per_channel: bool = True,
    reduce_range: bool = False,
    op_types: tuple[str, ...] = ("MatMul", "Attention"),
    weight_type: str = "QInt8",
) -> tuple[onnx.ModelProto, dict]:
    """Dynamic int8 quantization of a float32 graph; returns the graph and its settings."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type not in ("QInt8", "QUInt8"):
        raise ValueError(f"weight_type {weight_type!r}: choose QInt8 or QUInt8")
    logging.getLogger("root").setLevel(logging.WARNING)
    settings = {
        "method": "dynamic",
        "weight_type": weight_type,
        "activation_type": "QUInt8 (dynamic, per tensor)",
        "op_types": list(op_types),
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "matmul_const_b_only": True,
    }
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=getattr(QuantType, weight_type),
            extra_options={"MatMulConstBOnly": True},
        )
        return onnx.load(dst), settings
