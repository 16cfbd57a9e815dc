"""``scripts/gpu_check.sh`` (issue 22, item 3): on a machine without a GPU a clear verdict, exit
0 and nothing touched; on a GPU host whose GPU tests skipped, the verdict line counts them and
the check fails. The GPU host side is simulated (a fake nvidia-smi); unverified on a GPU."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _tree_state(root: Path) -> dict[str, tuple[str, float]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime,
            )
    return out


def _no_gpu_here() -> None:
    from univl_fast.utils.cuda_driver import device_count

    if shutil.which("nvidia-smi") or device_count() > 0:
        pytest.skip("a GPU is visible here: gpu_check.sh would run the full check")


def test_no_gpu_verdict_exit_0_and_nothing_touched(tmp_path):
    _no_gpu_here()
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "univl_fast" / "utils").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts")
    shutil.copy(ROOT / "univl_fast" / "utils" / "cuda_driver.py", repo / "univl_fast" / "utils")
    shutil.copy(ROOT / "pyproject.toml", repo)
    # a venv whose python records any use of it
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    used = tmp_path / "venv-used"
    (venv_bin / "python").write_text(f"#!/bin/sh\necho used >> {used}\nexit 1\n")
    (venv_bin / "python").chmod(0o755)
    before = _tree_state(repo)
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "gpu_check.sh"), str(tmp_path / "gpu.md")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("GPU check: no GPU: nothing to check"), proc.stdout
    assert "CUDA driver: no CUDA driver library" in first  # says why
    assert _tree_state(repo) == before  # nothing installed, built or written
    assert not used.exists() and not (repo / ".venv-gpu").exists()
    assert not (tmp_path / "gpu.md").exists()


@pytest.mark.slow
def test_gpu_host_whose_gpu_tests_skip_fails_with_the_verdict(tmp_path):
    """A GPU that nvidia-smi lists but no test can use (here: no CUDA driver library): every
    GPU test skips, and the check must say so and fail, not report "ok"."""
    _no_gpu_here()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu=*) echo "Fake H100 80GB HBM3, 9.0, 580.65.06, 81559 MiB";;\n'
        '*) echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |";;\n'
        "esac\n"
    )
    smi.chmod(0o755)
    report = tmp_path / "gpu.md"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(report)],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHON": sys.executable,
            "UNIVL_GPU_CHECK_PYTHON": sys.executable,  # this venv as it is: nothing installed
            "UNIVL_GPU_CHECK_BENCH": "0",
            "PYTHONPATH": str(ROOT),
        },
        cwd=tmp_path,
    )
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(
        r"GPU check: (\d+) passed, (\d+) skipped, (\d+) failed on Fake H100 80GB HBM3, "
        r"driver 580\.65\.06, CUDA 13\.0",
        last,
    )
    assert m, proc.stdout + proc.stderr
    passed, skipped, failed = map(int, m.groups())
    assert skipped > 0 and passed == 0 and failed == 0
    assert proc.returncode == 1
    assert last in report.read_text()
