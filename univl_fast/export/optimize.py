"""ONNX Runtime graph optimizations applied at export time.

``fuse_transformer`` runs ``onnxruntime.transformers.optimizer.optimize_model`` with
``opt_level=0``: only its python-level pattern fusions (SkipLayerNormalization, BiasGelu /
FastGelu / QuickGelu, LayerNormalization, Attention where the pattern matches), which are
portable. The hardware-specific level (ORT_ENABLE_ALL: NCHWc layouts, AVX-512 kernels) is
applied by ONNX Runtime when a session loads the graph, which is quick, so the saved graph
stays valid on any CPU and GPU. ``to_fp16`` converts a graph for GPU execution.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)


def split_mask_unsqueeze(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Unsqueeze(Where(...), axes=[0, 1])`` as two single-axis Unsqueeze nodes.

    The exporter folds ``mask.unsqueeze(0).unsqueeze(1)`` of the text tower's causal mask into
    one node; ORT's CLIP attention fusion recognises the causal mask only as
    Expand <- Unsqueeze <- Unsqueeze <- Where <- Less. Same values, so always exact.
    """
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    producers = {o: n for n in g.node for o in n.output}
    nodes = []
    for n in g.node:
        src = producers.get(n.input[0]) if n.input else None
        if (
            n.op_type == "Unsqueeze"
            and len(n.input) == 2
            and src is not None
            and src.op_type == "Where"
        ):
            axes = None
            if n.input[1] in inits:
                axes = numpy_helper.to_array(inits[n.input[1]]).tolist()
            elif n.input[1] in consts:
                axes = numpy_helper.to_array(consts[n.input[1]].attribute[0].t).tolist()
            if axes is not None and sorted(axes) == [0, 1]:
                zero = f"{n.name or n.output[0]}_axis0"
                g.initializer.append(numpy_helper.from_array(np.array([0], np.int64), zero))
                mid = f"{n.output[0]}_unsqueezed0"
                nodes.append(helper.make_node("Unsqueeze", [n.input[0], zero], [mid]))
                nodes.append(helper.make_node("Unsqueeze", [mid, zero], [n.output[0]]))
                continue
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return proto


def split_skip_layernorm(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every ``SkipLayerNormalization`` as ``Add`` (+ bias ``Add``) + ``LayerNormalization``.

    Same arithmetic, a different kernel: ONNX Runtime 1.32's CPU SkipLayerNormalization costs
    about 2.3 us per 512-wide row per thread, ten times its own LayerNormalization (a
    19-token ViT-B-32 query: 28 us per node, 24 nodes, 14% of the whole int8 graph; see
    bench/results/encode.md). The residual sum stays a graph value, consumed by the next block
    as well, so ORT's session-level SkipLayerNormFusion leaves the pair alone. Run after the
    attention fusion, which needs the fused form to match.
    """
    g = proto.graph
    producer = {o: n.op_type for n in g.node for o in n.output}

    def matmul_out(name: str) -> bool:
        return producer.get(name) == "MatMul"

    nodes = []
    for n in g.node:
        if n.op_type != "SkipLayerNormalization" or n.domain != "com.microsoft":
            nodes.append(n)
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        outs = list(n.output) + [""] * (4 - len(n.output))
        if outs[1] or outs[2]:  # mean / inv_std outputs: only training graphs read them
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        base = n.name or outs[0]
        total = outs[3] or f"{base}_sum"
        if ins[4]:
            # bias first, on the MatMul's output: ORT then folds it into the (quantized)
            # MatMul as that op's bias input; the residual add follows
            first, other = (ins[1], ins[0]) if matmul_out(ins[1]) else (ins[0], ins[1])
            nodes.append(helper.make_node("Add", [first, ins[4]], [f"{base}_biased"]))
            nodes.append(helper.make_node("Add", [f"{base}_biased", other], [total]))
        else:
            nodes.append(helper.make_node("Add", [ins[0], ins[1]], [total]))
        ln_in = [total, ins[2]] + ([ins[3]] if ins[3] else [])
        nodes.append(helper.make_node("LayerNormalization", ln_in, [outs[0]], axis=-1, epsilon=eps))
    del g.node[:]
    g.node.extend(nodes)
    return proto


def fuse_transformer(
    proto: onnx.ModelProto, num_heads: int, hidden_size: int
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Apply ORT's transformer fusions, then split the SkipLayerNormalization nodes back into
    Add + LayerNormalization (:func:`split_skip_layernorm`). Returns the new graph and the
    counts of the fusions that fired (e.g. ``{"Attention": 12, "BiasGelu": 12}``; the
    SkipLayerNormalization count says how many residual adds were matched, then split)."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.onnx"
        onnx.save(split_mask_unsqueeze(proto), src)
        model = optimize_model(
            str(src), model_type="clip", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        proto = split_skip_layernorm(model.model)
        domains = {op.domain for op in proto.opset_import}
        used = {n.domain for n in proto.graph.node}
        if "com.microsoft" in used and "com.microsoft" not in domains:
            proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        return proto, stats


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """float32 weights/activations -> float16, float32 inputs/outputs kept (keep_io_types)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.ModelProto.FromString(proto.SerializeToString()))
    model.convert_float_to_float16(keep_io_types=True)
    return model.model
