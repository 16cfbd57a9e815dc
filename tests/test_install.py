"""Install sets: the CPU and GPU builds of ONNX Runtime and faiss (same Python module each)
never meet in one install, and a missing one is named with the extra that brings it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# distributions that install the same module: a CPU build and a GPU build
SAME_MODULE = {
    "onnxruntime": {"onnxruntime", "onnxruntime-gpu"},
    "faiss": {"faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu13"},
}


def _names(reqs: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.\-]+", r).group().lower() for r in reqs}


def _extra(project: dict, name: str, seen: frozenset = frozenset()) -> set[str]:
    """Distributions an extra installs, following univl-fast[...] self-references."""
    out = set()
    for req in project["optional-dependencies"][name]:
        self_ref = re.match(r"univl-fast\[([^\]]+)\]", req)
        if self_ref:
            for sub in self_ref.group(1).split(","):
                if sub not in seen:
                    out |= _extra(project, sub.strip(), seen | {name})
        else:
            out |= _names([req])
    return out


def test_no_install_set_holds_two_builds_of_one_module():
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    for dists in SAME_MODULE.values():
        assert not base & dists, f"base dependencies pin {base & dists}: extras cannot swap it"
    for extra in project["optional-dependencies"]:
        got = base | _extra(project, extra)
        for module, dists in SAME_MODULE.items():
            assert len(got & dists) <= 1, f"[{extra}] installs {sorted(got & dists)} ({module})"
    assert {"onnxruntime", "faiss-cpu"} <= _extra(project, "cpu")
    assert {"onnxruntime-gpu", "faiss-gpu-cu12"} <= _extra(project, "gpu")
    assert "onnxruntime" in _extra(project, "dev")  # the test/CI set is the CPU one


def _run_blocked(module: str, code: str) -> subprocess.CompletedProcess:
    prelude = f"import sys; sys.modules[{module!r}] = None; "
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT
    )


def test_missing_onnxruntime_names_the_extras():
    proc = _run_blocked(
        "onnxruntime",
        "from univl_fast.runtime.backends import resolve_backend; resolve_backend(None)",
    )
    assert proc.returncode != 0
    assert "onnxruntime is not installed" in proc.stderr and "univl-fast[cpu]" in proc.stderr


def test_missing_faiss_names_the_extras():
    proc = _run_blocked("faiss", "import univl_fast.index")
    assert proc.returncode != 0
    assert "faiss is not installed" in proc.stderr and "univl-fast[gpu]" in proc.stderr
