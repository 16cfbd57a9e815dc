"""UniVLDR: construction, encoding rules (Eq. 1-3), checkpoints and foreign weight files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from univl_fast.imageio import ImageDecodeError
from univl_fast.model import CheckpointError, ModelConfig, UniVLDR

TEXTS = ["what color is the roof of the old mill?", "", "a" * 400, "Ünïcode façade 東京"]


def _png(color, size=64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(random_tiny_checkpoint) -> UniVLDR:
    return UniVLDR.from_pretrained(random_tiny_checkpoint)


def test_tiny_config_is_what_the_benchmark_needs(tiny):
    c = tiny.config
    assert c.model_name == "univl-tiny"
    assert c.image_size == 64 and c.context_length == 77 and c.vocab_size == 49408
    # the paper's starting scale: 100 (tau = 0.01)
    assert tiny.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    assert ModelConfig.from_json(json.loads(json.dumps(c.to_json()))) == c


def test_same_seed_same_weights_other_seed_differs():
    a = UniVLDR.from_config("univl-tiny", seed=3).clip.state_dict()
    b = UniVLDR.from_config("univl-tiny", seed=3).clip.state_dict()
    c = UniVLDR.from_config("univl-tiny", seed=4).clip.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["token_embedding.weight"], c["token_embedding.weight"])


def test_text_encoding_unit_rows_and_trimmed_path_exact(tiny):
    q = tiny.encode_queries(TEXTS, batch_size=3)
    assert q.shape == (len(TEXTS), tiny.config.embed_dim) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(q, tiny.encode_text_docs(TEXTS, batch_size=3))
    # our padding-trimmed text tower == open_clip's full 77-token forward
    tok = tiny.tokenize(TEXTS)
    assert tok.shape == (len(TEXTS), 77) and tok.dtype == torch.long
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny.clip.encode_text(tok), dim=-1).numpy()
    np.testing.assert_allclose(q, ref, atol=2e-5)


def test_image_docs_are_sum_of_raw_embeddings_then_normalized(tiny, tmp_path):
    path = tmp_path / "blue.png"
    path.write_bytes(_png((0, 0, 255)))
    images = [_png((255, 0, 0)), str(path), Image.new("RGB", (80, 50), (0, 200, 0))]
    captions = ["a red square", "", "green"]
    d = tiny.encode_image_docs(images, captions, batch_size=2)
    assert d.shape == (3, tiny.config.embed_dim) and d.dtype == np.float32
    with torch.no_grad():
        from univl_fast.imageio import load_rgb

        px = torch.stack([tiny.preprocess(load_rgb(x)) for x in images])
        raw = tiny.clip.encode_image(px) + tiny.clip.encode_text(tiny.tokenize(captions))
        ref = torch.nn.functional.normalize(raw.double(), dim=-1).numpy()
    np.testing.assert_allclose(d, ref, atol=2e-5)
    # not the mean of normalized parts (the paper sums raw embeddings)
    with torch.no_grad():
        i_n = torch.nn.functional.normalize(tiny.clip.encode_image(px), dim=-1)
        t_n = torch.nn.functional.normalize(tiny.clip.encode_text(tiny.tokenize(captions)), dim=-1)
        other = torch.nn.functional.normalize(i_n + t_n, dim=-1).numpy()
    assert np.abs(other - d).max() > 1e-4


def test_undecodable_image_is_named(tiny):
    with pytest.raises(ImageDecodeError, match="#1"):
        tiny.encode_image_docs([_png((1, 2, 3)), b"not an image"], ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        tiny.encode_image_docs([_png((1, 2, 3))] * 2, ["a"])


def test_save_pretrained_roundtrip(tiny, tmp_path):
    out = tiny.save_pretrained(tmp_path / "ck", train_config={"lr": 1e-3}, metrics={"MRR@10": 0.5})
    names = sorted(p.name for p in out.iterdir())
    assert names == ["metrics.json", "model.safetensors", "model_config.json", "train_config.json"]
    back = UniVLDR.from_pretrained(out)
    np.testing.assert_array_equal(back.encode_queries(TEXTS), tiny.encode_queries(TEXTS))
    raw = (out / "model.safetensors").read_bytes()
    assert b"pickle" not in raw[:2000]


def test_truncated_and_missing_checkpoints_refused(tiny, tmp_path):
    out = tiny.save_pretrained(tmp_path / "ck")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model.safetensors.*(corrupt|truncated)"):
        UniVLDR.from_pretrained(out)
    with pytest.raises(CheckpointError, match="file not found"):
        UniVLDR.from_pretrained(tmp_path / "nope.pt", model_name="univl-tiny")
    with pytest.raises(CheckpointError, match="--model"):
        torch.save(tiny.clip.state_dict(), tmp_path / "raw.pt")
        UniVLDR.from_pretrained(tmp_path / "raw.pt")
    # a truncated torch.save file
    data = (tmp_path / "raw.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*(corrupt|truncated)"):
        UniVLDR.from_pretrained(tmp_path / "cut.pt", model_name="univl-tiny")


def test_different_architecture_refused_with_names(tiny, tmp_path):
    torch.save(tiny.clip.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError) as err:
        UniVLDR.from_pretrained(tmp_path / "tiny.pt", model_name="ViT-B-32")
    msg = str(err.value)
    assert "ViT-B-32" in msg and "tiny.pt" in msg and "shape" in msg


def test_wrapped_and_prefixed_state_dicts_load(tiny, tmp_path):
    sd = tiny.clip.state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    variants = {
        "paper.pt": {"model": half, "epoch": 3},  # the paper's released checkpoints
        "openclip.pt": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1},
    }
    ref = tiny.encode_queries(TEXTS)
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        m = UniVLDR.from_pretrained(tmp_path / name, model_name="univl-tiny")
        np.testing.assert_allclose(
            m.encode_queries(TEXTS), ref, atol=5e-3 if "paper" in name else 0
        )


def test_pickled_objects_are_refused(tmp_path):
    import argparse  # any non-tensor class: weights_only loading must refuse it

    torch.save(
        {"state_dict": {"x": torch.zeros(1)}, "obj": argparse.Namespace(a=1)}, tmp_path / "evil.pt"
    )
    with pytest.raises(CheckpointError, match="evil.pt"):
        UniVLDR.from_pretrained(tmp_path / "evil.pt", model_name="univl-tiny")


@pytest.fixture(scope="module")
def openai_vit_b32(tmp_path_factory):
    """A random-weight ViT-B-32 (QuickGELU, as OpenAI's) saved as OpenAI does: torch.save of
    the state dict with fp16 weights and the extra input_resolution/context_length/vocab_size."""
    import open_clip
    from open_clip.model import convert_weights_to_lp

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    convert_weights_to_lp(ref, dtype=torch.float16)  # OpenAI's checkpoints are fp16
    sd = ref.state_dict()
    sd["input_resolution"] = torch.tensor(224)
    sd["context_length"] = torch.tensor(77)
    sd["vocab_size"] = torch.tensor(49408)
    path = tmp_path_factory.mktemp("openai") / "ViT-B-32.pt"
    torch.save(sd, path)
    return path


def test_openai_state_dict_matches_open_clip(openai_vit_b32):
    import open_clip

    ours = UniVLDR.from_pretrained(openai_vit_b32, model_name="ViT-B-32-quickgelu")
    # open_clip's own OpenAI loader (file path: nothing is downloaded)
    theirs = open_clip.load_openai_model(str(openai_vit_b32), precision="fp32", device="cpu").eval()
    texts = ["a photo of a red barn", "who designed the eiffel tower?"]
    images = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (64, 64), (0, 90, 250))]
    captions = ["red barn", "blue sky"]
    with torch.no_grad():
        t_ref = theirs.encode_text(
            open_clip.get_tokenizer("ViT-B-32-quickgelu")(texts), normalize=True
        )
        _, _, pre = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
        px = torch.stack([pre(im) for im in images])
        c_raw = theirs.encode_text(open_clip.get_tokenizer("ViT-B-32-quickgelu")(captions))
        d_ref = torch.nn.functional.normalize(theirs.encode_image(px) + c_raw, dim=-1)
    np.testing.assert_allclose(ours.encode_queries(texts), t_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.encode_image_docs(images, captions), d_ref.numpy(), atol=1e-5)


def test_openai_jit_archive_loads(tiny, tmp_path):
    """OpenAI also ships TorchScript archives; we keep only their state_dict."""

    class Holder(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            for k, v in clip.named_children():
                self.add_module(k, v)
            self.positional_embedding = clip.positional_embedding
            self.text_projection = clip.text_projection
            self.logit_scale = clip.logit_scale
            self.register_buffer("input_resolution", torch.tensor(64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    scripted = torch.jit.script(Holder(UniVLDR.from_config("univl-tiny", seed=0).clip))
    path = tmp_path / "jit.pt"
    torch.jit.save(scripted, str(path))
    assert zipfile.is_zipfile(path)
    m = UniVLDR.from_pretrained(path, model_name="univl-tiny")
    np.testing.assert_array_equal(m.encode_queries(TEXTS), tiny.encode_queries(TEXTS))
