"""The torch-free Encoder over an exported engine: parity with PyTorch, batching, bad input."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from univl_fast.runtime import (
    BackendUnavailable,
    EncodeError,
    Encoder,
    EncodeResult,
    EngineError,
)

pytest.importorskip("open_clip")  # the PyTorch reference below


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


@pytest.fixture(scope="module")
def model(random_tiny_checkpoint):
    from univl_fast.model import UniVLDR

    return UniVLDR.from_pretrained(random_tiny_checkpoint)


@pytest.fixture(scope="module")
def enc_fp32(tiny_engine):
    return Encoder(tiny_engine, precision="fp32")


@pytest.fixture(scope="module")
def enc_int8(tiny_engine):
    return Encoder(tiny_engine, precision="int8")


@pytest.fixture(scope="module")
def real(synth_tiny_dataset):
    """Texts (queries + text docs), and image docs (PIL + caption) of the synthetic dataset."""
    ds = synth_tiny_dataset
    texts = [q.text for q in ds.queries("test")][:40] + [d.text for d in ds.text_docs()][:40]
    docs = ds.image_docs()[:24]
    images = [ds.images.load(d.doc_id) for d in docs]
    return texts, images, [d.caption for d in docs]


def test_defaults(tiny_engine):
    enc = Encoder(tiny_engine)
    assert enc.precision == "int8" and enc.backend == "onnxruntime-cpu"
    assert enc.dim == 128 and len(enc.manifest_sha256) == 64
    assert enc.manifest["embed_dim"] == 128


def test_thread_settings_spin_default_and_env(monkeypatch):
    from univl_fast.runtime import ThreadSettings

    monkeypatch.delenv("UNIVL_FAST_ORT_SPIN", raising=False)
    assert ThreadSettings().resolved_spin() is True  # spin within a run, stop at its end
    monkeypatch.setenv("UNIVL_FAST_ORT_SPIN", "0")
    assert ThreadSettings().resolved_spin() is False
    assert ThreadSettings(spin=True).resolved_spin() is True  # explicit beats the env


def test_text_thread_view_gives_the_same_embeddings(tiny_engine, enc_fp32):
    from univl_fast.runtime import ThreadSettings

    texts = ["a red bus", "two cats on a sofa next to a window", ""]
    view = enc_fp32.with_text_threads(ThreadSettings(intra_op=1))
    assert view._towers["text"] is not enc_fp32._towers["text"]
    assert view._towers["image"] is enc_fp32._towers["image"]
    np.testing.assert_allclose(
        view.encode_queries(texts), enc_fp32.encode_queries(texts), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "precision,text_runtime,threshold",
    [("fp32", None, 0.9999), ("int8", "onnxruntime", 0.99), ("int8", "native", 0.99)],
)
def test_parity_with_pytorch_on_real_data(
    tiny_engine, model, real, precision, text_runtime, threshold
):
    texts, images, captions = real
    enc = Encoder(tiny_engine, precision=precision, text_runtime=text_runtime)
    assert enc.text_runtime == (text_runtime or "onnxruntime")
    q = enc.encode_queries(texts)
    assert q.dtype == np.float32 and q.shape == (len(texts), 128)
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert cosines(q, model.encode_queries(texts)).min() >= threshold
    t = enc.encode_text_docs(texts)
    assert cosines(t, model.encode_text_docs(texts)).min() >= threshold
    d = enc.encode_image_docs(images, captions)
    ref = model.encode_image_docs(images, captions)
    assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert cosines(d, ref).min() >= threshold


def test_lengths_1_2_76_77_and_longer(enc_fp32, model):
    texts = [
        "x",
        "x x",
        " ".join(["x"] * 74),
        " ".join(["x"] * 75),
        " ".join(["x"] * 76),
        "word " * 5000,
    ]
    lengths = [len(enc_fp32.tokenizer.token_ids(t)) for t in texts]
    assert lengths == [3, 4, 76, 77, 77, 77]
    assert cosines(enc_fp32.encode_queries(texts), model.encode_queries(texts)).min() >= 0.9999


def test_batch_1_and_65_and_mixed_lengths(tiny_engine, enc_fp32):
    rng = np.random.default_rng(0)
    words = ["red", "car", "photo", "tower", "the", "of", "café", "東京"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 90)))) for _ in range(65)]
    small = Encoder(tiny_engine, precision="fp32", batch_size=16)
    ones = np.concatenate([enc_fp32.encode_text_docs([t]) for t in texts])
    for emb in (
        enc_fp32.encode_text_docs(texts),
        small.encode_text_docs(texts),
        enc_fp32.encode_queries(texts),
        small.encode_queries(texts),
    ):
        assert emb.shape == (65, 128)
        assert np.abs(emb - ones).max() < 1e-5  # order restored, padding never leaks


def test_image_doc_batches(tiny_engine, enc_fp32, real):
    _, images, captions = real
    small = Encoder(tiny_engine, precision="fp32", batch_size=5)
    a = enc_fp32.encode_image_docs(images, captions)
    b = small.encode_image_docs(images, captions)
    c = np.concatenate(
        [enc_fp32.encode_image_docs([i], [c]) for i, c in zip(images, captions, strict=True)]
    )
    assert np.abs(a - b).max() < 1e-5 and np.abs(a - c).max() < 1e-5


def test_image_sources_paths_bytes_pil(tmp_path, enc_fp32, real):
    _, images, captions = real
    img = images[0]
    path = tmp_path / "a.png"
    img.save(path)
    data = path.read_bytes()
    out = enc_fp32.encode_image_docs([img, str(path), path, data], [captions[0]] * 4)
    assert np.abs(out - out[0]).max() < 1e-6


def test_empty_and_whitespace_text_encode_sot_eot(enc_fp32, model):
    out = enc_fp32.encode_queries(["", "   \n\t"])
    assert np.abs(out[0] - out[1]).max() < 1e-6
    assert cosines(out[:1], model.encode_queries([""])).min() >= 0.9999


def _bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def _image_bytes(mode: str, fmt: str, size=(80, 50)) -> bytes:
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (size[1], size[0]))).astype(np.uint16))
    else:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_bad_images_are_per_item_errors(tmp_path, enc_fp32):
    good = _image_bytes("RGB", "JPEG")
    jpeg = _image_bytes("RGB", "JPEG", (400, 300))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    items = [
        good,  # 0 ok
        b"",  # 1 zero bytes
        str(empty),  # 2 zero-byte file
        b"not an image at all",  # 3 corrupt
        jpeg[: len(jpeg) // 2],  # 4 truncated
        _bomb_png(),  # 5 decompression bomb
        str(tmp_path / "nope.png"),  # 6 missing file
        _image_bytes("L", "PNG"),  # 7 grayscale ok
        _image_bytes("CMYK", "JPEG"),  # 8 ok
        _image_bytes("RGBA", "PNG"),  # 9 ok
        _image_bytes("I;16", "PNG"),  # 10 16-bit ok
        _image_bytes("P", "PNG"),  # 11 palette ok
    ]
    captions = ["caption"] * len(items)
    with pytest.raises(EncodeError) as info:
        enc_fp32.encode_image_docs(items, captions)
    err = info.value
    bad = {e.index: e.reason for e in err.errors}
    assert sorted(bad) == [1, 2, 3, 4, 5, 6]
    assert "zero" in bad[1] and "zero" in bad[2]
    assert "not a recognised image format" in bad[3]
    assert "truncated" in bad[4]
    assert "bomb" in bad[5] or "pixel limit" in bad[5]
    assert "not found" in bad[6]
    good_idx = [0, 7, 8, 9, 10, 11]
    assert err.result.indices.tolist() == good_idx
    assert err.result.embeddings.shape == (6, 128)
    alone = enc_fp32.encode_image_docs([items[i] for i in good_idx], ["caption"] * 6)
    assert np.abs(err.result.embeddings - alone).max() < 1e-5  # the good ones are unharmed

    res = enc_fp32.encode_image_docs(items, captions, on_error="skip")
    assert isinstance(res, EncodeResult)
    assert res.indices.tolist() == good_idx and len(res.errors) == 6


def test_bad_texts_are_per_item_errors(enc_fp32):
    texts = ["ok", b"\xff\xfe broken", "lone \ud800 surrogate", 42, b"caf\xc3\xa9", "fine"]
    with pytest.raises(EncodeError) as info:
        enc_fp32.encode_text_docs(texts)
    bad = {e.index: e.reason for e in info.value.errors}
    assert sorted(bad) == [1, 2, 3]
    assert "invalid UTF-8" in bad[1] and "surrogate" in bad[2] and "expected str" in bad[3]
    res = info.value.result
    assert res.indices.tolist() == [0, 4, 5]
    expected = enc_fp32.encode_text_docs(["ok", "café", "fine"])
    assert np.abs(res.embeddings - expected).max() < 1e-5
    with pytest.raises(EncodeError, match="caption"):
        enc_fp32.encode_image_docs([_image_bytes("RGB", "PNG")], [b"\xff"])
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        enc_fp32.encode_image_docs([b"", b""], ["x"])


def test_100k_char_text_is_truncated_like_open_clip(enc_fp32, model):
    text = ("A very long document about towers and bridges, café. " * 2000)[:100_000]
    out = enc_fp32.encode_text_docs([text, "short"])
    assert cosines(out[:1], model.encode_text_docs([text])).min() >= 0.9999


def test_tampered_engine_refused(tmp_path, tiny_engine):
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    p = eng / "text_int8.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="text_int8.onnx was modified"):
        Encoder(eng, precision="int8", text_runtime="onnxruntime")
    Encoder(eng, precision="fp32")  # the untouched graphs still load
    (eng / "image_fp32.onnx").unlink()
    with pytest.raises(EngineError, match="image_fp32.onnx is listed in manifest.json but missing"):
        Encoder(eng, precision="fp32")
    (eng / "manifest.json").unlink()
    with pytest.raises(EngineError, match="no manifest.json"):
        Encoder(eng)


def test_precision_and_backend_errors(tiny_engine):
    with pytest.raises(EngineError, match="no 'fp16' graphs"):
        Encoder(tiny_engine, precision="fp16")
    with pytest.raises(BackendUnavailable, match=r"univl-fast\[gpu\]|no CUDA device"):
        Encoder(tiny_engine, backend="onnxruntime-cuda")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        Encoder(tiny_engine, backend="tensorrt")
    with pytest.raises(ValueError, match="unknown"):
        Encoder(tiny_engine, backend="magic")
    assert Encoder(tiny_engine, backend="onnxruntime").backend == "onnxruntime-cpu"


@pytest.mark.needs_cuda
def test_cuda_backend_matches_cpu(tiny_engine, enc_fp32):
    enc = Encoder(tiny_engine, precision="fp32", backend="onnxruntime-cuda")
    texts = ["a red car", "the eiffel tower at night"]
    assert cosines(enc.encode_queries(texts), enc_fp32.encode_queries(texts)).min() >= 0.9999


@pytest.mark.needs_tensorrt
def test_tensorrt_backend_matches_cpu(tiny_engine_trt, enc_fp32):
    enc = Encoder(tiny_engine_trt, backend="tensorrt")
    texts = ["a red car", "the eiffel tower at night"]
    assert cosines(enc.encode_queries(texts), enc_fp32.encode_queries(texts)).min() >= 0.99


def test_engine_dir_is_relocatable(tmp_path, tiny_engine):
    moved = Path(shutil.copytree(tiny_engine, tmp_path / "moved"))
    a = Encoder(moved, precision="fp32").encode_queries(["a red car"])
    b = Encoder(tiny_engine, precision="fp32").encode_queries(["a red car"])
    assert np.array_equal(a, b)


# -- artifact choice: auto only picks what passed parity (hand-made manifests) --


def _parity(passed: bool = True, measured: bool = True) -> dict:
    return {"measured": measured, "passed": passed and measured, "reason": None}


def _manifest(precisions=("fp32", "fp16", "int8"), plans: bool = False, **parity_by_key) -> dict:
    """A minimal engine manifest: graphs for ``precisions``, every parity passed unless
    ``parity_by_key[key] = {part: parity}`` says otherwise."""
    parity = {part: {p: _parity() for p in precisions} for part in ("text", "image", "combined")}
    for key, parts in parity_by_key.items():
        for part, p in parts.items():
            parity[part][key.replace("_", "-")] = p
    graphs = {t: {p: f"{t}_{p}.onnx" for p in precisions} for t in ("text", "image")}
    m = {"graphs": graphs, "parity": parity, "tensorrt_plans": {}}
    if plans:
        m["tensorrt_plans"] = {t: {"fp16": f"{t}_fp16.plan"} for t in ("text", "image")}
    return m


def test_plans_without_recorded_parity_are_not_picked_by_auto():
    from univl_fast.runtime import selection

    assert selection.plans_problem(_manifest()) == "no TensorRT plans for both towers"
    unverified = _manifest(plans=True)
    assert "no text parity recorded for tensorrt-fp16" in selection.plans_problem(unverified)
    half = _manifest(
        plans=True,
        tensorrt_fp16={"text": _parity(), "image": _parity(), "combined": _parity(False)},
    )
    assert "combined tensorrt-fp16 missed parity" in selection.plans_problem(half)
    verified = _manifest(
        plans=True, tensorrt_fp16={"text": _parity(), "image": _parity(), "combined": _parity()}
    )
    assert selection.plans_problem(verified) is None


def test_auto_precision_needs_measured_passed_parity_for_towers_and_combined():
    from univl_fast.runtime.selection import auto_precision

    assert auto_precision(_manifest(), "onnxruntime-cpu") == "int8"
    assert auto_precision(_manifest(), "onnxruntime-cuda") == "fp16"
    # fp16 that ONNX Runtime's CPU provider could not run at export: never picked by auto
    unmeasured = _manifest(fp16={"text": _parity(measured=False)})
    assert auto_precision(unmeasured, "onnxruntime-cuda") == "fp32"
    assert auto_precision(unmeasured, "tensorrt") == "fp32"
    # int8 towers fine but the image-document vector missed parity
    assert auto_precision(_manifest(int8={"combined": _parity(False)}), "onnxruntime-cpu") == "fp32"
    nothing = _manifest(precisions=("fp32",), fp32={"image": _parity(False)})
    assert auto_precision(nothing, "onnxruntime-cpu") is None


def test_native_text_needs_its_combined_parity():
    from univl_fast.runtime.selection import native_text_problem

    m = _manifest(int8_native={"text": _parity(), "combined": _parity()})
    assert native_text_problem(m) is None
    m["parity"]["combined"]["int8-native"] = _parity(False)
    assert "combined int8-native missed parity" in native_text_problem(m)
    del m["parity"]["combined"]["int8-native"]
    assert "no combined parity recorded for int8-native" in native_text_problem(m)


def test_unverified_precision_by_name_warns(tmp_path, tiny_engine, caplog):
    import json

    eng = Path(shutil.copytree(tiny_engine, tmp_path / "eng"))
    m = json.loads((eng / "manifest.json").read_text())
    m["parity"]["combined"]["int8"] = {"measured": False, "passed": False, "reason": "test"}
    (eng / "manifest.json").write_text(json.dumps(m))
    assert Encoder(eng, text_runtime="onnxruntime").precision == "fp32"  # auto skips int8
    with caplog.at_level("WARNING", logger="univl_fast.runtime.selection"):
        enc = Encoder(eng, precision="int8", text_runtime="onnxruntime")
    assert enc.precision == "int8"
    assert "precision 'int8' asked for by name without verified parity" in caplog.text
