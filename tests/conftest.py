"""Shared test configuration: markers that skip cleanly with a reason, and session fixtures.

Fixtures live in one module per area (registered below) so each stage's fixtures sit beside
the code they exercise: data (synthetic dataset dirs), model (checkpoints), engine (exported
engine dirs, indexes).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest

pytest_plugins = [
    "tests.fixtures_data",
    "tests.fixtures_model",
    "tests.fixtures_engine",
]


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """GPUs the CUDA driver reports (not how _C was built: a core without CUDA kernels still
    runs the ONNX Runtime / TensorRT / faiss GPU tests)."""
    from univl_fast.utils.cuda_driver import device_count

    return device_count()


@functools.lru_cache(maxsize=1)
def core_cuda_device_count() -> int:
    """GPUs the compiled core's own CUDA kernels can use (0 when built without nvcc)."""
    try:
        from univl_fast import _C

        return int(_C.cuda_device_count())
    except Exception:  # noqa: BLE001 - no extension or no driver both mean no usable GPU
        return 0


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and cuda_device_count() > 0


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session():
    """Last line of defence: a process group a test spawned (``tests.process_helpers``) and
    never stopped is killed when the session ends, and reported as an error."""
    yield
    from tests.process_helpers import kill_leftover_groups

    left = kill_leftover_groups()
    assert not left, f"process groups left running by the tests (now killed): {left}"


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU: none visible on this machine")
    no_core = pytest.mark.skip(
        reason="univl_fast._C was built without its CUDA kernels (rebuild with UNIVL_CUDA=ON)"
    )
    no_trt = pytest.mark.skip(
        reason="needs TensorRT and a CUDA GPU (pip install univl-fast[gpu] on a GPU host)"
    )
    for item in items:
        if "needs_cuda" in item.keywords and cuda_device_count() == 0:
            item.add_marker(no_cuda)
        elif "needs_cuda_core" in item.keywords and core_cuda_device_count() == 0:
            item.add_marker(no_core)
        if "needs_tensorrt" in item.keywords and not tensorrt_available():
            item.add_marker(no_trt)
