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
from pathlib import Path

import onnx


def quantize_int8(
    proto: onnx.ModelProto,
    per_channel: bool = True,
    reduce_range: bool = False,
    op_types: tuple[str, ...] = ("MatMul", "Attention"),
) -> tuple[onnx.ModelProto, dict]:
    """Dynamic int8 quantization of a float32 graph; returns the graph and its settings."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.WARNING)
    settings = {
        "method": "dynamic",
        "weight_type": "QInt8",
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
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
        return onnx.load(dst), settings
