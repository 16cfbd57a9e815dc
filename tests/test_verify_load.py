"""The engine knows where it was verified and checks where it runs (univl_fast.runtime.verify_load).

Kernel classes other than this host's are simulated here (a patched CPU probe, ONNX Runtime or
native outputs scaled the way saturating kernels distort them, a fake GPU provider); the real
other host, an AVX2 CPU under qemu, is in tests/test_isa_hosts.py.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from tests.engine_dirs import engine_copy
from univl_fast.runtime import Encoder, EngineError, kernel_class, parity, verify_load
from univl_fast.runtime.backends import OrtTower
from univl_fast.runtime.native_text import NativeTower
from univl_fast.utils.env import EnvVarError
from univl_fast.utils.io import read_json


@pytest.fixture
def avx2_host(monkeypatch):
    """This host's ONNX Runtime int8 path reported as another than the export saw: AVX2 (or
    AVX-512 VNNI where this host is an AVX2 one). Returns the reported path."""
    from univl_fast.runtime import native_text

    other = "avx2" if kernel_class.int8_path() != "avx2" else "avx512_vnni"
    monkeypatch.setattr(kernel_class, "int8_path", lambda feats=None: other)
    # as on an AVX2 CPU, auto does not pick the native towers (no VNNI kernel)
    monkeypatch.setattr(native_text, "fast_native_available", lambda: (False, "simulated"))
    return other


def scale_runs(monkeypatch, cls, pick, factor=1.1):
    """Outputs of ``cls.run`` scaled by ``factor`` where ``pick(tower)``: the scale error of a
    saturating kernel, which the norm-ratio limit refuses."""
    real = cls.run

    def run(self, x):
        out = real(self, x)
        return out * np.float32(factor) if pick(self) else out

    monkeypatch.setattr(cls, "run", run)


def int8_graph(tower) -> bool:
    return str(tower.path).endswith("_int8.onnx")


def test_export_records_kernel_class_and_reference_inputs(tiny_engine):
    m = read_json(tiny_engine / "manifest.json")
    here = kernel_class.onnxruntime_class("int8")
    for tower in ("text", "image"):
        (recorded,) = m["parity"][tower]["int8"]["measured_on"]
        assert kernel_class.same_class(recorded, here), recorded
        assert recorded["simd"] == kernel_class.int8_path()
        (fp32,) = m["parity"][tower]["fp32"]["measured_on"]
        assert fp32["simd"] == kernel_class.fp32_path()
    if m["native"]["text"]:
        (native,) = m["parity"]["text"]["int8-native"]["measured_on"]
        assert native["runtime"] == "native" and native["isa"]
    rel = m["reference_inputs"]
    assert m["files"][rel]["sha256"] and m["files"][rel]["size"] < 2_000_000
    refs = verify_load.load_references(tiny_engine, m)
    assert len(refs.texts) == verify_load.REFERENCE_TEXTS
    assert refs.pixels.shape[0] == len(refs.captions) == verify_load.REFERENCE_IMAGES
    # the stored outputs are PyTorch's on exactly the stored inputs: the fp32 graphs agree
    enc = Encoder(tiny_engine, precision="fp32")
    limits = parity.Limits(parity.FP32_MIN_COSINE, parity.FP32_MAX_REL_L2, parity.FP32_MAX_REL_L2)
    results, combined = verify_load.run_check(
        enc._towers, {"text": "fp32", "image": "fp32"}, "fp32", refs, enc.tokenizer, m, limits
    )
    assert results["text"].passed and results["image"].passed and combined.passed, (
        results,
        combined,
    )


def test_same_kernel_class_loads_without_a_recheck(tiny_engine):
    enc = Encoder(tiny_engine)
    v = enc.verification
    assert v["mode"] == "auto" and v["seconds"] == 0 and not v["fallbacks"]
    assert {c["status"] for c in v["towers"].values()} == {"same-class"}
    assert v["towers"]["text"]["key"] == enc.parity_key("text")


def test_always_rechecks_and_passes_here(tiny_engine, monkeypatch):
    monkeypatch.setenv("UNIVL_FAST_VERIFY_ON_LOAD", "always")
    enc = Encoder(tiny_engine)
    v = enc.verification
    assert v["mode"] == "always" and v["seconds"] > 0
    for c in v["towers"].values():
        assert c["status"] == "re-checked" and c["parity"]["passed"], c
        assert c["parity"]["max_rel_l2"] <= c["parity"]["max_rel_l2_allowed"]
    assert v["combined"]["passed"]


def test_bad_knob_value_is_refused(tiny_engine, monkeypatch):
    monkeypatch.setenv("UNIVL_FAST_VERIFY_ON_LOAD", "sometimes")
    with pytest.raises(EnvVarError, match="UNIVL_FAST_VERIFY_ON_LOAD"):
        Encoder(tiny_engine)


def test_other_int8_path_is_rechecked(tiny_engine, avx2_host):
    enc = Encoder(tiny_engine)
    c = enc.verification["towers"]["text"]
    assert c["key"] == "int8" and c["host_class"]["simd"] == avx2_host
    assert c["measured_on"][0]["simd"] != avx2_host
    assert c["status"] == "re-checked" and avx2_host in c["reason"]
    assert enc.precision == "int8" and enc.text_runtime == "onnxruntime"


def test_failing_int8_graphs_fall_back_to_the_native_towers(
    tiny_engine, avx2_host, monkeypatch, caplog
):
    m = read_json(tiny_engine / "manifest.json")
    if not (m["native"]["text"] and m["native"].get("image")):
        pytest.skip("this host's export wrote no native towers (reason in the manifest)")
    scale_runs(monkeypatch, OrtTower, int8_graph)
    with caplog.at_level(logging.WARNING, logger="univl_fast.runtime.verify_load"):
        enc = Encoder(tiny_engine)
    assert enc.precision == "int8"
    assert (enc.text_runtime, enc.image_runtime) == ("native", "native")
    v = enc.verification
    assert set(v["failed"]) == {"onnxruntime-cpu/text/int8", "onnxruntime-cpu/image/int8"}
    (fb,) = v["fallbacks"]
    assert "scale error" in fb["why"] and "text native, image native" in fb["change"]
    assert "failed the load-time parity check" in caplog.text
    assert "load-time parity check" in enc.runtime_reasons["text"]
    q = enc.encode_queries(["a red car"])
    assert q.shape == (1, enc.dim) and np.isfinite(q).all()


def test_failing_int8_everywhere_falls_back_to_fp32(tiny_engine, avx2_host, monkeypatch):
    monkeypatch.setattr(kernel_class, "native_class", lambda isa: {"runtime": "native", "isa": "x"})
    scale_runs(monkeypatch, OrtTower, int8_graph)
    scale_runs(monkeypatch, NativeTower, lambda t: True)
    enc = Encoder(tiny_engine)
    assert enc.precision == "fp32"
    assert (enc.text_runtime, enc.image_runtime) == ("onnxruntime", "onnxruntime")
    assert enc.verification["towers"]["text"]["status"] == "same-class"  # fp32 path unchanged
    assert "onnxruntime-cpu/text/int8" in enc.verification["failed"]
    assert enc.info()["verification"] is enc.verification


def test_explicit_precision_that_fails_here_raises(tiny_engine, avx2_host, monkeypatch):
    scale_runs(monkeypatch, OrtTower, int8_graph)
    with pytest.raises(EngineError, match="asked for by name"):
        Encoder(tiny_engine, precision="int8", text_runtime="onnxruntime")


def test_never_skips_the_check(tiny_engine, avx2_host, monkeypatch):
    scale_runs(monkeypatch, OrtTower, int8_graph)
    enc = Encoder(tiny_engine, text_runtime="onnxruntime", verify_on_load="never")
    assert enc.text_runtime == "onnxruntime" and enc.precision == "int8"
    assert {c["status"] for c in enc.verification["towers"].values()} == {"skipped"}


def test_old_engine_without_references_loads_as_before(tiny_engine, tmp_path, avx2_host, caplog):
    def strip(m):
        m.pop("reference_inputs")
        m["files"].pop(verify_load.REFERENCE_FILE)
        for by_key in m["parity"].values():
            for p in by_key.values():
                p.pop("measured_on", None)

    old = engine_copy(tiny_engine, tmp_path / "old", strip)
    with caplog.at_level(logging.WARNING, logger="univl_fast.runtime.verify_load"):
        enc = Encoder(old)
    today = Encoder(tiny_engine, verify_on_load="never")
    assert (enc.precision, enc.text_runtime, enc.image_runtime) == (
        today.precision,
        today.text_runtime,
        today.image_runtime,
    )
    assert {c["status"] for c in enc.verification["towers"].values()} == {"unchecked"}
    assert "cannot be re-checked" in caplog.text


def test_engine_exported_on_avx2_is_rechecked_here_and_kept(tiny_engine, tmp_path):
    """The reverse direction (simulated): an engine whose int8 graphs were measured on an AVX2
    host, loaded on this one: another class, so re-checked; it passes here, int8 stays."""

    def avx2(m):
        for tower in ("text", "image"):
            for cls in m["parity"][tower]["int8"]["measured_on"]:
                cls["simd"] = "avx2"

    eng = engine_copy(tiny_engine, tmp_path / "avx2", avx2)
    enc = Encoder(eng, text_runtime="onnxruntime", image_runtime="onnxruntime")
    assert enc.precision == "int8"
    for c in enc.verification["towers"].values():
        assert c["status"] == "re-checked" and c["parity"]["passed"]


class FakeGpuTower:
    """An ONNX graph "on a CUDA provider": run on the CPU, providers reported as CUDA's, with
    outputs scaled by ``factor`` (1.0: a provider that computes right)."""

    factor = 1.0

    def __init__(self, path, backend, threads=None):
        self._cpu = OrtTower(path, "onnxruntime-cpu", threads)
        self.path = str(path)
        self.session = SimpleNamespace(
            get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
        )

    def run(self, x):
        return self._cpu.run(x) * np.float32(self.factor)


@pytest.fixture
def fake_cuda(monkeypatch):
    from univl_fast.runtime import encoder as encoder_mod

    real_open = encoder_mod.open_tower

    def open_tower(path, backend, io_names=None, threads=None):
        if backend == "onnxruntime-cuda":
            return FakeGpuTower(path, backend, threads)
        return real_open(path, backend, io_names, threads)

    monkeypatch.setattr(
        encoder_mod, "resolve_backend", lambda name, has_plans=False: "onnxruntime-cuda"
    )
    monkeypatch.setattr(encoder_mod, "open_tower", open_tower)
    return FakeGpuTower


def test_gpu_provider_is_rechecked_on_the_provider_that_runs(tiny_engine, fake_cuda):
    enc = Encoder(tiny_engine)
    assert enc.backend == "onnxruntime-cuda"
    for c in enc.verification["towers"].values():
        assert c["host_class"]["provider"] == "CUDAExecutionProvider"
        assert c["status"] == "re-checked" and c["parity"]["passed"], c


def test_gpu_provider_that_misses_parity_falls_back_to_the_cpu(tiny_engine, fake_cuda, monkeypatch):
    monkeypatch.setattr(fake_cuda, "factor", 1.1)
    enc = Encoder(tiny_engine)
    assert enc.backend == "onnxruntime-cpu"
    v = enc.verification
    assert {"onnxruntime-cuda/text/fp32", "onnxruntime-cuda/text/int8"} <= set(v["failed"])
    assert v["fallbacks"][-1]["change"].endswith(f"({enc.describe_choice().split('(')[1]}")
    with pytest.raises(EngineError, match="asked for by name"):
        Encoder(tiny_engine, precision="fp32")


def test_info_shows_the_check(tiny_engine, capsys):
    from univl_fast.info import main
    from univl_fast.search.engine import Engine
    from univl_fast.serve.config import ServeConfig
    from univl_fast.serve.info import service_info

    enc = Encoder(tiny_engine)
    eng = Engine(enc)
    try:
        info = eng.info()
        assert info["verification"]["towers"]["text"]["status"] == "same-class"
        assert info["precision"] == enc.precision
        served = service_info(eng, ServeConfig())["verification"]  # serve asks the engine
        assert served["towers"]["image"]["status"] == "same-class"
    finally:
        eng.close()
    assert main(["--engine", str(tiny_engine), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"]["verification"]["mode"] == "auto"
    assert main(["--brief", "--engine", str(tiny_engine)]) == 0
    text = capsys.readouterr().out
    assert "load-time check (auto)" in text and "same-class" in text


def test_tensorrt_plans_that_miss_parity_fall_back_to_onnxruntime(
    tiny_engine, tmp_path, monkeypatch
):
    """Fake plans (the standard-op fp32 graphs, run by ONNX Runtime) recorded as measured on
    another TensorRT version; here they compute 1.1x off: the engine falls back to the ONNX
    graphs."""
    from univl_fast.runtime import encoder as encoder_mod

    def with_plans(m):
        m["tensorrt_plans"] = {t: {"fp16": f"{t}_fp32.trt.onnx"} for t in ("text", "image")}
        for t in ("text", "image"):
            m["files"][f"{t}_fp32.trt.onnx"].update(input="x", output="y")
        for part in ("text", "image", "combined"):
            p = dict(m["parity"][part]["fp32"])
            p["measured_on"] = [kernel_class.tensorrt_class("0.0-elsewhere")]
            m["parity"][part]["tensorrt-fp16"] = p

    eng = engine_copy(tiny_engine, tmp_path / "trt", with_plans)
    real_resolve, real_open = encoder_mod.resolve_backend, encoder_mod.open_tower

    def resolve_backend(name, has_plans=False):
        return "tensorrt" if name is None and has_plans else real_resolve(name, has_plans)

    def open_tower(path, backend, io_names=None, threads=None):
        if backend != "tensorrt":
            return real_open(path, backend, io_names, threads)
        tower = OrtTower(path)
        monkeypatch.setattr(tower, "run", lambda x, r=tower.run: r(x) * np.float32(1.1))
        return tower

    monkeypatch.setattr(encoder_mod, "resolve_backend", resolve_backend)
    monkeypatch.setattr(encoder_mod, "open_tower", open_tower)
    # the fake plans deserialize here (the provenance check would refuse them: no TensorRT)
    monkeypatch.setattr(encoder_mod, "tensorrt_plans_problem", lambda plans: None)
    enc = Encoder(eng)
    assert enc.backend == "onnxruntime-cpu"
    v = enc.verification
    assert v["fallbacks"][0]["from"].startswith("fp16 on tensorrt")
    assert {"tensorrt/text/tensorrt-fp16", "tensorrt/image/tensorrt-fp16"} <= set(v["failed"])


def test_gpu_provider_fp16_is_rechecked_and_refused_when_off(
    tiny_engine_all, fake_cuda, monkeypatch
):
    """fp16 too (issue 22 item 5): auto picks the fp16 graphs on a GPU provider; they were
    measured on the CPU provider at export, so they are re-checked on the provider that runs;
    a provider whose fp16 is off falls back to fp32 on the same provider when that passes."""
    m = read_json(tiny_engine_all / "manifest.json")
    assert m["parity"]["text"]["fp16"]["passed"], m["parity"]["text"]["fp16"]
    enc = Encoder(tiny_engine_all)
    assert (enc.backend, enc.precision) == ("onnxruntime-cuda", "fp16")
    assert enc.verification["towers"]["text"]["status"] == "re-checked"

    real_run = fake_cuda.run

    def run(self, x):  # fp16 kernels off by 1.1x on this "GPU"; fp32 right
        out = real_run(self, x)
        return out * np.float32(1.1) if self.path.endswith("_fp16.onnx") else out

    monkeypatch.setattr(fake_cuda, "run", run)
    enc = Encoder(tiny_engine_all)
    assert (enc.backend, enc.precision) == ("onnxruntime-cuda", "fp32")
    assert "onnxruntime-cuda/text/fp16" in enc.verification["failed"]
