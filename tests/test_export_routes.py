"""The exporter verifies each int8 artifact on its own: the ONNX Runtime int8 route is chosen by
measurement on the exporting host, and one tower's ONNX Runtime result does not veto the other
tower's native weights (issue 24 item 1).

ONNX Runtime's failures on an AVX2 host are simulated here by failing the parity of the graphs
a route produced (on this host every route passes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_engine import export_checkpoint
from univl_fast.export import build, quantize, verify
from univl_fast.utils.io import read_json


@pytest.fixture(scope="module")
def routed_engine(tmp_path_factory, random_tiny_checkpoint):
    """Exported with the text tower's first int8 route failing and every image int8 route
    failing (as ONNX Runtime's saturating kernels would on some hosts)."""
    mp = pytest.MonkeyPatch()
    state: dict = {}
    real_quantize, real_run = quantize.quantize_int8, verify.run_graph

    def quantize_int8(proto, per_channel, reduce_range, op_types, weight_type="QInt8"):
        state["settings"] = {"reduce_range": reduce_range, "weight_type": weight_type}
        extra = () if weight_type == "QInt8" else (weight_type,)
        return real_quantize(proto, per_channel, reduce_range, op_types, *extra)

    def run_graph(data, tower, inputs, ref, limits, **kwargs):
        p, out = real_run(data, tower, inputs, ref, limits, **kwargs)
        settings = state.pop("settings", None)
        if settings is not None:
            first = not settings["reduce_range"] and settings["weight_type"] == "QInt8"
            if tower == "image" or first:
                p.passed, p.reason = False, "simulated: saturating u8s8 kernels"
        return p, out

    mp.setattr(quantize, "quantize_int8", quantize_int8)
    mp.setattr(verify, "run_graph", run_graph)
    try:
        out = tmp_path_factory.mktemp("engines") / "routed"
        yield export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "int8"])
    finally:
        mp.undo()


def test_int8_route_chosen_by_measurement(routed_engine):
    m = read_json(routed_engine / "manifest.json")
    q = m["files"]["text_int8.onnx"]["quantization"]
    assert q["route"] == "per-channel + reduce_range s8 weights" and q["reduce_range"]
    (refused,) = q["refused_routes"]
    assert refused["route"] == "per-channel s8 weights" and "simulated" in refused["reason"]
    assert m["parity"]["text"]["int8"]["passed"]
    assert "text_int8.onnx: int8 route per-channel + reduce_range" in build.summarize(m)


def test_int8_graph_failing_every_route_is_not_written(routed_engine):
    m = read_json(routed_engine / "manifest.json")
    assert "int8" not in m["graphs"]["image"]
    assert not (routed_engine / "image_int8.onnx").exists()
    p = m["parity"]["image"]["int8"]
    assert not p["written"] and "every int8 route missed parity" in p["reason"]
    assert p["reason"].count("simulated") == len(quantize.int8_routes())


def test_native_text_not_vetoed_by_the_image_graph(routed_engine):
    m = read_json(routed_engine / "manifest.json")
    if m["native"].get("reason", "").startswith("native"):
        pytest.skip(f"native text tower not supported for this model: {m['native']['reason']}")
    assert m["native"]["text"] == {"int8": "text_int8.native.npz"}, m["native"]
    assert m["native"]["image"] == {"int8": "image_int8.native.npz"}, m["native"]
    combined = m["parity"]["combined"]["int8-native"]
    assert combined["measured"] and combined["passed"]
    assert "image int8-native" in combined["provider"]
