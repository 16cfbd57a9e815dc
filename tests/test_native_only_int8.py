"""An engine whose ONNX Runtime int8 graphs missed parity at export (what an AVX2-only x86
host's saturating u8s8 kernels give: a scale error of ~10%) but whose native int8 towers
passed: int8 is still served, by the native towers, and only where they can run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_engine import export_checkpoint

TEXTS = ["a lighthouse on a cliff", "how tall is the tower", "red kite over the hills"]


def _scaled(proto, factor: float):
    """``proto`` with its output multiplied by ``factor`` (a scale error like the saturating
    int8 kernels' on AVX2)."""
    import onnx
    from onnx import helper, numpy_helper

    out = proto.graph.output[0]
    raw = out.name + "_unscaled"
    for node in proto.graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    const = numpy_helper.from_array(np.array(factor, dtype=np.float32), "scale_error_factor")
    proto.graph.initializer.append(const)
    proto.graph.node.append(helper.make_node("Mul", [raw, const.name], [out.name]))
    onnx.checker.check_model(proto)
    return proto


@pytest.fixture(scope="module")
def native_only_engine(tmp_path_factory, random_tiny_checkpoint) -> Path:
    from univl_fast.export import quantize

    real = quantize.quantize_int8

    def saturating(proto, *args, **kwargs):
        q, info = real(proto, *args, **kwargs)
        return _scaled(q, 1.12), info

    out = tmp_path_factory.mktemp("engines") / "native_only_int8"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "quantize_int8", saturating)
        return export_checkpoint(Path(random_tiny_checkpoint), out, ["fp32", "int8"])


def test_export_keeps_native_int8_where_the_graphs_missed(native_only_engine):
    from univl_fast.runtime import selection
    from univl_fast.runtime.manifest import load_manifest

    m = load_manifest(native_only_engine)
    for tower in ("text", "image"):
        assert "int8" not in m["graphs"][tower]
        assert m["parity"][tower]["int8"]["passed"] is False
        assert selection.has_native(m, tower), m["native"]
    assert "image_reason" not in m["native"]  # the only int8 image route: nothing passed over
    assert "int8" in selection.available_precisions(m)
    assert selection.int8_pairs(m) == [("native", "native")]
    assert selection.precision_problem(m, "int8") is None
    assert selection.auto_precision(m, "onnxruntime-cpu") == "int8"


def test_auto_serves_int8_on_the_native_towers(native_only_engine, monkeypatch):
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.native_text import fast_native_available

    if not fast_native_available()[0]:
        pytest.skip(f"native towers are slow here: {fast_native_available()[1]}")
    enc = Encoder(native_only_engine)
    assert (enc.precision, enc.text_runtime, enc.image_runtime) == ("int8", "native", "native")
    assert enc.precision_reason is None
    fp32 = Encoder(native_only_engine, precision="fp32")
    cos = np.sum(enc.encode_queries(TEXTS) * fp32.encode_queries(TEXTS), axis=1)
    assert cos.min() > 0.99, cos


def test_no_int8_graph_cannot_be_asked_of_onnxruntime(native_only_engine):
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.manifest import EngineError

    with pytest.raises(EngineError, match="no int8 text graph"):
        Encoder(native_only_engine, precision="int8", text_runtime="onnxruntime")


def test_auto_goes_to_fp32_when_the_native_tower_is_off(native_only_engine, monkeypatch):
    from univl_fast.runtime import Encoder

    monkeypatch.setenv("UNIVL_FAST_NATIVE_TEXT", "0")
    enc = Encoder(native_only_engine)
    assert enc.precision == "fp32"
    assert "UNIVL_FAST_NATIVE_TEXT=0" in enc.precision_reason
    assert enc.info()["precision_reason"] == enc.precision_reason


def test_demo_counts_the_native_route(native_only_engine):
    from univl_fast.demo import precision_routes

    assert precision_routes(native_only_engine) == {"fp32": None, "int8": None}
