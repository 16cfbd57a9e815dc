"""The native int8 text tower (csrc/cpu/text_tower*, univl_fast.runtime.native_text): exported
weights, parity with PyTorch at every length and batch shape, every instruction-set build,
bad input, and how the Encoder picks it."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.native_helpers import assert_forked_child_runs
from univl_fast.runtime.manifest import EngineError, load_manifest
from univl_fast.runtime.native_text import NativeTextTower, fast_native_available, native_isas
from univl_fast.runtime.tokenizer import ClipTokenizer
from univl_fast.utils.io import sha256_file

FAST, FAST_WHY = fast_native_available()
ISAS = native_isas()
FAST_ISAS = [i for i in ISAS if i != "generic"] or [
    pytest.param("none", marks=pytest.mark.skip(reason=f"no fast native build here: {FAST_WHY}"))
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def native_path(tiny_engine) -> Path:
    return Path(tiny_engine) / load_manifest(tiny_engine)["native"]["text"]["int8"]


@pytest.fixture(scope="module")
def tok(tiny_engine) -> ClipTokenizer:
    return ClipTokenizer(Path(tiny_engine) / "tokenizer/bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def torch_text(random_tiny_checkpoint):
    """open_clip's encode_text on ids padded to the context (the reference)."""
    import torch

    from univl_fast.model import UniVLDR

    clip = UniVLDR.from_pretrained(random_tiny_checkpoint).clip.eval()

    def run(padded: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clip.encode_text(torch.from_numpy(padded)).numpy()

    return run


def test_exported_listed_hashed_and_verified(tiny_engine, native_path):
    m = load_manifest(tiny_engine)
    entry = m["files"][native_path.name]
    assert entry["kind"] == "native-text" and entry["precision"] == "int8"
    assert entry["sha256"] == sha256_file(native_path)
    p = m["parity"]["text"]["int8-native"]
    assert p["measured"] and p["passed"] and p["min_cosine"] >= 0.99, p
    assert p["rows"] >= 20 and p["provider"].startswith("univl_fast native")


@pytest.mark.parametrize("isa", ISAS)
def test_matches_torch_at_every_length(native_path, tok, torch_text, isa):
    """Lengths 2, 3, 76, 77 and a text longer than 77 tokens (truncated like open_clip), each
    alone (batch 1) and all in one mixed-length batch: the batch rows equal the lone runs
    exactly (rows are packed, never padded), and every row is within the int8 contract."""
    tower = NativeTextTower(native_path, threads=2, isa=isa)
    assert tower.isa == isa
    texts = ["", "x", " ".join(["x"] * 74), " ".join(["x"] * 75), " ".join(["x"] * 300)]
    ids, lengths = tok(texts)
    assert lengths.tolist() == [2, 3, 76, 77, 77]
    ref = torch_text(tok.tokenize_padded(texts))
    together = tower.run(ids)
    alone = np.concatenate([tower.run(tok([t])[0]) for t in texts])
    assert together.shape == (5, 128) and together.dtype == np.float32
    np.testing.assert_array_equal(together, alone)
    assert _cos(together, ref).min() >= 0.99
    # one token only (no sot / eot), and padding after the end-of-text token is ignored
    assert tower.run(np.array([[320]], np.int64)).shape == (1, 128)
    padded = tok.tokenize_padded(texts[:2])
    np.testing.assert_array_equal(tower.run(padded), together[:2])


def test_batch_65_of_real_texts(native_path, tok, torch_text):
    from univl_fast.export.samples import builtin_sample

    base = builtin_sample().texts
    texts = [base[i % len(base)] + f" number {i}" for i in range(65)]
    tower = NativeTextTower(native_path, threads=2)
    ids, _ = tok(texts)
    out = tower.run(ids)
    cos = _cos(out, torch_text(tok.tokenize_padded(texts)))
    assert out.shape == (65, 128) and cos.min() >= 0.99, cos.min()
    np.testing.assert_array_equal(out[17:18], tower.run(tok([texts[17]])[0]))


@pytest.mark.parametrize("isa", FAST_ISAS)
def test_fast_and_generic_builds_agree(native_path, tok, isa):
    """Same quantization, exact int32 GEMMs: the builds differ only in float rounding."""
    texts = ["a dog on the beach", "", "the tallest building in the world " * 4]
    ids, _ = tok(texts)
    fast = NativeTextTower(native_path, threads=2, isa=isa).run(ids)
    slow = NativeTextTower(native_path, threads=1, isa="generic").run(ids)
    assert _cos(fast, slow).min() > 0.9999
    assert np.abs(fast - slow).max() < 1e-2 * np.abs(slow).max()


def test_thread_counts_and_concurrent_callers_agree(native_path, tok):
    ids, _ = tok(["what colour is the roof of the station", "x"])
    one = NativeTextTower(native_path, threads=1).run(ids)
    tower = NativeTextTower(native_path, threads=2)
    np.testing.assert_array_equal(tower.run(ids), one)
    narrow = tower.with_threads(1)  # shares the weights
    assert narrow.threads == 1 and tower.threads == 2
    np.testing.assert_array_equal(narrow.run(ids), one)
    results, errors = [], []

    def call() -> None:
        try:
            for _ in range(20):
                results.append(tower.run(ids))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    for r in results:
        np.testing.assert_array_equal(r, one)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_alone(native_path, tok):
    """A process forked after the tower's thread team exists (a pre-forking server) has no
    team workers: it must run on its own thread, not wait for them."""
    tower = NativeTextTower(native_path, threads=2)
    ids, _ = tok(["a query before the fork", "x"])
    want = tower.run(ids)
    assert_forked_child_runs(lambda: tower.run(ids), want)


def test_bad_ids_and_files_are_refused(native_path, tmp_path):
    tower = NativeTextTower(native_path)
    with pytest.raises(ValueError, match=r"ids\[0, 1\] = 49408 is outside the vocabulary"):
        tower.run(np.array([[49406, 49408]], np.int64))
    with pytest.raises(ValueError, match=r"ids\[1, 0\] = -1"):
        tower.run(np.array([[1, 2], [-1, 2]], np.int64))
    with pytest.raises(ValueError, match="1..77"):
        tower.run(np.zeros((1, 78), np.int64))
    with pytest.raises(ValueError, match="1..77"):
        tower.run(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        tower.run(np.zeros((1, 2, 3), np.int64))
    assert tower.run(np.zeros((0, 5), np.int64)).shape == (0, 128)
    with pytest.raises(ValueError, match="isa 'avx9000' is not available"):
        NativeTextTower(native_path, isa="avx9000")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        NativeTextTower(bad)
    with np.load(native_path) as z:
        arrays = {k: z[k] for k in z.files}
    assert tower.weight_bytes == sum(a.size for k, a in arrays.items() if k.endswith(".q"))
    arrays["b0.fc1.q"] = arrays["b0.fc1.q"][:, :-4]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match=r"'b0.fc1.q' has shape \(512, 124\), expected"):
        NativeTextTower(tmp_path / "cut.npz")


def test_encoder_picks_native_where_fast_and_agrees_with_onnx(tiny_engine, monkeypatch):
    from univl_fast.runtime import Encoder

    auto = Encoder(tiny_engine)
    assert auto.precision == "int8"
    assert auto.text_runtime == ("native" if FAST else "onnxruntime")
    ort_enc = Encoder(tiny_engine, text_runtime="onnxruntime")
    native = Encoder(tiny_engine, text_runtime="native")
    assert ort_enc.text_runtime == "onnxruntime" and native.text_runtime == "native"
    assert "text_runtime='native'" in repr(native)
    qs = ["what colour is the roof", "", "a long query " * 30]
    assert _cos(native.encode_queries(qs), ort_enc.encode_queries(qs)).min() > 0.99
    img = np.full((40, 60, 3), 90, np.uint8)
    from PIL import Image

    pics = [Image.fromarray(img), Image.fromarray(255 - img)]
    a = native.encode_image_docs(pics, ["a grey square", "its negative"])
    b = ort_enc.encode_image_docs(pics, ["a grey square", "its negative"])
    assert _cos(a, b).min() > 0.99
    assert Encoder(tiny_engine, precision="fp32").text_runtime == "onnxruntime"
    with pytest.raises(EngineError, match="native text tower is int8; precision is 'fp32'"):
        Encoder(tiny_engine, precision="fp32", text_runtime="native")
    with pytest.raises(ValueError, match="choose auto, native or onnxruntime"):
        Encoder(tiny_engine, text_runtime="tvm")
    monkeypatch.setenv("UNIVL_FAST_NATIVE_TEXT", "0")
    assert Encoder(tiny_engine).text_runtime == "onnxruntime"


def test_tampered_native_weights_refused(tiny_engine, native_path, tmp_path):
    from univl_fast.runtime import Encoder

    copy = tmp_path / "engine"
    shutil.copytree(tiny_engine, copy)
    target = copy / native_path.name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="sha256"):
        Encoder(copy, text_runtime="native")


def test_engine_without_native_weights(tmp_path, random_tiny_checkpoint):
    from univl_fast.export.build import ModelSpec, export_engine
    from univl_fast.export.config import ExportConfig
    from univl_fast.model import UniVLDR
    from univl_fast.runtime import Encoder

    model = UniVLDR.from_pretrained(random_tiny_checkpoint)
    spec = ModelSpec.from_model_config(model.config.to_json())
    cfg = ExportConfig(precisions=["fp32", "int8"], native_text=False)
    out = export_engine(model.clip, spec, tmp_path / "e", cfg, progress=False)
    assert out["native"]["text"] == {} and "int8-native" not in out["parity"]["text"]
    assert Encoder(tmp_path / "e").text_runtime == "onnxruntime"
    with pytest.raises(EngineError, match="has no native text tower"):
        Encoder(tmp_path / "e", text_runtime="native")
    # the native image tower is then verified with the int8 text graph's captions
    c = out["parity"]["combined"]["int8-native-image"]
    assert out["native"]["image"] == {"int8": "image_int8.native.npz"} and c["passed"], c
    assert c["provider"] == "text int8 + image int8-native"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-32-quickgelu"])
def test_vit_b32_native_parity(name):
    """The paper's backbone (random weights), GELU and QuickGELU variants."""
    import open_clip as oc

    from univl_fast.export import native_text, verify
    from univl_fast.export.samples import builtin_sample

    clip = oc.create_model(name).eval()
    meta, arrays = native_text.extract(clip)
    assert meta["act"] == ("quick_gelu" if "quickgelu" in name else "gelu")
    assert meta["layers"] == 12 and meta["width"] == 512 and meta["hidden"] == 2048
    tok = ClipTokenizer(oc.tokenizer.default_bpe())
    texts = builtin_sample().texts
    p = verify.check_native_text(
        native_text.to_npz_bytes(meta, arrays),
        verify.text_reference(clip, tok, texts),
        0.99,
        tokenizer=tok,
        texts=texts,
    )
    assert p.passed and p.min_cosine >= 0.999, p


# ------------------------------------------------------------------ kernels, numerics, safety


def _activation_reference(act: str, x: np.ndarray) -> np.ndarray:
    """float64 formulas as open_clip writes them (torch's float32 kernels agree to rounding;
    its vectorised float32 GELU alone returns NaN at +inf, unlike its scalar path and float64)."""
    import torch

    t = torch.from_numpy(x.astype(np.float64))
    if act == "gelu":
        return (0.5 * t * (1.0 + torch.special.erf(t / np.sqrt(2.0)))).numpy()
    return (t * torch.sigmoid(1.702 * t)).numpy()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_activation_exact_for_every_float(act, isa):
    """Every finite input, [-1000, 1000] densely plus the float32 extremes, within 1e-6 of the
    float64 formula (relative to 1 + |y|); +-inf and NaN as the formula gives them. The old
    exp() overflowed int32 for QuickGELU inputs below about -52 (it returned about x)."""
    from univl_fast import _C

    fmax = np.finfo(np.float32).max
    x = np.concatenate(
        [
            np.linspace(-1000, 1000, 200001, dtype=np.float32),
            np.linspace(-60, -40, 20001, dtype=np.float32),
            np.array([fmax, -fmax, 1e-38, -1e-38, 0.0, -0.0, 88.0, -88.0], np.float32),
        ]
    )
    y = _C._native_activation(act, x, isa)
    assert y.dtype == np.float32 and y.shape == x.shape
    ref = _activation_reference(act, x)
    err = np.abs(y.astype(np.float64) - ref) / (1.0 + np.abs(ref))
    assert err.max() <= 1e-6, (err.max(), x[err.argmax()], y[err.argmax()], ref[err.argmax()])
    special = np.array([np.inf, -np.inf, np.nan], np.float32)
    got = _C._native_activation(act, special, isa)
    assert got[0] == np.inf and np.isnan(got[1]) and np.isnan(got[2]), got  # like the formula
    np.testing.assert_array_equal(np.isnan(_activation_reference(act, special)), np.isnan(got))


@pytest.mark.parametrize("isa", ISAS)
def test_zero_point_correction_is_exact(isa):
    """acc - zero * colsum in int32: with k = 2048 the accumulator reaches ~6.6e7 (> 2^24), where
    float32 steps by 4; here the exact result is -255 * W[col, 0] (small), so a float correction
    is visibly off. The reference is computed in int64 from the kernel's own quantization."""
    from univl_fast import _C

    k, n = 2048, 64
    w = np.full((n, k), 127, np.int8)
    w[:, 0] = np.arange(1, n + 1)  # sums not multiples of 4
    x = np.zeros((3, k), np.float32)
    x[:, 0] = [-1.0, -2.0, -0.5]  # zero point 255, every other activation at 255
    scale = np.linspace(0.01, 0.02, n).astype(np.float32)
    bias = np.zeros(n, np.float32)
    y, qx, sx, zx = _C._native_linear(x, w, scale, bias, isa)
    assert (zx == 255).all() and (qx[:, 1:] == 255).all()
    exact = qx.astype(np.int64) @ w.T.astype(np.int64) - zx[:, None] * w.sum(1, dtype=np.int64)
    assert exact.max() >= -255 * n and (qx.astype(np.int64) @ w.T.astype(np.int64)).min() > 2**25
    ref = exact * (sx[:, None].astype(np.float64) * scale[None, :])
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="at most 32768"):
        _C._native_linear(
            np.zeros((1, 32772), np.float32),
            np.zeros((32, 32772), np.int8),
            scale[:32],
            bias[:32],
            isa,
        )


_RACE_SCRIPT = r"""
import sys, threading, time
import numpy as np
from univl_fast.runtime.native_text import NativeTextTower

tower = NativeTextTower(sys.argv[1], threads=2)
ids = np.full((64, 77), 320, np.int64)
ids[:, 76] = 49407
want = tower.run(ids)
stop = False

def flip():
    while not stop:  # another Python thread rewrites the caller's array during runs
        ids[:, 5] = 1 << 40
        ids[:, 5] = 320

t = threading.Thread(target=flip)
t.start()
refused = runs = 0
end = time.monotonic() + 8
try:
    while runs < 200 and time.monotonic() < end:
        runs += 1
        try:
            got = tower.run(ids)
        except ValueError:
            refused += 1
            continue
        assert np.array_equal(got, want), "a run mixed two versions of the ids"
finally:
    stop = True
    t.join()
print("ok", runs, refused)
"""


def test_ids_changed_by_another_thread_during_a_run(native_path):
    """The ids are copied while the GIL is held, then validated and read from the copy: a
    concurrent writer can only make a call see all-valid ids (same result) or invalid ones
    (ValueError). Reading the caller's array again after validation read 2^40 as a token id
    (an out-of-bounds read: a crash). In a subprocess, so a crash fails only this test."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _RACE_SCRIPT, str(native_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.startswith("ok"), (r.returncode, r.stderr[-2000:])


_BAD_ALLOC_SCRIPT = r"""
import resource, sys
import numpy as np
from univl_fast.runtime.native_text import NativeTextTower

tower = NativeTextTower(sys.argv[1], threads=2)
small = np.full((2, 8), 320, np.int64)
want = tower.run(small)
big = np.full((4000, 77), 320, np.int64)
big[:, -1] = 49407  # end of text last: 308k rows, ~1 GB of workspace
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), hard))
try:
    tower.run(big)
    raise SystemExit("the run did not fail under the memory limit")
except MemoryError:
    pass
finally:
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
assert tower.in_flight == 0, tower.in_flight
assert np.array_equal(tower.run(small), want)
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs RLIMIT_AS (POSIX)")
def test_failed_allocation_leaves_no_call_in_flight(native_path):
    """A run that fails with std::bad_alloc (MemoryError: a real allocation failure, under an
    address-space limit) must not stay counted as in flight: a leaked count kept the tower off
    its thread team for good."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _BAD_ALLOC_SCRIPT, str(native_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


@pytest.mark.slow
def test_quickgelu_tower_with_large_pre_activations():
    """ViT-B-32-quickgelu (random weights) with one block's c_fc scaled so the MLP's
    pre-activations reach beyond +-100 (QuickGELU of about -180 returned about -180 before: the
    exponent of exp() overflowed int32; min cosine 0.75). The native tower must match PyTorch."""
    import open_clip as oc
    import torch

    from univl_fast.export import native_text, verify
    from univl_fast.export.samples import builtin_sample
    from univl_fast.model import UniVLDR

    clip = UniVLDR.from_config("ViT-B-32-quickgelu").clip.eval()
    fc = clip.transformer.resblocks[6].mlp.c_fc
    with torch.no_grad():
        fc.weight.mul_(60.0)
        fc.bias.mul_(60.0)
    seen: list[tuple[float, float]] = []
    hook = fc.register_forward_hook(lambda m, i, o: seen.append((o.min().item(), o.max().item())))
    tok = ClipTokenizer(oc.tokenizer.default_bpe())
    texts = builtin_sample().texts
    ref = verify.text_reference(clip, tok, texts)
    hook.remove()
    assert min(s[0] for s in seen) < -150 and max(s[1] for s in seen) > 100, seen
    meta, arrays = native_text.extract(clip)
    assert meta["act"] == "quick_gelu"
    data = native_text.to_npz_bytes(meta, arrays)
    p = verify.check_native_text(data, ref, 0.99, tokenizer=tok, texts=texts)
    assert p.passed and p.min_cosine >= 0.999, p


def test_token_embedding_resident_as_float16(native_path, tok, tmp_path, random_tiny_checkpoint):
    """The exporter writes the token embedding as float16 and the tower keeps it so (half the
    bytes of float32); a file from before (float32) loads to the same tower; an embedding
    beyond the float16 range is refused by the exporter and by the loader."""
    from univl_fast.export import native_text
    from univl_fast.export.towers import UnsupportedTowerError
    from univl_fast.model import UniVLDR
    from univl_fast.runtime.native_text import NativeWeightsError

    with np.load(native_path) as z:
        arrays = {k: z[k] for k in z.files}
    emb = arrays["token_embedding"]
    assert emb.dtype == np.float16 and emb.shape == (49408, 128)
    tower = NativeTextTower(native_path)
    assert tower.embedding_bytes == emb.size * 2
    ids, _ = tok(["a dog on the beach", "x"])
    arrays["token_embedding"] = emb.astype(np.float32)
    np.savez(tmp_path / "old.npz", **arrays)
    np.testing.assert_array_equal(NativeTextTower(tmp_path / "old.npz").run(ids), tower.run(ids))
    arrays["token_embedding"][7, 3] = 1e6
    np.savez(tmp_path / "big.npz", **arrays)
    with pytest.raises(NativeWeightsError, match="float16 range"):
        NativeTextTower(tmp_path / "big.npz")
    clip = UniVLDR.from_pretrained(random_tiny_checkpoint).clip
    import torch

    with torch.no_grad():
        clip.token_embedding.weight[7, 3] = 1e6
    with pytest.raises(UnsupportedTowerError, match="float16 range"):
        native_text.extract(clip)
