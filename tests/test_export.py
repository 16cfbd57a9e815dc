"""The exporter: graphs, fusions, parity written to the manifest, failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("open_clip")

from univl_fast.runtime.manifest import load_manifest  # noqa: E402
from univl_fast.utils.io import sha256_file  # noqa: E402


def test_manifest_lists_verified_files(tiny_engine_all):
    m = load_manifest(tiny_engine_all)
    assert m["embed_dim"] == 128 and m["context_length"] == 77
    assert m["preprocess"]["image_size"] == 64
    assert m["model_config"]["model_name"] == "univl-tiny"
    for tower in ("text", "image"):
        assert set(m["graphs"][tower]) == {"fp32", "fp16", "int8"}
    for rel, entry in m["files"].items():
        path = Path(tiny_engine_all) / rel
        assert path.is_file(), rel
        assert entry["sha256"] == sha256_file(path) and entry["size"] == path.stat().st_size
    for key in ("torch", "open_clip", "onnx", "onnxruntime"):
        assert m["versions"][key]
    assert (Path(tiny_engine_all) / m["tokenizer"]["vocab_file"]).is_file()
    assert json.loads((Path(tiny_engine_all) / "manifest.json").read_text())["created"]


def test_parity_recorded_and_within_contract(tiny_engine_all):
    parity = load_manifest(tiny_engine_all)["parity"]
    for tower in ("text", "image"):
        fp32 = parity[tower]["fp32"]
        assert fp32["measured"] and fp32["passed"] and fp32["min_cosine"] >= 0.9999
        int8 = parity[tower]["int8"]
        assert int8["measured"] and int8["min_cosine"] >= 0.99, int8
        fp16 = parity[tower]["fp16"]
        # ORT's CPU provider runs these fp16 graphs here; if it could not, it must say so
        assert fp16["passed"] if fp16["measured"] else "not measured" in fp16["reason"]
    assert parity["text"]["fp32"]["rows"] >= 20  # batched + one by one


def test_graph_inputs_are_dynamic(tiny_engine):
    text = onnx.load(Path(tiny_engine) / "text_fp32.onnx")
    dims = text.graph.input[0].type.tensor_type.shape.dim
    assert text.graph.input[0].name == "input_ids"
    assert all(d.dim_param and not d.dim_value for d in dims), dims
    image = onnx.load(Path(tiny_engine) / "image_fp32.onnx")
    idims = image.graph.input[0].type.tensor_type.shape.dim
    assert idims[0].dim_param and [d.dim_value for d in idims[1:]] == [3, 64, 64]


def test_fusions_fired_and_int8_quantized(tiny_engine):
    m = load_manifest(tiny_engine)
    for tower in ("text", "image"):
        assert m["fusions"][tower].get("SkipLayerNormalization", 0) > 0
        assert m["fusions"][tower].get("Attention") == 3  # causal (text) and plain (image)
    q = onnx.load(Path(tiny_engine) / "text_int8.onnx")
    ops = {n.op_type for n in q.graph.node}
    assert "DynamicQuantizeLinear" in ops and "QAttention" in ops, ops
    # split back into Add + LayerNormalization (ORT's CPU SkipLayerNormalization is slow)
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops, ops
    assert m["files"]["image_int8.onnx"]["quantization"]["op_types"] == ["MatMul", "Attention"]


def test_raw_outputs_match_torch_at_every_length(tiny_engine, random_tiny_checkpoint):
    """Text graph on lengths 1, 2, 76, 77 and > 77 tokens (trimmed) vs open_clip (padded)."""
    import onnxruntime as ort
    import torch

    from univl_fast.model import UniVLDR
    from univl_fast.runtime.tokenizer import ClipTokenizer

    model = UniVLDR.from_pretrained(random_tiny_checkpoint)
    tok = ClipTokenizer(Path(tiny_engine) / "tokenizer/bpe_simple_vocab_16e6.txt.gz")
    sess = ort.InferenceSession(str(Path(tiny_engine) / "text_fp32.onnx"))
    texts = ["", "x", " ".join(["x"] * 74), " ".join(["x"] * 75), " ".join(["x"] * 300)]
    ids, lengths = tok(texts)
    assert lengths.tolist() == [2, 3, 76, 77, 77]
    with torch.no_grad():
        ref = model.clip.encode_text(torch.from_numpy(tok.tokenize_padded(texts))).numpy()
    for i, t in enumerate(texts):
        one, _ = tok([t])
        out = sess.run(None, {"input_ids": one})[0]
        assert np.abs(out[0] - ref[i]).max() < 1e-4
    # one token only (no sot/eot): still a valid dynamic length
    assert sess.run(None, {"input_ids": np.array([[320]], np.int64)})[0].shape == (1, 128)


def test_fp32_parity_failure_writes_nothing(tmp_path, random_tiny_checkpoint):
    from univl_fast.export.build import ExportError, ModelSpec, export_engine
    from univl_fast.export.config import ExportConfig
    from univl_fast.model import UniVLDR

    out = tmp_path / "engine"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous export's manifest: must go first
    model = UniVLDR.from_pretrained(random_tiny_checkpoint)
    spec = ModelSpec.from_model_config(model.config.to_json())
    impossible = ExportConfig(precisions=["fp32"], fp32_min_cosine=1.5, fuse=False)
    with pytest.raises(ExportError, match="text tower fp32 graph failed parity"):
        export_engine(model.clip, spec, out, impossible, progress=False)
    assert not (out / "manifest.json").exists()
    assert not (out / "text_fp32.onnx").exists()


def test_cli_with_dataset_and_bad_args(tmp_path, random_tiny_checkpoint, synth_tiny, capsys):
    from univl_fast.export.cli import main

    out = tmp_path / "eng"
    rc = main(
        [
            "--checkpoint",
            str(random_tiny_checkpoint),
            "--out",
            str(out),
            "--precision",
            "fp32,int8",
            "--data",
            str(synth_tiny),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = load_manifest(out)
    assert m["parity_sample"]["source"].startswith("dataset:")
    assert m["parity_sample"]["images"] > 0
    for tower in ("text", "image"):  # int8 on real (synthetic dataset) texts and images
        assert m["parity"][tower]["int8"]["min_cosine"] >= 0.99
        assert m["parity"][tower]["fp32"]["min_cosine"] >= 0.9999
    capsys.readouterr()
    assert (
        main(
            ["--checkpoint", str(random_tiny_checkpoint), "--out", str(out), "--precision", "fp64"]
        )
        == 2
    )
    assert "unknown ['fp64']" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_tensorrt_flag_refuses_here_with_reason(tmp_path, random_tiny_checkpoint, capsys):
    from univl_fast.export.cli import main
    from univl_fast.runtime.backends import _cuda_devices, tensorrt_importable

    if tensorrt_importable() and _cuda_devices():
        pytest.skip("TensorRT and a GPU are present: the refusal path does not apply")
    rc = main(
        ["--checkpoint", str(random_tiny_checkpoint), "--out", str(tmp_path / "e"), "--tensorrt"]
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert "cannot build TensorRT plans here" in err
    assert ("pip install univl-fast[gpu]" in err) or ("no CUDA device" in err)
    assert not (tmp_path / "e" / "manifest.json").exists()


@pytest.mark.needs_tensorrt
def test_tensorrt_plans_built_and_listed(tiny_engine_trt):
    m = load_manifest(tiny_engine_trt)
    assert set(m["tensorrt_plans"]) == {"text", "image"}


@pytest.mark.slow
def test_vit_b32_text_and_image_fp32_parity():
    """The paper's backbone (random weights): fp32 graphs within the 0.9999 contract."""
    import onnxruntime as ort
    import open_clip as oc

    from univl_fast.export import onnx_export, optimize, verify
    from univl_fast.export.samples import builtin_images, builtin_sample
    from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig
    from univl_fast.runtime.tokenizer import ClipTokenizer

    clip = oc.create_model("ViT-B-32").eval()
    tok = ClipTokenizer(oc.tokenizer.default_bpe())
    texts = builtin_sample().texts
    proto, spec = onnx_export.export_text(clip, 77, 512, 18)
    proto, stats = optimize.fuse_transformer(proto, spec.num_heads, spec.hidden_size)
    # 12 blocks: 24 residual adds, the last block's MLP residual runs on the pooled row only
    assert stats.get("SkipLayerNormalization") == 23 and stats.get("Attention") == 12
    ops = [n.op_type for n in proto.graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 25
    p = verify.check_graph(
        proto.SerializeToString(),
        "text",
        verify.text_reference(clip, tok, texts),
        0.9999,
        tokenizer=tok,
        texts=texts,
    )
    assert p.passed, p
    pixels = ImagePreprocessor(PreprocessConfig(224))(builtin_images(3))
    iproto, ispec = onnx_export.export_image(clip, 224, 512, 18)
    p = verify.check_graph(
        iproto.SerializeToString(),
        "image",
        verify.image_reference(clip, pixels),
        0.9999,
        pixels=pixels,
    )
    assert p.passed, p
    assert ort.InferenceSession(proto.SerializeToString()).get_outputs()[0].shape[-1] == 512
