"""How int8 GEMM speed at query size depends on whether the weights stay in cache.

A chain of ``n`` MLP pairs (512 -> 2048 -> 512, dynamic int8, per-channel) run on one
19-token query, for growing n: each pair holds 2 MB of int8 weights, so the chain's weights go
from well inside the shared L3 to past it (the ViT-B-32 text tower holds 37.7 MB)::

    .venv/bin/python bench/probe_weight_cache.py --pairs 4,8,12,16,24

Prints microseconds and GMAC/s per 512x2048 matmul (bench/results/encode.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

D, TOKENS = 512, 19


def chain(n: int, out: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.RandomState(0)
    nodes, inits, x = [], [], "x"
    for i in range(n):
        for j, shape in enumerate(((D, 4 * D), (4 * D, D))):
            w = f"w{i}_{j}"
            inits.append(numpy_helper.from_array((rng.randn(*shape) * 0.02).astype(np.float32), w))
            nodes.append(helper.make_node("MatMul", [x, w], [f"{w}_out"]))
            x = f"{w}_out"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, D])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, TOKENS, D])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, out / f"fp32_{n}.onnx")
    quantize_dynamic(
        out / f"fp32_{n}.onnx",
        out / f"int8_{n}.onnx",
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return out / f"int8_{n}.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="4,8,12,16,24")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnxruntime as ort

    x = np.random.randn(1, TOKENS, D).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(p) for p in args.pairs.split(",")):
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.log_severity_level = 3
            s = ort.InferenceSession(
                str(chain(n, Path(tmp))), so, providers=["CPUExecutionProvider"]
            )
            for _ in range(30):
                s.run(None, {"x": x})
            ts = []
            for _ in range(300):
                t = time.perf_counter()
                s.run(None, {"x": x})
                ts.append(time.perf_counter() - t)
            per = float(np.median(ts)) / (2 * n)
            print(
                f"{n} pairs ({2 * n} MB int8 weights): {per * 1e6:.1f} us per 512x2048 matmul, "
                f"{TOKENS * D * 4 * D / per / 1e9:.0f} GMAC/s"
            )


if __name__ == "__main__":
    main()
