"""The build of univl_fast._C: what it records, CUDA objects where nvcc exists, the CUDA switch,
and ``python -m univl_fast.info``."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_C = pytest.importorskip("univl_fast._C", reason="compiled core not built")

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")


def test_build_info_records_the_build():
    info = _C.build_info()
    for key in (
        "compiler",
        "cxx_standard",
        "build_type",
        "simd_compiled",
        "simd_supported",
        "simd_selected",
        "openmp",
        "threads",
        "cuda",
        "nvcc_version",
        "cuda_architectures",
    ):
        assert key in info, key
    assert info["cxx_standard"] == "c++17"
    assert re.match(r"\w+ \d+\.\d+", info["compiler"]), info["compiler"]
    assert info["build_type"] in ("Release", "RelWithDebInfo", "MinSizeRel", "Debug")
    assert info["threads"] >= 1
    assert "scalar" in info["simd_compiled"]
    if platform.machine() in ("x86_64", "AMD64"):
        assert {"avx2", "avx512"} <= set(info["simd_compiled"])
    assert info["simd_selected"] in info["simd_supported"]
    assert set(info["simd_supported"]) <= set(info["simd_compiled"])
    if "UNIVL_FAST_SIMD" not in os.environ:
        assert info["simd_selected"] == info["simd_supported"][-1], "not the best variant here"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: a CPU-only build is expected")
def test_cuda_objects_compiled_where_nvcc_exists():
    if os.environ.get("UNIVL_CUDA", "").upper() == "OFF":
        pytest.skip("UNIVL_CUDA=OFF: CUDA deliberately left out of this build")
    info = _C.build_info()
    assert info["cuda"] is True, "nvcc is on PATH but the CUDA kernels were not compiled"
    release = re.search(
        r"release (\d+\.\d+)",
        subprocess.run([NVCC, "--version"], capture_output=True, text=True, check=True).stdout,
    ).group(1)
    assert info["nvcc_version"].startswith(release), (info["nvcc_version"], release)
    archs = {re.match(r"\d+", a).group() for a in info["cuda_architectures"]}
    assert {"80", "90"} <= archs, info["cuda_architectures"]
    assert info["cuda_runtime"] == "static"
    assert hasattr(_C, "combine_image_docs_cuda")


def test_cuda_runtime_is_linked_statically():
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("no ldd here")
    deps = subprocess.run([ldd, _C.__file__], capture_output=True, text=True).stdout
    assert "libcudart" not in deps, deps  # imports where no CUDA toolkit/driver is installed


def test_cuda_device_count_never_raises():
    count = _C.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if not Path("/dev/nvidiactl").exists():  # no driver here: no device, and no exception
        assert count == 0
    hidden = subprocess.run(
        [sys.executable, "-c", "from univl_fast import _C; print(_C.cuda_device_count())"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert hidden.stdout.strip() == "0"


# ------------------------------------------------------------------ python -m univl_fast.info


def _info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "univl_fast.info", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )


def test_info_json():
    info = json.loads(_info("--json").stdout)
    assert info["core"]["available"] is True
    assert info["core"]["simd_selected"] == _C.build_info()["simd_selected"]
    assert info["core"]["cuda_devices"] == _C.cuda_device_count()
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    assert info["faiss"]["gpus"] >= 0
    assert isinstance(info["tensorrt"]["installed"], bool)


def test_info_brief_one_line_per_item():
    lines = _info("--brief").stdout.splitlines()
    prefixes = [
        "univl_fast:",
        "core (_C):",
        "numpy:",
        "onnxruntime:",
        "faiss:",
        "tensorrt:",
        "cuda devices:",
    ]
    assert [line.split(" ")[0] for line in lines] == [p.split(" ")[0] for p in prefixes]
    assert "SIMD" in lines[1]


def test_info_never_imports_torch():
    code = (
        "import sys, univl_fast.info as i; i.main(['--brief']); "
        "assert 'torch' not in sys.modules, 'info imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)


def test_info_cli_command():
    from univl_fast import cli

    assert cli.COMMANDS["info"][0] == "univl_fast.info"
    assert cli.main(["info", "--brief"]) == 0


# ------------------------------------------------------------------ the UNIVL_CUDA switch


def _cmake() -> str:
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        exe = shutil.which("cmake")
        if exe is None:
            pytest.skip("cmake not installed")
        return exe


def _configure_args(build_dir: Path, out_dir: Path) -> list[str]:
    import pybind11

    return [
        _cmake(),
        "-S",
        str(ROOT),
        "-B",
        str(build_dir),
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DUNIVL_OUTPUT_DIR={out_dir}",
        *(["-G", "Ninja"] if shutil.which("ninja") else []),
    ]


@pytest.mark.slow
def test_cuda_on_without_nvcc_fails_to_configure(tmp_path):
    env = {**os.environ, "UNIVL_CUDA": "ON", "CUDACXX": str(tmp_path / "no-such-nvcc")}
    proc = subprocess.run(
        _configure_args(tmp_path / "build", tmp_path / "out"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "UNIVL_CUDA=ON but no CUDA compiler" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cpu_only_build_works_and_answers_zero_devices(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "UNIVL_CUDA": "OFF", "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count())}
    # Debug (-O0): the switch is what is tested here, and it halves the compile time.
    subprocess.run(
        [*_configure_args(tmp_path / "build", out), "-DCMAKE_BUILD_TYPE=Debug"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [_cmake(), "--build", str(tmp_path / "build")], env=env, check=True, capture_output=True
    )
    code = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import _C
info = _C.build_info()
assert info["cuda"] is False and info["cuda_architectures"] == [], info
assert _C.cuda_device_count() == 0
a = np.ones((2, 4), np.float32)
assert np.allclose(_C.combine_image_docs(a, a), 0.5)
try:
    _C.combine_image_docs_cuda(a, a)
except RuntimeError as exc:
    assert "built without CUDA" in str(exc), exc
else:
    raise AssertionError("combine_image_docs_cuda ran on a CPU-only build")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


# ------------------------------------------------------------------ CUDA host code, on a CPU


def test_cuda_buffer_policy_matches_the_python_runner(tmp_path):
    """csrc/cuda/buffer_policy.h (the CUDA combine's buffer growth) compiled and run here, and
    the TensorRT runner's Python rule (univl_fast.runtime.device_buffers) give the same sizes."""
    from univl_fast.runtime.device_buffers import grown_capacity

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler here")
    cases = [
        (current, needed)
        for current in (0, 1, 4095, 2 << 20, (2 << 20) + 1, 3 << 20, 1 << 40)
        for needed in (0, 1, 2 << 20, (2 << 20) + 1, 5 << 20, (1 << 40) + 3, (1 << 64) - 5)
    ]
    src = tmp_path / "policy.cpp"
    src.write_text(
        '#include <cstdio>\n#include "cuda/buffer_policy.h"\n'
        "int main() { unsigned long long c, n;\n"
        '  while (std::scanf("%llu %llu", &c, &n) == 2)\n'
        '    std::printf("%llu\\n", (unsigned long long)univl::cuda::grown_capacity(c, n));\n'
        "}\n"
    )
    exe = tmp_path / "policy"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", f"-I{ROOT / 'csrc'}", str(src), "-o", str(exe)], check=True
    )
    stdin = "".join(f"{c} {n}\n" for c, n in cases)
    got = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
    expected = [grown_capacity(c, n) for c, n in cases]
    assert [int(x) for x in got.stdout.split()] == expected


def test_cuda_combine_allocates_only_through_its_reused_buffers():
    """The CUDA combine calls cudaMalloc in one place (DeviceBuffer::reserve, which grows and
    keeps the buffer) and selects its device and stream explicitly: no per-call allocation."""
    code = (ROOT / "csrc/cuda/combine.cu").read_text()
    body = re.sub(r"//[^\n]*", "", code)  # comments may mention the calls
    assert len(re.findall(r"\bcudaMalloc\s*\(", body)) == 1
    reserve = body[body.index("cudaError_t reserve(") : body.index("struct DevicePool")]
    assert "cudaMalloc(" in reserve and "grown_capacity(" in reserve
    assert "cudaSetDevice(device)" in body
    assert "std::lock_guard<std::mutex> lock(p.mu)" in body
    # every copy and the launch go to the pool's stream, never the legacy default stream
    assert not re.search(r"\bcudaMemcpy(2D)?\s*\(", body)
    assert ", 0, s>>>" in body and "cudaStreamSynchronize(p.stream)" in body


# ------------------------------------------------------------------ scripts/gpu_check.sh


def test_gpu_check_without_gpu_exits_cleanly_and_writes_nothing(tmp_path):
    from univl_fast.utils.cuda_driver import device_count

    if shutil.which("nvidia-smi") or device_count() > 0:
        pytest.skip("a GPU is visible: gpu_check.sh would run the full check")
    report = tmp_path / "gpu.md"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh"), str(report)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU check: no GPU: nothing to check" in proc.stdout
    assert not report.exists()
