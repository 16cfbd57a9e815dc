"""The CUDA architecture list comes from the nvcc that was found, and a CUDA problem in AUTO
mode builds the CPU core instead of failing the install (issue 22, item 2). Fake nvcc scripts
stand for an older CUDA (no sm_100 / sm_120) or a compiler that rejects an architecture; each
test configures a throwaway build dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_build import _configure_args

REAL_NVCC = shutil.which("nvcc")
OLD_ARCHS = "compute_75 compute_80 compute_86 compute_89 compute_90"
NEW_ARCHS = OLD_ARCHS + " compute_100 compute_120"


def _fake_nvcc(tmp_path: Path, listed: str, real: str | None) -> Path:
    """An nvcc that lists ``listed`` and rejects sm_100 / sm_120 like nvcc < 12.8; everything
    else goes to ``real`` (or fails when there is none)."""
    script = tmp_path / "nvcc"
    delegate = f'exec "{real}" "$@"' if real else 'echo "nvcc fatal : no real nvcc" >&2; exit 1'
    script.write_text(
        "#!/bin/bash\n"
        'for a in "$@"; do\n'
        '  if [ "$a" = --list-gpu-arch ]; then printf "%s\\n" ' + listed + "; exit 0; fi\n"
        "done\n"
        'for a in "$@"; do\n'
        '  case "$a" in *_100*|*_120*) echo "nvcc fatal   : Unsupported gpu architecture'
        " 'compute_120'\" >&2; exit 1;; esac\n"
        "done\n" + delegate + "\n"
    )
    script.chmod(0o755)
    return script


def _configure(tmp_path: Path, mode: str, nvcc: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNIVL_CUDA": mode, "CUDACXX": str(nvcc)}
    env.pop("UNIVL_CUDA_ARCHS", None)
    return subprocess.run(
        [*_configure_args(tmp_path / "build", tmp_path / "out"), *extra],
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_rejected_architecture_in_auto_builds_the_cpu_core(tmp_path):
    nvcc = _fake_nvcc(tmp_path, NEW_ARCHS, None)  # lists sm_120 but cannot compile it
    proc = _configure(tmp_path, "AUTO", nvcc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "building the CPU core only" in out and "Unsupported gpu architecture" in out
    assert re.search(r"univl_fast: no CUDA \(UNIVL_CUDA=AUTO\)", out), out


@pytest.mark.slow
def test_rejected_architecture_with_cuda_on_fails_naming_it(tmp_path):
    nvcc = _fake_nvcc(tmp_path, NEW_ARCHS, None)
    proc = _configure(tmp_path, "ON", nvcc)
    assert proc.returncode != 0
    assert "UNIVL_CUDA=ON" in proc.stderr and "Unsupported gpu architecture" in proc.stderr


@pytest.mark.slow
def test_nvcc_without_an_architecture_list_builds_the_cpu_core(tmp_path):
    script = tmp_path / "nvcc"
    script.write_text("#!/bin/bash\necho 'nvcc fatal : Unknown option' >&2\nexit 1\n")
    script.chmod(0o755)
    proc = _configure(tmp_path, "AUTO", script)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "--list-gpu-arch lists no architectures" in out


@pytest.mark.slow
@pytest.mark.skipif(REAL_NVCC is None, reason="needs a real nvcc behind the fake older one")
def test_architectures_follow_what_nvcc_supports(tmp_path):
    """An nvcc like CUDA 12.4 (no sm_100 / sm_120): the default list is cut to what it lists,
    with PTX of the newest, and CUDA stays on (the old fixed list failed the configure)."""
    nvcc = _fake_nvcc(tmp_path, OLD_ARCHS, REAL_NVCC)
    proc = _configure(tmp_path, "AUTO", nvcc)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "for 75-real;80-real;86-real;89-real;90-real;90-virtual (UNIVL_CUDA=AUTO)" in out, out
