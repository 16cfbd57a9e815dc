"""The kernel class an artifact runs on here: what decides its numbers (torch-free).

The same int8 graph gives different numbers on different CPUs: ONNX Runtime's MLAS picks its
u8s8 GEMM by CPUID, and only some of those kernels accumulate exactly (AVX-512 VNNI, AVX-VNNI,
ARM ``sdot``); the AVX2 / AVX-512BW ``vpmaddubsw`` kernels saturate int16 sums. The exporter
records, per precision and runtime, the class it measured parity on (``manifest["parity"]
[tower][key]["measured_on"]``); the runtime computes this host's class for what it is about to
use and re-checks where it differs (``univl_fast.runtime.verify_load``).

A class is a small dict. The keys in :data:`CLASS_KEYS` decide the comparison; ``cpu`` (the
model name) is recorded for people, not compared: two CPU models on the same kernels give the
same numbers.

CPU features come from numpy's CPUID probe (``numpy._core._multiarray_umath.__cpu_features__``),
not /proc/cpuinfo: CPUID is what ONNX Runtime and our native towers dispatch on, and it is what
an emulator (``qemu-x86_64 -cpu Haswell``) changes, while /proc/cpuinfo still shows the host's.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

# what decides the numbers of an artifact (compared); "cpu" is informational
CLASS_KEYS = ("runtime", "arch", "provider", "onnxruntime", "simd", "isa", "tensorrt", "device")


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """CPU features this process sees through CPUID / HWCAP (numpy's probe), upper case."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    return frozenset(k for k, v in feats.items() if v)


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return out


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (informational: /proc/cpuinfo shows the host's even under qemu)."""
    info = _proc_cpuinfo()
    for key in ("model name", "hardware", "cpu model", "processor"):
        if info.get(key):
            return info[key]
    return platform.processor() or platform.machine() or "unknown"


def _avx_vnni(feats: frozenset[str]) -> bool:
    """AVX-VNNI (VEX, Intel client cores): numpy does not probe it, so /proc/cpuinfo's flag is
    read, and believed only when its AVX2 / AVX-512 flags agree with CPUID's (under an
    emulator /proc/cpuinfo describes another CPU)."""
    flags = set(_proc_cpuinfo().get("flags", "").split())
    if not flags or "avx_vnni" not in flags:
        return False
    return ("avx2" in flags) == ("AVX2" in feats) and ("avx512f" in flags) == ("AVX512F" in feats)


def int8_path(feats: frozenset[str] | None = None) -> str:
    """The int8 GEMM kernel family ONNX Runtime's MLAS dispatches on here (u8s8, dynamic
    quantization): avx512_vnni, avx_vnni, avx512bw, avx2, sse41, neon-i8mm, neon-dot, neon or
    generic. The first three and the neon-dot/i8mm ones accumulate exactly; avx512bw and avx2
    use ``vpmaddubsw``, whose int16 sums saturate."""
    feats = cpu_features() if feats is None else feats
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        if "I8MM" in feats:
            return "neon-i8mm"
        if "ASIMDDP" in feats:
            return "neon-dot"
        return "neon" if ("ASIMD" in feats or "NEON" in feats) else "generic"
    if {"AVX512F", "AVX512BW", "AVX512VNNI"} <= feats:
        return "avx512_vnni"
    if "AVX2" in feats and _avx_vnni(feats):
        return "avx_vnni"
    if {"AVX512F", "AVX512BW"} <= feats:
        return "avx512bw"
    if "AVX2" in feats:
        return "avx2"
    if "SSE41" in feats:
        return "sse41"
    return "generic"


def fp32_path(feats: frozenset[str] | None = None) -> str:
    """The fp32 GEMM kernel family MLAS dispatches on here: avx512f, fma3, avx, sse2, neon or
    generic (fp16 graphs on the CPU run through it too)."""
    feats = cpu_features() if feats is None else feats
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "neon" if ("ASIMD" in feats or "NEON" in feats) else "generic"
    for feat, name in (("AVX512F", "avx512f"), ("FMA3", "fma3"), ("AVX", "avx"), ("SSE2", "sse2")):
        if feat in feats:
            return name
    return "generic"


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def onnxruntime_class(precision: str, provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """The class of a ``precision`` ONNX graph run by ONNX Runtime's ``provider`` here. On the
    CPU provider the SIMD path counts (int8: :func:`int8_path`, else :func:`fp32_path`); on a
    GPU provider the provider and the device's kernels decide instead (``device`` left for the
    caller to fill where it knows the GPU)."""
    cls: dict[str, Any] = {
        "runtime": "onnxruntime",
        "arch": platform.machine().lower(),
        "provider": provider,
        "onnxruntime": _ort_version(),
    }
    if provider == "CPUExecutionProvider":
        cls["simd"] = int8_path() if precision == "int8" else fp32_path()
    cls["cpu"] = cpu_model()
    return cls


def native_class(isa: str) -> dict[str, Any]:
    """The class of a native int8 tower whose compiled kernels are ``isa`` (its ``.isa``)."""
    return {
        "runtime": "native",
        "arch": platform.machine().lower(),
        "isa": str(isa),
        "cpu": cpu_model(),
    }


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, read from package metadata (importing tensorrt
    initialises CUDA)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def tensorrt_class(version: str | None, device: str | None = None) -> dict[str, Any]:
    """The class of a TensorRT plan: the TensorRT version and the GPU model run it."""
    return {"runtime": "tensorrt", "tensorrt": version, "device": device}


def same_class(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two classes give the same numbers (the :data:`CLASS_KEYS` agree)."""
    return all(a.get(k) == b.get(k) for k in CLASS_KEYS)


def describe(cls: dict[str, Any]) -> str:
    """One line: ``onnxruntime 1.22 CPUExecutionProvider avx2 (x86_64, AMD EPYC ...)``."""
    parts = [str(cls.get("runtime"))]
    for key in ("onnxruntime", "tensorrt", "provider", "simd", "isa", "device"):
        if cls.get(key):
            parts.append(str(cls[key]))
    where = ", ".join(str(cls[k]) for k in ("arch", "cpu") if cls.get(k))
    return " ".join(parts) + (f" ({where})" if where else "")


__all__ = [
    "CLASS_KEYS",
    "cpu_features",
    "cpu_model",
    "describe",
    "fp32_path",
    "int8_path",
    "native_class",
    "onnxruntime_class",
    "same_class",
    "tensorrt_class",
    "tensorrt_version",
]
