"""What a host must do with an engine's int8 (``tests.host_routes``), both ways on every host:
the shared tiny engine (int8 where this host's export verified it) and the same model exported
with every int8 artifact refused (what an AVX2-only host's saturating int8 kernels give)."""

from __future__ import annotations

import univl_fast
from tests.host_routes import assert_int8_fallback, int8_route


def test_engine_without_a_verified_int8_serves_fp32_and_says_why(tiny_engine_no_int8):
    route = int8_route(tiny_engine_no_int8)
    assert not route.verified
    assert "int8 missed parity" in route.reason
    reason = assert_int8_fallback(tiny_engine_no_int8)
    assert reason == route.reason
    with univl_fast.load(tiny_engine_no_int8, batching=False) as engine:
        assert engine.encoder.precision == "fp32"
        vecs = engine.encode_queries(["a lighthouse on a cliff"])
        assert vecs.shape == (1, engine.encoder.dim)


def test_this_hosts_tiny_engine_states_its_int8_route(tiny_engine):
    """int8 is picked by auto exactly where the export verified it here; otherwise the
    fallback holds, with the manifest's reason."""
    from univl_fast.runtime import Encoder

    route = int8_route(tiny_engine)
    if route.verified:
        assert route.reason is None
        assert Encoder(tiny_engine).precision == "int8"
    else:
        assert assert_int8_fallback(tiny_engine) == route.reason
