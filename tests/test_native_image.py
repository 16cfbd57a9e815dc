"""The native int8 image tower (csrc/cpu/image_tower*, univl_fast.runtime.native_image): exported
weights, parity with PyTorch (raw embedding and image-document vector), every instruction-set
build, batch / thread invariance, bad input, refusal, and how the Encoder picks it."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.generators.photos import photo_like_jpegs
from tests.native_helpers import assert_forked_child_runs
from univl_fast.runtime.manifest import EngineError, load_manifest
from univl_fast.runtime.native_image import NativeImageTower, fast_native_available
from univl_fast.runtime.native_text import NativeWeightsError, native_isas
from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig
from univl_fast.utils.io import sha256_file

FAST, FAST_WHY = fast_native_available()
ISAS = native_isas()
FAST_ISAS = [i for i in ISAS if i != "generic"] or [
    pytest.param("none", marks=pytest.mark.skip(reason=f"no fast native build here: {FAST_WHY}"))
]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def photo_like(n: int, seed: int = 0) -> list[Image.Image]:
    """Photo-like JPEG pictures at 320-800 px (no sample-photo package here), decoded."""
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in photo_like_jpegs(n, seed)]


def _pixels(images: list[Image.Image], size: int) -> np.ndarray:
    return ImagePreprocessor(PreprocessConfig(size, MEAN, STD))(images)


@pytest.fixture(scope="module")
def native_path(tiny_engine) -> Path:
    return Path(tiny_engine) / load_manifest(tiny_engine)["native"]["image"]["int8"]


@pytest.fixture(scope="module")
def tiny_clip(random_tiny_checkpoint):
    from univl_fast.model import UniVLDR

    return UniVLDR.from_pretrained(random_tiny_checkpoint).clip.eval()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return _pixels(photo_like(5), 64)


def _torch_image(clip, px: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return clip.encode_image(torch.from_numpy(px)).numpy()


def test_exported_listed_hashed_and_verified(tiny_engine, native_path):
    m = load_manifest(tiny_engine)
    assert native_path.name == "image_int8.native.npz"
    entry = m["files"][native_path.name]
    assert entry["kind"] == "native-image" and entry["precision"] == "int8"
    assert entry["sha256"] == sha256_file(native_path)
    p = m["parity"]["image"]["int8-native"]
    assert p["measured"] and p["passed"] and p["min_cosine"] >= 0.99, p
    assert p["max_rel_l2"] <= p["max_rel_l2_allowed"] == 0.08, p
    assert p["rows"] >= 7 and p["provider"].startswith("univl_fast native")
    c = m["parity"]["combined"]["int8-native-image"]
    assert c["measured"] and c["passed"] and c["min_cosine"] >= 0.99, c
    assert c["max_rel_l2"] <= 0.08 and c["provider"] == "text int8-native + image int8-native"


@pytest.mark.parametrize("isa", ISAS)
def test_matches_torch_batch_equals_single(native_path, tiny_clip, pixels, isa):
    """Every row within the contract (cosine and relative L2 vs PyTorch); a row of a batch is
    bitwise the row run alone (images never interact)."""
    tower = NativeImageTower(native_path, threads=2, isa=isa)
    assert tower.isa == isa and tower.image_size == 64
    out = tower.run(pixels)
    assert out.shape == (5, 128) and out.dtype == np.float32
    ref = _torch_image(tiny_clip, pixels)
    assert _cos(out, ref).min() >= 0.999 and _rel_l2(out, ref).max() <= 0.03
    for i in (0, 3, 4):
        np.testing.assert_array_equal(tower.run(pixels[i : i + 1]), out[i : i + 1])
    assert tower.run(pixels[:0]).shape == (0, 128)


@pytest.mark.parametrize("isa", FAST_ISAS)
def test_fast_and_generic_builds_agree(native_path, pixels, isa):
    """Same quantization, exact int32 GEMMs: the builds differ only in float rounding."""
    fast = NativeImageTower(native_path, threads=2, isa=isa).run(pixels)
    slow = NativeImageTower(native_path, threads=1, isa="generic").run(pixels)
    assert _cos(fast, slow).min() > 0.9999
    assert np.abs(fast - slow).max() < 1e-2 * np.abs(slow).max()


def test_thread_counts_agree(native_path, pixels):
    one = NativeImageTower(native_path, threads=1).run(pixels)
    tower = NativeImageTower(native_path, threads=2)
    np.testing.assert_array_equal(tower.run(pixels), one)
    narrow = tower.with_threads(1)  # shares the weights
    assert narrow.threads == 1 and tower.threads == 2 and tower.in_flight == 0
    np.testing.assert_array_equal(narrow.run(pixels), one)
    strided = np.ascontiguousarray(np.concatenate([pixels, pixels], axis=1))[:, :3]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(tower.run(strided), one)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_alone(native_path, pixels):
    """A process forked after the tower's thread team exists runs on its own thread."""
    tower = NativeImageTower(native_path, threads=2)
    want = tower.run(pixels)
    assert_forked_child_runs(lambda: tower.run(pixels), want)


def test_bad_pixels_and_files_are_refused(native_path, pixels, tmp_path):
    tower = NativeImageTower(native_path)
    with pytest.raises(TypeError, match="pixels must be float32, got float64"):
        tower.run(pixels.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(n, 3, 64, 64\), got \(5, 3, 64, 63\)"):
        tower.run(np.ascontiguousarray(pixels[..., :63]))
    with pytest.raises(ValueError, match=r"got \(3, 64, 64\)"):
        tower.run(pixels[0])
    with pytest.raises(TypeError, match="float32"):
        tower.run("a picture")
    with pytest.raises(ValueError, match="isa 'avx9000' is not available"):
        NativeImageTower(native_path, isa="avx9000")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(NativeWeightsError, match="not a readable .npz"):
        NativeImageTower(bad)
    with np.load(native_path) as z:
        arrays = {k: z[k] for k in z.files}
    assert tower.weight_bytes == sum(a.size for k, a in arrays.items() if k.endswith(".q"))
    np.savez(tmp_path / "text.npz", **{**arrays, "meta": np.array('{"format": "x"}')})
    with pytest.raises(NativeWeightsError, match="format 'x', expected 'univl-native-image/1'"):
        NativeImageTower(tmp_path / "text.npz")
    arrays["positional_embedding"] = arrays["positional_embedding"][:-1]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(NativeWeightsError, match=r"'positional_embedding' has shape \(64, 128\)"):
        NativeImageTower(tmp_path / "cut.npz")


def _engine_with_speed(engine, tmp_path, native: float | None, graph: float = 100.0) -> Path:
    """A copy of ``engine`` whose manifest records these export speeds (None: no record)."""
    eng = Path(shutil.copytree(engine, tmp_path / f"eng-{native}-{graph}"))
    m = json.loads((eng / "manifest.json").read_text())
    if native is None:
        del m["native"]["image_speed"]
    else:
        m["native"]["image_speed"].update(
            native_images_per_s=native, onnxruntime_images_per_s=graph
        )
    (eng / "manifest.json").write_text(json.dumps(m))
    return eng


def test_export_records_speed_against_the_int8_graph(tiny_engine, native_path, pixels):
    """The exporter times native vs the int8 image graph and records why auto passes over a
    native tower that was not faster by the margin."""
    from univl_fast.export import native_image
    from univl_fast.export.build import summarize
    from univl_fast.runtime.selection import NATIVE_IMAGE_MARGIN

    native = load_manifest(tiny_engine)["native"]
    speed = native["image_speed"]
    assert speed["measured"] and speed["batch"] == 16 and speed["repeats"] == 3, speed
    assert speed["native_images_per_s"] > 0 and speed["onnxruntime_images_per_s"] > 0, speed
    slower = speed["native_images_per_s"] < NATIVE_IMAGE_MARGIN * speed["onnxruntime_images_per_s"]
    assert ("image_reason" in native) == slower, native
    if slower:
        assert native["image_reason"].startswith("not picked by auto: measured at export")
    line = summarize(load_manifest(tiny_engine)).splitlines()[-1]
    assert line.startswith("image speed: native int8 ") and line.endswith(
        "auto runs onnxruntime" if slower else "auto runs native"
    ), line
    none = native_image.measure_speed(native_path.read_bytes(), None, pixels)
    assert not none["measured"] and none["reason"] == "no int8 image graph to compare with"


def test_auto_picks_native_only_when_measured_faster(tiny_engine, tmp_path, caplog):
    """auto: native only with a recorded export speed >= 1.05x the int8 graph's (and a fast
    build); else ONNX Runtime, the reason in ``runtime_reasons``; image_runtime="native" overrides."""
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.selection import native_image_speed_problem

    rec = {"measured": True, "onnxruntime_images_per_s": 100.0, "batch": 16, "threads": 2}
    for native, ok in ((104.9, False), (105.0, True), (40.0, False)):
        m = {"native": {"image_speed": {**rec, "native_images_per_s": native}}}
        assert (native_image_speed_problem(m) is None) == ok, native
    faster = Encoder(_engine_with_speed(tiny_engine, tmp_path, 200.0))
    assert faster.image_runtime == ("native" if FAST else "onnxruntime")
    assert ("image" in faster.runtime_reasons) == (not FAST)
    with caplog.at_level("INFO", logger="univl_fast.runtime.encoder"):
        slow_eng = _engine_with_speed(tiny_engine, tmp_path, 101.0)
        slow = Encoder(slow_eng)
    assert slow.image_runtime == "onnxruntime"
    if FAST:
        why = slow.runtime_reasons["image"]
        assert "not faster than the int8 image graph" in why and "101.0 vs 100.0" in why, why
        assert "native image tower not used" in caplog.text
    assert Encoder(slow_eng, image_runtime="native").image_runtime == "native"  # the override
    unmeasured = Encoder(_engine_with_speed(tiny_engine, tmp_path, None))
    assert unmeasured.image_runtime == "onnxruntime"
    if FAST:
        assert "no speed comparison" in unmeasured.runtime_reasons["image"]


def test_encoder_runs_native_and_agrees_with_onnx(tiny_engine, monkeypatch, tmp_path):
    from univl_fast.runtime import Encoder

    fast_engine = _engine_with_speed(tiny_engine, tmp_path, 200.0)
    auto = Encoder(fast_engine)
    assert auto.precision == "int8"
    assert auto.image_runtime == ("native" if FAST else "onnxruntime")
    ort_enc = Encoder(tiny_engine, image_runtime="onnxruntime")
    native = Encoder(tiny_engine, image_runtime="native")
    assert ort_enc.image_runtime == "onnxruntime" and native.image_runtime == "native"
    assert "image_runtime='native'" in repr(native)
    pics, caps = photo_like(3, seed=1), ["a hill at dusk", "", "clouds " * 40]
    a = native.encode_image_docs(pics, caps)
    b = ort_enc.encode_image_docs(pics, caps)
    assert a.shape == (3, 128) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert _cos(a, b).min() > 0.99
    assert Encoder(tiny_engine, precision="fp32").image_runtime == "onnxruntime"
    with pytest.raises(EngineError, match="native image tower is int8; precision is 'fp32'"):
        Encoder(tiny_engine, precision="fp32", image_runtime="native")
    with pytest.raises(ValueError, match="choose auto, native or onnxruntime"):
        Encoder(tiny_engine, image_runtime="tvm")
    monkeypatch.setenv("UNIVL_FAST_NATIVE_IMAGE", "0")
    assert Encoder(fast_engine).image_runtime == "onnxruntime"


def test_tampered_native_weights_refused(tiny_engine, native_path, tmp_path):
    from univl_fast.runtime import Encoder

    copy = tmp_path / "engine"
    shutil.copytree(tiny_engine, copy)
    target = copy / native_path.name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="sha256"):
        Encoder(copy, image_runtime="native")


def test_unsupported_tower_refused_with_reason(tmp_path, random_tiny_checkpoint):
    """A model the native tower does not reproduce (here: LayerNorms with different eps) gets
    no native image weights, the reason is recorded, and the Encoder uses ONNX Runtime."""
    from univl_fast.export.build import ModelSpec, export_engine
    from univl_fast.export.config import ExportConfig
    from univl_fast.model import UniVLDR
    from univl_fast.runtime import Encoder

    model = UniVLDR.from_pretrained(random_tiny_checkpoint)
    model.clip.visual.ln_post.eps = 1e-6
    spec = ModelSpec.from_model_config(model.config.to_json())
    cfg = ExportConfig(precisions=["fp32", "int8"], native_text=False)
    out = export_engine(model.clip, spec, tmp_path / "e", cfg, progress=False)
    assert out["native"]["image"] == {} and "mixes LayerNorm eps" in out["native"]["image_reason"]
    assert not (tmp_path / "e" / "image_int8.native.npz").exists()
    assert "int8-native" not in out["parity"]["image"]
    assert Encoder(tmp_path / "e").image_runtime == "onnxruntime"
    with pytest.raises(EngineError, match="has no native image tower: image tower mixes"):
        Encoder(tmp_path / "e", image_runtime="native")


def test_scale_error_refused_by_relative_l2(tiny_engine, native_path, tiny_clip, pixels):
    """Cosine cannot see a tower off by a constant factor, which would re-weight image against
    caption in the image-document vector: checked against a reference scaled by 1.25, the
    tower fails on its relative L2 error and norm ratio, its cosine intact."""
    import dataclasses

    from univl_fast.export import native_image, verify
    from univl_fast.export.config import ExportConfig
    from univl_fast.runtime.tokenizer import ClipTokenizer

    tok = ClipTokenizer(Path(tiny_engine) / "tokenizer/bpe_simple_vocab_16e6.txt.gz")
    inputs = verify.SampleInputs(tok, ["a"], ["b"] * len(pixels), pixels)
    ref = verify.Reference(np.zeros((1, 128)), np.zeros((5, 128)), _torch_image(tiny_clip, pixels))
    limits = ExportConfig().limits("int8")
    data = native_path.read_bytes()
    p, _ = native_image.run_native_image(data, inputs, ref, limits)
    assert p.passed and p.rows == 6, p
    scaled = dataclasses.replace(ref, images=ref.images * 1.25)
    p, _ = native_image.run_native_image(data, inputs, scaled, limits)
    assert not p.passed and p.min_cosine >= 0.999, p
    assert "relative L2 error" in p.reason and "scale error" in p.reason, p.reason


@pytest.mark.slow
def test_vit_b32_parity_on_photo_like_images():
    """The paper's backbone (random weights): min cosine >= 0.999 vs PyTorch fp32 on photo-like
    pictures (no sample-photo package is installed here), relative L2 within the contract."""
    import open_clip as oc

    from univl_fast.export import native_image

    clip = oc.create_model("ViT-B-32").eval()
    meta, arrays = native_image.extract(clip)
    assert (meta["layers"], meta["width"], meta["patch"], meta["image_size"]) == (12, 768, 32, 224)
    px = _pixels(photo_like(4, seed=2), 224)
    tower = NativeImageTower(native_image.to_npz_bytes(meta, arrays), threads=2)
    out, ref = tower.run(px), _torch_image(clip, px)
    assert _cos(out, ref).min() >= 0.999, _cos(out, ref)
    assert _rel_l2(out, ref).max() <= 0.03, _rel_l2(out, ref)
