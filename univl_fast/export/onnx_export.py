"""PyTorch towers -> ONNX graphs (torch world).

Text graph: ``input_ids`` int64 (batch, seq), both dynamic (seq in 1..context_length) ->
``text_embeds`` float32 (batch, d), the RAW projected embedding. Image graph:
``pixel_values`` float32 (batch, 3, H, W), dynamic batch -> ``image_embeds`` float32
(batch, d), RAW. Raw because image docs sum raw caption + image embeddings (paper Eq. 3);
the runtime normalizes.

Uses ``torch.onnx.export(..., dynamo=True)`` with ``dynamic_shapes``: the legacy exporter
traces ``nn.MultiheadAttention``'s reshapes as constants (a graph fixed to its trace length),
the dynamo exporter keeps them symbolic.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from univl_fast.export.towers import ImageTower, TextTower

TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"
IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"


@dataclass
class GraphSpec:
    """What a graph declares: its tower, inputs/outputs (name, dtype, symbolic shape)."""

    tower: str
    inputs: list[dict]
    outputs: list[dict]
    num_heads: int
    hidden_size: int

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for io_ in self.inputs + self.outputs:
            named = {i: d for i, d in enumerate(io_["shape"]) if isinstance(d, str)}
            if named:
                axes[io_["name"]] = named
        return axes

    def to_json(self) -> dict:
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "dynamic_axes": {
                k: {str(i): d for i, d in v.items()} for k, v in self.dynamic_axes.items()
            },
        }


def _quiet_export(module: nn.Module, args: tuple, **kwargs) -> onnx.ModelProto:
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, verbose=False, **kwargs)
    return program.model_proto


def _tower_dims(blocks: nn.ModuleList) -> tuple[int, int]:
    first = blocks[0]
    return first.num_heads, first.num_heads * first.head_dim


def export_text(
    clip: nn.Module, context_length: int, embed_dim: int, opset: int
) -> tuple[onnx.ModelProto, GraphSpec]:
    """The text tower as an ONNX ModelProto (in memory) + its spec."""
    tower = TextTower(clip).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=context_length)
    example = torch.randint(1, 49000, (2, min(8, context_length)), dtype=torch.long)
    example[:, -1] = 49407
    with torch.no_grad():
        proto = _quiet_export(
            tower,
            (example,),
            input_names=[TEXT_INPUT],
            output_names=[TEXT_OUTPUT],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}},
            opset_version=opset,
            external_data=False,
        )
    heads, width = _tower_dims(tower.blocks)
    spec = GraphSpec(
        "text",
        [{"name": TEXT_INPUT, "dtype": "int64", "shape": ["batch", "seq"]}],
        [{"name": TEXT_OUTPUT, "dtype": "float32", "shape": ["batch", embed_dim]}],
        heads,
        width,
    )
    return proto, spec


def export_image(
    clip: nn.Module, image_size: int, embed_dim: int, opset: int
) -> tuple[onnx.ModelProto, GraphSpec]:
    """The image tower as an ONNX ModelProto (in memory) + its spec."""
    tower = ImageTower(clip).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        proto = _quiet_export(
            tower,
            (example,),
            input_names=[IMAGE_INPUT],
            output_names=[IMAGE_OUTPUT],
            dynamic_shapes={"pixel_values": {0: batch}},
            opset_version=opset,
            external_data=False,
        )
    heads, width = _tower_dims(tower.blocks)
    spec = GraphSpec(
        "image",
        [{"name": IMAGE_INPUT, "dtype": "float32", "shape": ["batch", 3, image_size, image_size]}],
        [{"name": IMAGE_OUTPUT, "dtype": "float32", "shape": ["batch", embed_dim]}],
        heads,
        width,
    )
    return proto, spec


STANDARD_DOMAINS = ("", "ai.onnx")


def standard_graph_problems(proto: onnx.ModelProto) -> list[str]:
    """Why ``proto`` is not a plain ONNX graph TensorRT's parser can take ([] when it is):
    every node (graph and local functions) in the default domain, no local functions,
    ``onnx.checker`` with ``full_check`` and strict shape inference both pass."""
    problems = []
    odd = sorted(
        {f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in STANDARD_DOMAINS}
    )
    if odd:
        problems.append(f"non-standard ops {odd[:8]}")
    if proto.functions:
        problems.append(f"local functions {[f.name for f in proto.functions][:8]}")
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        problems.append(f"onnx checker: {str(exc).strip().splitlines()[0][:300]}")
    return problems
