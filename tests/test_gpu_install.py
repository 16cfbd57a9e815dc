"""Installs that resolve (issue 22, item 9): the extras name one CUDA major and never put a CPU
and a GPU build of the same module side by side; a conflicting environment is reported when
ONNX Runtime is first imported; the constraints files pin what was tested."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import tomllib

from univl_fast.runtime import backends
from univl_fast.utils import install_check

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _expand(name: str, extras: dict[str, list[str]]) -> set[str]:
    """Distribution names an extra pulls in (following univl-fast[...] self-references)."""
    out = set()
    for req in extras[name]:
        m = re.match(r"univl-fast\[([\w-]+)\]", req)
        if m:
            out |= _expand(m.group(1), extras)
        else:
            out.add(re.match(r"[A-Za-z0-9_.-]+", req).group().lower())
    return out


def _one_of_each(names: set[str]) -> None:
    assert len({"onnxruntime", "onnxruntime-gpu"} & names) == 1, names
    assert len({n for n in names if n.startswith("faiss")}) == 1, names


def test_extras_name_one_cuda_major_and_one_build_of_each_module():
    extras = _extras()
    for extra in ("gpu-cu12", "gpu-cu13", "dev-gpu", "dev", "gpu"):
        _one_of_each(_expand(extra, extras))
    cu12, cu13 = " ".join(extras["gpu-cu12"]), " ".join(extras["gpu-cu13"])
    # onnxruntime-gpu's [cuda,cudnn] extras: the CUDA / cuDNN libraries its provider loads
    assert "onnxruntime-gpu[cuda,cudnn]>=1.20,<1.27" in cu12  # 1.27 on: built for CUDA 13
    assert "onnxruntime-gpu[cuda,cudnn]>=1.27" in cu13
    assert "tensorrt-cu12>=10.9,<11" in cu12 and "tensorrt-cu13>=10.13,<11" in cu13
    assert "cuda-python>=12.6,<13" in cu12 and "cuda-bindings>=13.0.3,<14" in cu13
    assert "faiss-gpu-cu12" in cu12
    assert _expand("gpu", extras) == _expand("gpu-cu12", extras)
    # [dev-gpu]: torch 2.14.1's own CUDA libraries are CUDA 13, so its GPU set is too
    dev_gpu, dev = _expand("dev-gpu", extras), _expand("dev", extras)
    assert "onnxruntime" not in dev_gpu and {"onnxruntime-gpu", "tensorrt-cu13"} <= dev_gpu
    assert {"onnxruntime", "faiss-cpu"} <= dev and "onnxruntime-gpu" not in dev
    assert dev - {"onnxruntime"} == dev_gpu - {"onnxruntime-gpu", "tensorrt-cu13", "cuda-bindings"}


@pytest.mark.parametrize(
    "installed, expected",
    [
        ({"onnxruntime": "1.32.0", "faiss-cpu": "1.13.0"}, []),
        (
            {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.26.0"},
            ["onnxruntime and onnxruntime-gpu are both installed"],
        ),
        ({"faiss_cpu": "1.13.0", "faiss-gpu-cu12": "1.14.1"}, ["faiss-cpu and faiss-gpu-cu12"]),
        (
            {"onnxruntime-gpu": "1.31.1", "tensorrt-cu12": "10.16.1.11", "cuda-python": "12.9.10"},
            ["different CUDA majors", "onnxruntime-gpu (CUDA 13)", "tensorrt-cu12 (CUDA 12)"],
        ),
        (
            {"onnxruntime-gpu": "1.26.0", "tensorrt-cu12": "10.16.1.11", "cuda-python": "12.9.10"},
            [],
        ),
    ],
    ids=["cpu", "two-onnxruntimes", "two-faiss", "mixed-cuda", "one-cuda"],
)
def test_problems_found_from_distribution_metadata(installed, expected):
    found = " | ".join(install_check.problems(installed))
    for part in expected:
        assert part in found
    assert bool(found) == bool(expected), found


def test_conflict_is_logged_when_onnxruntime_is_first_imported(monkeypatch, caplog):
    monkeypatch.setattr(
        install_check, "_installed", lambda: {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.26"}
    )
    install_check.warn_once.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="univl_fast.utils.install_check"):
            backends.import_onnxruntime()
            backends.import_onnxruntime()
    finally:
        install_check.warn_once.cache_clear()
    assert caplog.text.count("onnxruntime and onnxruntime-gpu are both installed") == 1


def test_this_environment_has_no_conflict():
    assert install_check.problems() == []


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name] = version
    return out


def test_cpu_constraints_are_the_tested_environment():
    """constraints/cpu.txt pins what this venv (where the tests run) has installed."""
    import importlib.metadata as md

    pins = _pins(ROOT / "constraints" / "cpu.txt")
    assert {"torch", "onnxruntime", "faiss-cpu", "numpy"} <= set(pins)
    differ = {}
    for name, version in pins.items():
        try:
            here = md.version(name)
        except md.PackageNotFoundError:
            here = None
        if here != version:
            differ[name] = (version, here)
    assert differ == {}, f"regenerate with scripts/make_constraints.py: {differ}"


def test_gpu_constraints_are_one_consistent_set():
    text = (ROOT / "constraints" / "gpu.txt").read_text()
    assert "a RESOLVE of univl-fast[dev-gpu], not a" in text  # says it is untested
    pins = _pins(ROOT / "constraints" / "gpu.txt")
    assert "onnxruntime" not in pins and "onnxruntime-gpu" in pins
    assert [n for n in pins if n.startswith("faiss")] == ["faiss-cpu"]
    assert install_check.problems(pins) == []
    assert set(install_check.cuda_majors(pins).values()) == {13}
    assert pins["tensorrt-cu13"].startswith("10.")  # the TensorRT 10 API the runner uses


def test_setup_installs_with_the_constraints():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "CONSTRAINTS=${UNIVL_CONSTRAINTS-constraints/cpu.txt}" in setup
    assert setup.count('"${PIN[@]}"') == 3  # torch, ray and the project itself
