"""TensorRT plans on first contact (issue 22, item 6), with a fake tensorrt / cuda-python:
batches split to the plan's profile, plans bound to the GPU model and TensorRT version that
built them (recorded; elsewhere ONNX Runtime with a warning), fp16 without
``BuilderFlag.FP16`` where TensorRT has none. The real GPU path is unverified."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from tests.gpu_fakes import (
    FakeTensorRT,
    build_fake_libcuda,
    fake_plan_bytes,
    fake_plan_weights,
    install_fake_tensorrt,
)
from univl_fast.runtime import backends
from univl_fast.utils import cuda_driver
from univl_fast.utils.io import atomic_write_json


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """A GPU (fake driver, 1 device "Fake GPU 0", sm 8.9) with the fake TensorRT 10.9."""
    lib = build_fake_libcuda(tmp_path)
    monkeypatch.setattr(cuda_driver, "LIBCUDA_NAMES", (str(lib),))
    monkeypatch.setenv("FAKE_CUDA_DEVICES", "1")
    cuda_driver.driver_info.cache_clear()
    fake = FakeTensorRT()
    fake.cudart = install_fake_tensorrt(monkeypatch, fake)
    backends._PLAN_ENGINES.clear()
    yield fake
    backends._PLAN_ENGINES.clear()
    cuda_driver.driver_info.cache_clear()


def test_batches_beyond_the_plan_profile_are_split(fake_trt, tmp_path):
    plan = tmp_path / "t.plan"
    plan.write_bytes(fake_plan_bytes(max_batch=4, d_in=6, d_out=3))
    tower = backends.TensorRTTower(plan, "x", "y")
    assert tower.max_batch == 4
    x = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    out = tower.run(x)  # the old runner raised: "outside the plan's profile"
    np.testing.assert_allclose(out, x @ fake_plan_weights(6, 3), rtol=1e-6)
    assert fake_trt.engines[-1].runs == [4, 4, 2]
    tower.close()
    assert fake_trt.cudart.live == {}  # every device buffer given back


def test_undeserializable_plan_is_a_backend_problem(fake_trt, tmp_path):
    plan = tmp_path / "t.plan"
    plan.write_bytes(b"a plan of another TensorRT version")
    with pytest.raises(backends.PlanUnusable, match="could not deserialize"):
        backends.TensorRTTower(plan, "x", "y")
    why = backends.tensorrt_plans_problem({plan: {"kind": "tensorrt-plan"}})
    assert "could not deserialize" in why


def test_plan_mismatch_names_gpu_and_tensorrt(fake_trt):
    here = backends.plan_provenance()
    assert here == {"gpu": "Fake GPU 0", "compute_capability": "8.9", "tensorrt": "10.9.0.34"}
    assert backends.plan_mismatch(dict(here)) is None
    assert backends.plan_mismatch({}) is None  # not recorded: TensorRT's own check decides
    why = backends.plan_mismatch({"gpu": "NVIDIA A100-SXM4-80GB", "tensorrt": "10.3.0"})
    assert "GPU 'NVIDIA A100-SXM4-80GB' built it, this host has 'Fake GPU 0'" in why
    assert "TensorRT '10.3.0' built it, this host has '10.9.0.34'" in why


def _engine_with_plans(src, dst, entry_extra: dict, plan_bytes: bytes):
    from univl_fast.export.manifest import file_entry
    from univl_fast.runtime.manifest import load_manifest

    shutil.copytree(src, dst)
    m = load_manifest(dst)
    m["tensorrt_plans"] = {}
    for tower, d_in in (("text", m["context_length"]), ("image", 3 * 4)):
        rel = f"{tower}_fp16.plan"
        (dst / rel).write_bytes(plan_bytes or fake_plan_bytes(64, d_in, m["embed_dim"]))
        m["files"][rel] = file_entry(
            dst, rel, kind="tensorrt-plan", tower=tower, input="x", output="y", **entry_extra
        )
        m["tensorrt_plans"][tower] = {"fp16": rel}
    atomic_write_json(dst / "manifest.json", m)
    return dst


@pytest.mark.parametrize(
    "entry_extra, plan_bytes, why",
    [
        ({"gpu": "NVIDIA H100 80GB HBM3", "tensorrt": "10.9.0.34"}, b"", "GPU 'NVIDIA H100"),
        ({"gpu": "Fake GPU 0", "tensorrt": "10.0.1"}, b"", "TensorRT '10.0.1'"),
        ({}, b"garbage", "could not deserialize"),
    ],
    ids=["other-gpu", "other-tensorrt", "not-deserializable"],
)
def test_unusable_plans_fall_back_to_onnxruntime(
    fake_trt, tmp_path, tiny_engine, caplog, entry_extra, plan_bytes, why
):
    from univl_fast.runtime import Encoder

    eng = _engine_with_plans(tiny_engine, tmp_path / "eng", entry_extra, plan_bytes)
    with caplog.at_level(logging.WARNING, logger="univl_fast.runtime.encoder"):
        enc = Encoder(eng, backend="tensorrt")
    assert enc.backend == "onnxruntime-cpu"
    assert "TensorRT plans not used, running on ONNX Runtime instead" in caplog.text
    assert why in caplog.text
    q = enc.encode_queries(["a lighthouse"])
    assert q.shape == (1, enc.dim) and np.isfinite(q).all()


def test_matching_plans_are_used(fake_trt, tmp_path, tiny_engine, monkeypatch):
    from univl_fast.runtime import Encoder

    # provenance only: the fake plans compute nothing the load-time parity check could pass
    monkeypatch.setenv("UNIVL_FAST_VERIFY_ON_LOAD", "never")
    here = backends.plan_provenance()
    eng = _engine_with_plans(tiny_engine, tmp_path / "eng", here, b"")
    enc = Encoder(eng, backend="tensorrt", text_runtime="onnxruntime")
    assert enc.backend == "tensorrt"
    assert len(fake_trt.engines) == 2  # deserialized once each: the check's copy was reused


# ------------------------------------------------------------------ building plans


def _standard_graph(tiny_engine):
    from univl_fast.runtime.manifest import load_manifest

    m = load_manifest(tiny_engine)
    return m["tensorrt_graphs"]["text"], m


def test_built_plan_records_gpu_and_tensorrt(fake_trt, tmp_path, tiny_engine):
    pytest.importorskip("onnx")
    from univl_fast.export.tensorrt import build_tower_plan

    rel_src, m = _standard_graph(tiny_engine)
    shutil.copy(tiny_engine / rel_src, tmp_path / rel_src)
    rel, entry = build_tower_plan(tmp_path, rel_src, "text", m["context_length"], 32, max_batch=8)
    assert (tmp_path / rel).is_file()
    assert entry["gpu"] == "Fake GPU 0" and entry["compute_capability"] == "8.9"
    assert entry["tensorrt"] == "10.9.0.34"
    assert entry["profile"]["max"][0] == 8
    assert fake_trt.configs[-1]["flags"] == ["FP16"]  # TensorRT 10: the builder flag
    assert fake_trt.networks[-1]["flags"] == 0


def test_fp16_without_the_builder_flag_uses_a_strongly_typed_fp16_graph(
    monkeypatch, tmp_path, tiny_engine
):
    onnx = pytest.importorskip("onnx")
    lib = build_fake_libcuda(tmp_path)
    monkeypatch.setattr(cuda_driver, "LIBCUDA_NAMES", (str(lib),))
    monkeypatch.setenv("FAKE_CUDA_DEVICES", "1")
    cuda_driver.driver_info.cache_clear()
    fake = FakeTensorRT(version="11.0.0", fp16_flag=False)  # TensorRT 11: no BuilderFlag.FP16
    install_fake_tensorrt(monkeypatch, fake)
    from univl_fast.export.tensorrt import build_plan

    rel_src, m = _standard_graph(tiny_engine)
    L = m["context_length"]
    build_plan(tiny_engine / rel_src, "x", (1, 1), (2, L), (4, L))
    cuda_driver.driver_info.cache_clear()
    assert fake.configs[-1]["flags"] == []  # no FP16 flag asked of a TensorRT without it
    assert fake.networks[-1]["flags"] == 1 << 5  # STRONGLY_TYPED
    parsed = onnx.load_model_from_string(fake.parsed[-1])
    kinds = {init.data_type for init in parsed.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds


@pytest.mark.parametrize("tower", ["text", "image"])
def test_fp16_graph_keeps_io_types_and_parity(tiny_engine, tower):
    """The fp16 copy the strongly-typed path parses: type-checks, keeps float32 inputs and
    outputs, and runs (ONNX Runtime CPU here) within the export's fp16 parity limits."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from univl_fast.export.config import ExportConfig
    from univl_fast.export.fp16_graph import to_fp16
    from univl_fast.runtime.manifest import load_manifest

    m = load_manifest(tiny_engine)
    src = onnx.load(str(tiny_engine / m["tensorrt_graphs"][tower]))
    half = to_fp16(src)
    onnx.shape_inference.infer_shapes(half, check_type=True, strict_mode=True)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [
        i.type.tensor_type.elem_type for i in src.graph.input
    ]
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rng = np.random.default_rng(0)
    if tower == "text":
        x = rng.integers(1, 400, (4, m["context_length"])).astype(np.int64)
    else:
        s = m["preprocess"]["image_size"]
        x = rng.standard_normal((4, 3, s, s)).astype(np.float32)

    def run(model):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)

    a, b = run(src), run(half)
    limits = ExportConfig().limits("fp16")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert cos.min() >= limits.min_cosine and rel.max() <= limits.max_rel_l2, (cos, rel)
