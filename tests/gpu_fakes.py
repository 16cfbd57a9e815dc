"""Fakes for the GPU paths, so they are tested on a machine without a GPU: a CUDA driver
library (compiled here with the C compiler; it answers from environment variables) and an
onnxruntime module whose sessions bind the providers a test says."""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest

FAKE_LIBCUDA_C = r"""
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
static int env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    return v ? atoi(v) : dflt;
}
int cuDriverGetVersion(int *v) { *v = env_int("FAKE_CUDA_DRIVER", 12040); return 0; }
int cuInit(unsigned flags) { return env_int("FAKE_CUDA_INIT_RC", 0); }
int cuDeviceGetCount(int *n) { *n = env_int("FAKE_CUDA_DEVICES", 0); return 0; }
int cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return 0; }
int cuDeviceGetName(char *name, int len, int dev) {
    snprintf(name, (size_t)len, "Fake GPU %d", dev);
    return 0;
}
"""


def build_fake_libcuda(out_dir: Path, source: str = FAKE_LIBCUDA_C) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake CUDA driver library")
    src = out_dir / "fake_libcuda.c"
    lib = out_dir / "libcuda.so.1"
    src.write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


class _Session:
    def __init__(self, bind: set[str], providers: list[str]):
        self._bound = [p for p in providers if p in bind] or ["CPUExecutionProvider"]
        self.created_with = list(providers)

    def get_providers(self):
        return list(self._bound)

    def get_inputs(self):
        return [types.SimpleNamespace(name="x")]

    def get_outputs(self):
        return [types.SimpleNamespace(name="y")]


class _Options:
    def __init__(self):
        self.config = {}

    def add_session_config_entry(self, key, value):
        self.config[key] = value


def fake_onnxruntime(available: list[str], binds: set[str]) -> types.SimpleNamespace:
    """An onnxruntime stand-in: ``available`` providers are listed, sessions bind only those
    in ``binds`` (the rest silently falls back to the CPU, as onnxruntime-gpu does)."""
    sessions: list[_Session] = []

    def session(_model, _options=None, providers=None):
        s = _Session(binds | {"CPUExecutionProvider"}, list(providers or []))
        sessions.append(s)
        return s

    return types.SimpleNamespace(
        get_available_providers=lambda: list(available),
        SessionOptions=_Options,
        InferenceSession=session,
        ExecutionMode=types.SimpleNamespace(ORT_SEQUENTIAL=0, ORT_PARALLEL=1),
        GraphOptimizationLevel=types.SimpleNamespace(ORT_ENABLE_ALL=99),
        sessions=sessions,
    )
