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
int cuDeviceGetAttribute(int *v, int attr, int dev) {
    if (attr == 75) { *v = 8; return 0; }
    if (attr == 76) { *v = 9; return 0; }
    return 1;
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


# ------------------------------------------------------------------ TensorRT + cuda-python


def _module(name: str, **attrs) -> types.ModuleType:
    import importlib.machinery

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


PLAN_MAGIC = b"FAKEPLAN"


def fake_plan_bytes(max_batch: int, d_in: int, d_out: int, seed: int = 0) -> bytes:
    import json

    return (
        PLAN_MAGIC
        + json.dumps({"max_batch": max_batch, "d_in": d_in, "d_out": d_out, "seed": seed}).encode()
    )


def fake_plan_weights(d_in: int, d_out: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((d_in, d_out)).astype(np.float32)


class _FakeContext:
    def __init__(self, engine):
        self.engine, self.shape, self.addr = engine, None, {}

    def set_input_shape(self, _name, shape):
        if not 1 <= shape[0] <= self.engine.spec["max_batch"]:
            return False  # what TensorRT answers outside the optimization profile
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, _name):
        return (self.shape[0], self.engine.spec["d_out"])

    def set_tensor_address(self, name, ptr):
        self.addr[name] = int(ptr)

    def execute_async_v3(self, _stream):
        import ctypes

        import numpy as np

        n, d_in = self.shape[0], self.engine.spec["d_in"]
        x = np.empty((n, d_in), np.float32)
        ctypes.memmove(x.ctypes.data, self.addr["x"], x.nbytes)
        y = np.ascontiguousarray(x @ self.engine.w)
        ctypes.memmove(self.addr["y"], y.ctypes.data, y.nbytes)
        self.engine.runs.append(n)
        return True


class _FakeEngine:
    def __init__(self, spec):
        self.spec = spec
        self.w = fake_plan_weights(spec["d_in"], spec["d_out"], spec["seed"])
        self.runs: list[int] = []

    def get_tensor_dtype(self, _name):
        return "float32"

    def get_tensor_profile_shape(self, _name, _profile):
        d, m = self.spec["d_in"], self.spec["max_batch"]
        return [(1, d), (max(1, m // 2), d), (m, d)]

    def create_execution_context(self):
        return _FakeContext(self)


class FakeTensorRT:
    """What the fakes recorded: deserialized engines, built networks and configs."""

    def __init__(self, version: str = "10.9.0.34", fp16_flag: bool = True):
        import json

        import numpy as np

        rec = self
        self.engines: list[_FakeEngine] = []
        self.networks: list[dict] = []
        self.configs: list[dict] = []
        self.parsed: list[bytes] = []

        class Runtime:
            def __init__(self, _logger):
                pass

            def deserialize_cuda_engine(self, data):
                if not bytes(data).startswith(PLAN_MAGIC):
                    return None
                engine = _FakeEngine(json.loads(bytes(data)[len(PLAN_MAGIC) :]))
                rec.engines.append(engine)
                return engine

        class Config:
            def __init__(self):
                self.flags, self.profiles = [], []
                rec.configs.append(self.__dict__)

            def set_memory_pool_limit(self, _pool, _size):
                pass

            def set_flag(self, flag):
                self.flags.append(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shapes = (name, lo, opt, hi)

        class Builder:
            def __init__(self, _logger):
                pass

            def create_network(self, flags):
                net = {"flags": flags}
                rec.networks.append(net)
                return net

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, _network, config):
                hi = config.profiles[0].shapes[3]
                return fake_plan_bytes(hi[0], int(np.prod(hi[1:])), 4)

        class OnnxParser:
            num_errors = 0

            def __init__(self, _network, _logger):
                pass

            def parse_from_file(self, path):
                with open(path, "rb") as fh:
                    rec.parsed.append(fh.read())
                return True

            def parse(self, data, path=None):
                rec.parsed.append(bytes(data))
                return True

        flags = {"FP16": "FP16"} if fp16_flag else {}
        self.module = _module(
            "tensorrt",
            __version__=version,
            Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
            Runtime=Runtime,
            Builder=Builder,
            OnnxParser=OnnxParser,
            BuilderFlag=type("BuilderFlag", (), flags),
            NetworkDefinitionCreationFlag=type(
                "NetworkDefinitionCreationFlag", (), {"STRONGLY_TYPED": 5}
            ),
            MemoryPoolType=type("MemoryPoolType", (), {"WORKSPACE": 0}),
            nptype=lambda dt: np.dtype(dt).type,
        )


def fake_cudart() -> types.ModuleType:
    """cuda.bindings.runtime over host memory (malloc = a numpy buffer, memcpy = memmove)."""
    import ctypes

    import numpy as np

    live: dict[int, np.ndarray] = {}

    def malloc(nbytes):
        buf = np.empty(max(1, nbytes), np.uint8)
        live[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def free(ptr):
        live.pop(int(ptr))
        return (0,)

    def memcpy(dst, src, nbytes, _kind, _stream):
        ctypes.memmove(int(dst), int(src), nbytes)
        return (0,)

    return _module(
        "cuda.bindings.runtime",
        cudaSetDevice=lambda dev: (0,),
        cudaMalloc=malloc,
        cudaFree=free,
        cudaMemcpyAsync=memcpy,
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        cudaStreamCreateWithFlags=lambda flags: (0, 7),
        cudaStreamNonBlocking=1,
        cudaStreamSynchronize=lambda stream: (0,),
        cudaStreamDestroy=lambda stream: (0,),
        live=live,
    )


def install_fake_tensorrt(monkeypatch, fake: FakeTensorRT) -> types.ModuleType:
    """Put the fake tensorrt and cuda-python modules in sys.modules; returns the cudart fake."""
    import sys

    runtime = fake_cudart()
    bindings = _module("cuda.bindings", runtime=runtime)
    cuda = _module("cuda", bindings=bindings)
    cuda.__path__ = []  # a package, as find_spec("cuda.bindings") expects
    bindings.__path__ = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    return runtime
