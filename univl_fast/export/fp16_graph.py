"""An fp16 copy of a standard-op fp32 ONNX graph, for TensorRT's strongly-typed networks.

TensorRT 10.12 deprecated ``BuilderFlag.FP16`` (TensorRT 11 has none): a strongly-typed
network computes in the types the graph says, so an fp16 plan needs an fp16 graph. This turns
every float32 initializer, ``Constant`` / ``ConstantOfShape`` value and ``Cast`` to float32
into float16, and keeps the graph's inputs and outputs float32 (a ``Cast`` after each float
input, before each float output), so the runner's buffers stay the same. Non-float tensors
(token ids, shapes) are untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_F16_MAX = float(np.finfo(np.float16).max)


def _half(tensor: TensorProto) -> TensorProto:
    if tensor.data_type != _FLOAT:
        return tensor
    # values beyond float16's range (a mask's float32 minimum) saturate at its largest finite
    arr = numpy_helper.to_array(tensor)
    arr = np.clip(arr, -_F16_MAX, _F16_MAX).astype(np.float16)
    return numpy_helper.from_array(arr, tensor.name)


def _convert_node(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            attr.t.CopyFrom(_half(attr.t))
        elif node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
            attr.i = _HALF
        elif attr.type == onnx.AttributeProto.GRAPH:
            _convert_graph(attr.g, keep_io=False)


def _convert_graph(graph: onnx.GraphProto, keep_io: bool) -> None:
    for i, init in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(_half(init))
    for node in graph.node:
        _convert_node(node)
    del graph.value_info[:]  # stale float types; TensorRT and ORT infer them again
    if not keep_io:
        for vi in (*graph.input, *graph.output):
            if vi.type.tensor_type.elem_type == _FLOAT:
                vi.type.tensor_type.elem_type = _HALF
        return
    casts_in = []
    for vi in graph.input:
        if vi.type.tensor_type.elem_type != _FLOAT:
            continue
        half = f"{vi.name}__fp16"
        for node in graph.node:
            node.input[:] = [half if name == vi.name else name for name in node.input]
        casts_in.append(helper.make_node("Cast", [vi.name], [half], to=_HALF))
    for vi in graph.output:
        if vi.type.tensor_type.elem_type != _FLOAT:
            continue
        half = f"{vi.name}__fp16"
        for node in graph.node:
            node.output[:] = [half if name == vi.name else name for name in node.output]
            node.input[:] = [half if name == vi.name else name for name in node.input]
        graph.node.append(helper.make_node("Cast", [half], [vi.name], to=_FLOAT))
    for k, cast in enumerate(casts_in):
        graph.node.insert(k, cast)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs and outputs (the original is kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _convert_graph(out.graph, keep_io=True)
    return out
