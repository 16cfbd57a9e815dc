"""The native towers' kernel builds (generic, avx2, avx512_vnni): each kernel of each build this
CPU runs against a float64 / int64 numpy reference at odd sizes with every output checked, the
builds against each other, and the ``UNIVL_FAST_NATIVE_ISA`` knob (forcing a lower build, its
errors, what ``auto`` then picks). The same dispatch on an AVX2-only CPU (no AVX-512 visible):
tests/test_native_qemu.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from univl_fast import _C
from univl_fast.runtime import native_text
from univl_fast.runtime.manifest import load_manifest
from univl_fast.runtime.native_image import NativeImageTower
from univl_fast.runtime.native_text import (
    ISA_KNOB,
    NativeTextTower,
    fast_native_available,
    native_isas,
)
from univl_fast.utils.env import EnvVarError

ISAS = native_isas()


def _need(isa: str) -> None:
    if isa not in ISAS:
        pytest.skip(f"this CPU does not run the {isa} build (runs {', '.join(ISAS)})")


def test_builds_listed_best_last():
    """generic always, then the x86 builds this CPU has, in order; AVX-512 VNNI implies AVX2."""
    assert ISAS[0] == "generic"
    order = ["generic", "avx2", "avx512_vnni"]
    assert ISAS == sorted(ISAS, key=order.index), ISAS
    if "avx512_vnni" in ISAS:
        assert "avx2" in ISAS


# ------------------------------------------------------------------ kernels vs numpy


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("rows", "k", "n"),
    [(1, 4, 32), (2, 12, 64), (3, 516, 96), (5, 100, 32), (13, 2052, 64), (97, 36, 160)],
)
def test_linear_exact_at_odd_sizes(isa, rows, k, n):
    """Quantization + int8 GEMM: every output (the hook starts them as NaN) equals the int64
    product of the kernel's own quantized activations, dequantized in float64 (only the float
    epilogue rounds); the residual mode adds to what is there. Rows not a multiple of any
    micro-kernel's, k not a multiple of 16, panels of 32 beyond the first pair."""
    rng = np.random.default_rng(rows * 1000 + k)
    x = (rng.standard_normal((rows, k)) * rng.uniform(0.1, 30, (rows, 1))).astype(np.float32)
    x[0, : min(k, 7)] = 0.0
    q = rng.integers(-127, 128, (n, k)).astype(np.int8)
    scale = rng.uniform(1e-3, 2e-2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y, qx, sx, zx = _C._native_linear(x, q, scale, bias, isa)
    assert not np.isnan(y).any(), "outputs left unwritten"
    exact = qx.astype(np.int64) @ q.T.astype(np.int64) - zx[:, None] * q.sum(1, dtype=np.int64)
    ref = exact * (sx[:, None].astype(np.float64) * scale[None, :]) + bias
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    # the quantization is the documented one: 0 exact, |x - s (q - z)| <= s / 2 (+ rounding)
    deq = sx[:, None].astype(np.float64) * (qx.astype(np.float64) - zx[:, None])
    assert np.all(np.abs(deq - x) <= sx[:, None] * 0.5001 + 1e-6 * np.abs(x)), isa
    assert (deq[0, : min(k, 7)] == 0).all()
    base = rng.standard_normal((rows, n)).astype(np.float32)
    y2, *_ = _C._native_linear(x, q, scale, bias, isa, out=base)
    np.testing.assert_allclose(y2, base + y, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_linear_builds_agree_bitwise_on_the_integers(isa):
    """Every build quantizes the same way and sums exactly: the quantized activations agree
    within one step (the float rounding of x / s may differ at a .5), scales and zero points
    exactly; the GEMM's int32 sums are exact, so the outputs differ only by float rounding."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((19, 520)).astype(np.float32) * 4
    q = rng.integers(-127, 128, (96, 520)).astype(np.int8)
    scale = rng.uniform(1e-3, 2e-2, 96).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    y, qx, sx, zx = _C._native_linear(x, q, scale, bias, isa)
    gy, gqx, gsx, gzx = _C._native_linear(x, q, scale, bias, "generic")
    np.testing.assert_array_equal(sx, gsx)
    np.testing.assert_array_equal(zx, gzx)
    assert np.abs(qx.astype(int) - gqx.astype(int)).max() <= 1
    same = (qx == gqx).all(axis=1)
    np.testing.assert_allclose(y[same], gy[same], rtol=1e-5, atol=1e-5 * np.abs(gy).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [1, 7, 8, 9, 77, 512])
def test_layer_norm_matches_float64(isa, d):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((5, d)) * 3 + rng.standard_normal((5, 1)) * 10).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    y = _C._native_layer_norm(x, w, b, 1e-5, isa)
    assert not np.isnan(y).any(), "outputs left unwritten"
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref).max()))


def _attention_reference(qkv, heads, lens, causal, pooled_only):
    qkv = qkv.astype(np.float64)
    d = qkv.shape[1] // 3
    hd = d // heads
    out, start = [], 0
    for n in lens:
        rows = qkv[start : start + n]
        o = np.zeros((n, d))
        for h in range(heads):
            q = rows[:, h * hd : (h + 1) * hd]
            k = rows[:, d + h * hd : d + (h + 1) * hd]
            v = rows[:, 2 * d + h * hd : 2 * d + (h + 1) * hd]
            s = q @ k.T / np.sqrt(hd)
            if causal:
                s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
            p = np.exp(s - s.max(1, keepdims=True))
            o[:, h * hd : (h + 1) * hd] = (p / p.sum(1, keepdims=True)) @ v
        out.append(o[-1:] if pooled_only else o)
        start += n
    return np.concatenate(out)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("heads", "hd"), [(2, 64), (3, 20), (1, 9), (4, 33)])
@pytest.mark.parametrize("mode", ["causal", "full", "pooled"])
def test_attention_matches_float64(isa, heads, hd, mode):
    """Packed sequences of 1, 5, 17, 50 and 70 rows (key blocks of 16, 32, 48 and 64 plus
    tails), head sizes with and without a vector tail."""
    lens = [1, 5, 17, 50, 70]
    rng = np.random.default_rng(heads * 100 + hd)
    qkv = rng.standard_normal((sum(lens), 3 * heads * hd)).astype(np.float32) * 2
    causal, pooled = mode != "full", mode == "pooled"
    out = _C._native_attention(qkv, heads, lens, causal, pooled, isa)
    assert out.shape == ((len(lens) if pooled else sum(lens)), heads * hd)
    assert not np.isnan(out).any(), "outputs left unwritten"
    ref = _attention_reference(qkv, heads, lens, causal, pooled)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [3, 8, 21, 128])
def test_embed_exact(isa, d):
    """float16 table row + position, exactly (subnormal, inf and extreme halves included)."""
    rng = np.random.default_rng(d)
    tok = rng.standard_normal((50, d)).astype(np.float16)
    tok[3, 0], tok[4, -1], tok[5, 0] = np.float16(6e-8), np.float16(-65504), np.float16(np.inf)
    pos = rng.standard_normal((9, d)).astype(np.float32)
    ids = rng.integers(0, 50, (3, 9)).astype(np.int64)
    ids[0, :3] = [3, 4, 5]
    x = _C._native_embed(tok.view(np.uint16), pos, ids, isa)
    ref = tok[ids].astype(np.float32) + pos[None]
    np.testing.assert_array_equal(x, ref.reshape(-1, d))


@pytest.mark.parametrize("isa", ISAS)
def test_unknown_or_missing_build_refused(isa):
    with pytest.raises(ValueError, match="isa 'avx9000' is not available on this CPU"):
        _C._native_linear(
            np.zeros((1, 4), np.float32),
            np.zeros((32, 4), np.int8),
            np.ones(32, np.float32),
            np.zeros(32, np.float32),
            "avx9000",
        )


# ------------------------------------------------------------------ the knob


@pytest.fixture(scope="module")
def text_path(tiny_engine) -> Path:
    return Path(tiny_engine) / load_manifest(tiny_engine)["native"]["text"]["int8"]


@pytest.fixture(scope="module")
def image_path(tiny_engine) -> Path:
    return Path(tiny_engine) / load_manifest(tiny_engine)["native"]["image"]["int8"]


IDS = np.array([[49406, 320, 1125, 539, 518, 2117, 49407], [49406, 320, 49407, 0, 0, 0, 0]])


@pytest.mark.parametrize("isa", ISAS)
def test_knob_forces_a_build_for_both_towers(monkeypatch, text_path, image_path, isa):
    """With the knob set, 'auto' runs that build (the tower's .isa says so) and gives the same
    embeddings as asking for the build by name; the towers agree with the portable build."""
    monkeypatch.setenv(ISA_KNOB, isa)
    text = NativeTextTower(text_path, threads=2)
    image = NativeImageTower(image_path, threads=2)
    assert text.isa == isa and image.isa == isa
    np.testing.assert_array_equal(text.run(IDS), NativeTextTower(text_path, isa=isa).run(IDS))
    px = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = image.run(px)
    np.testing.assert_array_equal(got, NativeImageTower(image_path, isa=isa).run(px))
    monkeypatch.delenv(ISA_KNOB)
    slow_t = NativeTextTower(text_path, isa="generic").run(IDS)
    slow_i = NativeImageTower(image_path, isa="generic").run(px)
    for fast, slow in ((text.run(IDS), slow_t), (got, slow_i)):
        cos = (fast * slow).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(slow, axis=1)
        assert cos.min() > 0.9999 and np.abs(fast - slow).max() < 1e-2 * np.abs(slow).max()


def test_knob_auto_or_unset_runs_the_best_build(monkeypatch, text_path):
    monkeypatch.setenv(ISA_KNOB, "auto")
    assert NativeTextTower(text_path).isa == ISAS[-1]
    monkeypatch.delenv(ISA_KNOB)
    assert NativeTextTower(text_path).isa == ISAS[-1]


def test_knob_asking_for_a_build_this_cpu_lacks(monkeypatch, text_path):
    """The error names the knob, the value and what this CPU runs (a CPU without AVX-512 VNNI
    is stood in for by listing fewer builds; tests/test_native_qemu.py checks a real one)."""
    monkeypatch.setattr(native_text, "native_isas", lambda: ["generic", "avx2"])
    monkeypatch.setenv(ISA_KNOB, "avx512_vnni")
    with pytest.raises(EnvVarError, match=r"UNIVL_FAST_NATIVE_ISA='avx512_vnni'.*generic, avx2"):
        NativeTextTower(text_path)
    with pytest.raises(EnvVarError, match="UNIVL_FAST_NATIVE_ISA"):
        fast_native_available()
    monkeypatch.setenv(ISA_KNOB, "avx9000")
    with pytest.raises(EnvVarError, match=r"UNIVL_FAST_NATIVE_ISA='avx9000': expected one of"):
        NativeTextTower(text_path)


def test_fast_build_and_the_reasons(monkeypatch):
    """auto runs the native towers on avx2 or avx512_vnni; forced or limited to the portable
    build it does not, and says why truthfully."""
    fast, why = fast_native_available()
    assert fast == (ISAS[-1] in ("avx2", "avx512_vnni")) and (why == "") == fast
    if "avx2" in ISAS:
        monkeypatch.setenv(ISA_KNOB, "avx2")
        assert fast_native_available() == (True, "")
    monkeypatch.setenv(ISA_KNOB, "generic")
    fast, why = fast_native_available()
    assert not fast
    if ISAS[-1] != "generic":
        assert "UNIVL_FAST_NATIVE_ISA=generic" in why
    monkeypatch.delenv(ISA_KNOB)
    monkeypatch.setattr(native_text, "native_isas", lambda: ["generic"])
    fast, why = fast_native_available()
    assert not fast and "neither AVX2" in why


def test_encoder_auto_follows_the_knob(monkeypatch, tiny_engine):
    """The Encoder's auto picks the native text tower on a fast build (avx2 included), not on
    the portable one, and records why."""
    from univl_fast.runtime import Encoder

    _need("avx2")
    monkeypatch.setenv(ISA_KNOB, "avx2")
    enc = Encoder(tiny_engine)
    assert enc.text_runtime == "native" and enc._towers["text"].isa == "avx2"
    monkeypatch.setenv(ISA_KNOB, "generic")
    enc = Encoder(tiny_engine)
    assert enc.text_runtime == "onnxruntime"
    assert "UNIVL_FAST_NATIVE_ISA=generic" in enc.runtime_reasons["text"]
