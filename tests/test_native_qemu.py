"""The native towers' run-time dispatch on an AVX2-only CPU, emulated: ``qemu-x86_64 -cpu
Haswell`` runs this venv's Python and ``univl_fast._C`` unchanged with no AVX-512 visible
(~200x slower: tiny inputs only, correctness only). There the towers must pick the avx2 build
(never the AVX-512 one: that would be SIGILL), match this host's avx2 build bit for bit and the
portable build to float rounding, and refuse UNIVL_FAST_NATIVE_ISA=avx512_vnni by name.

Marked ``qemu`` (run the group with ``pytest -m qemu``); skipped with the reason where
qemu-x86_64 is absent or the host is not x86-64.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from univl_fast.runtime.manifest import load_manifest
from univl_fast.runtime.native_image import NativeImageTower
from univl_fast.runtime.native_text import NativeTextTower, native_isas

QEMU = shutil.which("qemu-x86_64")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 hosts only"
    ),
    pytest.mark.skipif(
        QEMU is None, reason="qemu-x86_64 not found (Debian: apt-get install qemu-user)"
    ),
]

_SCRIPT = r"""
import json, os, sys
import numpy as np
from univl_fast import _C
from univl_fast.runtime.native_image import NativeImageTower
from univl_fast.runtime.native_text import NativeTextTower, fast_native_available
from univl_fast.utils.env import EnvVarError

text_path, image_path, inputs, out = sys.argv[1:5]
z = np.load(inputs)
text = NativeTextTower(text_path, threads=2)
image = NativeImageTower(image_path, threads=1)
res = {
    "isas": list(_C.text_tower_isas()),
    "text_isa": text.isa,
    "image_isa": image.isa,
    "fast": list(fast_native_available()),
}
np.savez(out, text=text.run(z["ids"]), image=image.run(z["px"]))
os.environ["UNIVL_FAST_NATIVE_ISA"] = "avx512_vnni"
try:
    NativeTextTower(text_path)
    res["knob_error"] = None
except EnvVarError as exc:
    res["knob_error"] = str(exc)
print(json.dumps(res))
"""


def run_under_haswell(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("UNIVL_FAST_NATIVE_ISA", None)
    return subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def _host_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


def test_avx2_host_picks_avx2_and_matches(tiny_engine, tmp_path):
    if not _host_has_avx2():
        pytest.skip("this host has no AVX2 + FMA + F16C: no avx2 build to compare with")
    assert "avx2" in native_isas()  # this CPU has AVX2: the build must be there
    m = load_manifest(tiny_engine)
    text_path = Path(tiny_engine) / m["native"]["text"]["int8"]
    image_path = Path(tiny_engine) / m["native"]["image"]["int8"]
    ids = np.array([[49406, 320, 1125, 539, 518, 2117, 49407], [49406, 320, 49407, 0, 0, 0, 0]])
    px = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", ids=ids, px=px)
    r = run_under_haswell(
        [
            "-c",
            _SCRIPT,
            str(text_path),
            str(image_path),
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["isas"] == ["generic", "avx2"], res
    assert res["text_isa"] == "avx2" and res["image_isa"] == "avx2", res
    assert res["fast"] == [True, ""], res
    err = res["knob_error"]
    assert err and "UNIVL_FAST_NATIVE_ISA='avx512_vnni'" in err and "generic, avx2" in err, err
    with np.load(tmp_path / "out.npz") as z:
        got_t, got_i = z["text"], z["image"]
    # the same code on the same inputs: bit for bit this host's avx2 build (same team size)
    np.testing.assert_array_equal(got_t, NativeTextTower(text_path, threads=2, isa="avx2").run(ids))
    np.testing.assert_array_equal(got_i, NativeImageTower(image_path, isa="avx2").run(px))
    for got, slow in (
        (got_t, NativeTextTower(text_path, isa="generic").run(ids)),
        (got_i, NativeImageTower(image_path, isa="generic").run(px)),
    ):
        cos = (got * slow).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(slow, axis=1)
        assert cos.min() > 0.9999, cos


def test_avx2_kernels_exact_under_haswell():
    """The int8 GEMM hook at odd sizes on the emulated AVX2 CPU: exact int32 sums (int64
    reference), every output written."""
    script = r"""
import numpy as np
from univl_fast import _C
rng = np.random.default_rng(3)
for rows, k, n in [(1, 4, 32), (4, 516, 64), (13, 100, 96)]:
    x = rng.standard_normal((rows, k)).astype(np.float32) * 5
    q = rng.integers(-127, 128, (n, k)).astype(np.int8)
    s = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    y, qx, sx, zx = _C._native_linear(x, q, s, b, "avx2")
    exact = qx.astype(np.int64) @ q.T.astype(np.int64) - zx[:, None] * q.sum(1, dtype=np.int64)
    ref = exact * (sx[:, None].astype(np.float64) * s[None]) + b
    assert not np.isnan(y).any()
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
print("ok")
"""
    r = run_under_haswell(["-c", script])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
