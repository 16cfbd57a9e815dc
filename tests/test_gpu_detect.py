"""GPU detection asks the CUDA driver and ONNX Runtime, not how ``_C`` was built (issue 22,
items 1 and 4). Run here with a fake ``libcuda`` and a fake onnxruntime; the real GPU path is
unverified."""

from __future__ import annotations

import logging

import pytest

from tests.gpu_fakes import build_fake_libcuda, fake_onnxruntime
from univl_fast.runtime import backends
from univl_fast.utils import cuda_driver


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory):
    return build_fake_libcuda(tmp_path_factory.mktemp("fake_cuda"))


@pytest.fixture
def driver(monkeypatch, fake_lib):
    """The fake driver library in place of libcuda; detection caches cleared around."""
    monkeypatch.setattr(cuda_driver, "LIBCUDA_NAMES", (str(fake_lib),))
    cuda_driver.driver_info.cache_clear()
    backends.provider_binds.cache_clear()
    yield monkeypatch
    cuda_driver.driver_info.cache_clear()
    backends.provider_binds.cache_clear()


def test_driver_counts_devices_without_a_cuda_core(driver):
    driver.setenv("FAKE_CUDA_DEVICES", "2")
    info = cuda_driver.driver_info()
    assert info.devices == 2
    assert info.names == ("Fake GPU 0", "Fake GPU 1")
    assert info.capabilities == ("8.9", "8.9")
    assert info.driver_cuda == "12.4"
    assert info.error is None
    # the backends' view: on the old code this asked _C.cuda_device_count() (0 here)
    assert backends._cuda_devices() == 2


def test_driver_error_reads_as_no_device(driver):
    driver.setenv("FAKE_CUDA_DEVICES", "2")
    driver.setenv("FAKE_CUDA_INIT_RC", "100")  # CUDA_ERROR_NO_DEVICE
    info = cuda_driver.driver_info()
    assert info.devices == 0 and "100" in info.error


def test_missing_library_or_symbols_never_raise(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_driver, "LIBCUDA_NAMES", (str(tmp_path / "nope.so"),))
    info = cuda_driver.probe()
    assert info.devices == 0 and "no CUDA driver library" in info.error
    empty = build_fake_libcuda(tmp_path, "int unrelated(void) { return 0; }\n")
    info = cuda_driver.probe((str(empty),))
    assert info.devices == 0 and "failed" in info.error


def test_isolated_probe_runs_in_a_subprocess(driver):
    driver.setenv("FAKE_CUDA_DEVICES", "3")
    info = cuda_driver.driver_info(isolated=True)
    assert info.devices == 3 and info.names[2] == "Fake GPU 2"


def test_ort_cuda_picked_when_driver_and_provider_agree(driver):
    driver.setenv("FAKE_CUDA_DEVICES", "1")
    ort = fake_onnxruntime(
        ["CUDAExecutionProvider", "CPUExecutionProvider"], {"CUDAExecutionProvider"}
    )
    driver.setattr(backends, "import_onnxruntime", lambda: ort)
    assert backends.available_backends() == ["onnxruntime-cuda", "onnxruntime-cpu"]
    assert backends.resolve_backend("cuda") == "onnxruntime-cuda"
    tower = backends.OrtTower("graph.onnx", "onnxruntime-cuda")
    assert tower.providers[0] == "CUDAExecutionProvider"


def test_ort_cuda_that_falls_back_to_cpu_is_refused(driver, caplog):
    """onnxruntime-gpu lists CUDA but binds only the CPU (cuDNN missing): auto must not pick
    it, asking for it by name must say why, and a session that fell back must not run."""
    driver.setenv("FAKE_CUDA_DEVICES", "1")
    ort = fake_onnxruntime(["CUDAExecutionProvider", "CPUExecutionProvider"], set())
    driver.setattr(backends, "import_onnxruntime", lambda: ort)
    with caplog.at_level(logging.WARNING, logger="univl_fast.runtime.backends"):
        assert backends.available_backends() == ["onnxruntime-cpu"]
    assert "did not bind CUDAExecutionProvider" in caplog.text
    with pytest.raises(backends.BackendUnavailable, match="cuDNN"):
        backends.resolve_backend("onnxruntime-cuda")
    with pytest.raises(backends.ProviderNotBound, match="graph.onnx.*CPUExecutionProvider"):
        backends.OrtTower("graph.onnx", "onnxruntime-cuda")


def test_no_device_named_in_the_refusal(driver):
    driver.setenv("FAKE_CUDA_DEVICES", "0")
    ort = fake_onnxruntime(
        ["CUDAExecutionProvider", "CPUExecutionProvider"], {"CUDAExecutionProvider"}
    )
    driver.setattr(backends, "import_onnxruntime", lambda: ort)
    assert backends.available_backends() == ["onnxruntime-cpu"]
    with pytest.raises(backends.BackendUnavailable, match="no CUDA device is visible"):
        backends.resolve_backend("cuda")


def test_probe_graph_opens_on_the_real_cpu_provider():
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    s = ort.InferenceSession(backends._probe_model_bytes(), providers=["CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    x = np.array([3.5], dtype=np.float32)
    assert s.run(None, {"x": x})[0].tolist() == [3.5]


def test_info_reports_the_driver_s_gpus(driver):
    from univl_fast import info as info_mod

    driver.setenv("FAKE_CUDA_DEVICES", "1")
    info = info_mod.collect()
    assert info["cuda_devices"] == 1
    assert info["cuda_driver"]["names"] == ["Fake GPU 0"]
    line = info_mod.brief_lines(info)[-1]
    assert line.startswith("cuda devices: 1 (Fake GPU 0; driver supports CUDA 12.4")


# ------------------------------------------------------------------ on a GPU host (gpu_check)


@pytest.mark.needs_cuda
def test_real_driver_and_onnxruntime_cuda_agree():
    """The driver names the GPU, and where onnxruntime-gpu is installed its CUDA provider
    really binds (the CUDA / cuDNN libraries of the [gpu-*] extra are found)."""
    cuda_driver.driver_info.cache_clear()
    backends.provider_binds.cache_clear()
    info = cuda_driver.driver_info()
    assert info.devices > 0 and info.names[0] and info.capabilities[0]
    if "CUDAExecutionProvider" not in backends._ort_providers():
        pytest.skip("onnxruntime-gpu is not installed in this environment")
    ok, why = backends.provider_binds("CUDAExecutionProvider")
    assert ok, why
    assert backends.available_backends()[0] in ("onnxruntime-cuda", "tensorrt")


@pytest.mark.needs_tensorrt
def test_real_plan_provenance():
    here = backends.plan_provenance()
    assert here["gpu"] and here["tensorrt"] and here["tensorrt"].split(".")[0] == "10"
