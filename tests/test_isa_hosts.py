"""Export on one CPU class, serve on another (marker ``isa``; scripts/cpu_matrix.sh runs these).

The engine is exported here (the session's ``tiny_engine``) and loaded in a subprocess under
``qemu-x86_64 -cpu Haswell``: an AVX2 CPU with no AVX-512 as CPUID sees it, so ONNX Runtime
dispatches its AVX2 u8s8 kernels (they saturate int16 sums) and our native towers their
portable/AVX2 path. qemu runs ~200x slower: the model is univl-tiny and the artifacts are
built natively, never under qemu.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from univl_fast.runtime import kernel_class
from univl_fast.utils.io import read_json

pytestmark = pytest.mark.isa

QEMU = shutil.which("qemu-x86_64")
ROOT = Path(__file__).resolve().parents[1]

LOAD = textwrap.dedent(
    """
    import json, sys
    from univl_fast.runtime import Encoder, kernel_class
    enc = Encoder(sys.argv[1])
    q = enc.encode_queries(["a red car on a bridge", "cat"])
    print(json.dumps({
        "int8_path": kernel_class.int8_path(),
        "info": enc.info(),
        "queries": q.tolist(),
    }))
    """
)


def load_on(engine: Path, cpu: str | None, **knobs: str) -> dict:
    """Encoder(engine) in a subprocess, under ``qemu-x86_64 -cpu <cpu>`` (None: natively),
    with the environment ``knobs`` added."""
    cmd = [sys.executable, "-c", LOAD, str(engine)]
    if cpu is not None:
        cmd = [QEMU, "-cpu", cpu, *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNIVL_FAST_INTRA_OP_THREADS": "1", **knobs}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian qemu-user) is not installed")
@pytest.mark.skipif(
    sys.platform != "linux" or kernel_class.int8_path() not in ("avx512_vnni", "avx_vnni"),
    reason="needs an exporting host whose ONNX Runtime int8 kernels are exact (VNNI): "
    "the engine must pass int8 here to show the AVX2 host refusing it",
)
def test_vnni_engine_on_an_avx2_host_drops_ort_int8_and_keeps_native(tiny_engine):
    m = read_json(tiny_engine / "manifest.json")
    assert m["parity"]["text"]["int8"]["passed"]  # the ORT int8 graphs passed where exported
    native = load_on(tiny_engine, None)
    # with the native towers off, auto serves the ORT int8 graphs: re-checked on AVX2 and
    # refused (u8s8 saturation), the engine falls back to a verified precision
    graphs = load_on(
        tiny_engine, "Haswell", UNIVL_FAST_NATIVE_TEXT="0", UNIVL_FAST_NATIVE_IMAGE="0"
    )
    assert graphs["int8_path"] == "avx2"
    v = graphs["info"]["verification"]
    assert "onnxruntime-cpu/text/int8" in v["failed"], v
    assert v["fallbacks"] and graphs["info"]["precision"] == "fp32", graphs["info"]
    haswell = load_on(tiny_engine, "Haswell")
    info, v = haswell["info"], haswell["info"]["verification"]
    # native int8 is kept where it passes: the portable/AVX2 kernels are exact
    has_native = bool(m["native"]["text"])
    if has_native:
        assert info["precision"] == "int8" and info["text_runtime"] == "native", info
        text = v["towers"]["text"]
        assert text["status"] == "re-checked" and text["parity"]["passed"], text
        assert text["host_class"]["isa"] != "avx512_vnni"
    for c in v["towers"].values():
        assert c["status"] in ("re-checked", "same-class") and c["status"] != "failed"
    # what it serves agrees with the native host's choice (both verified)
    import numpy as np

    a, b = np.asarray(native["queries"]), np.asarray(haswell["queries"])
    assert (a * b).sum(axis=1).min() > 0.99
