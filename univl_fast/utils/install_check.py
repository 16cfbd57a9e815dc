"""Installs that cannot work, found from the installed distributions' names and versions.

- A CPU and a GPU build of the same module side by side (``onnxruntime`` + ``onnxruntime-gpu``,
  ``faiss-cpu`` + ``faiss-gpu*``): both install the same Python package, so whichever was
  installed last silently wins, and uninstalling one leaves the other broken.
- GPU packages built for different CUDA majors (a CUDA 13 onnxruntime-gpu beside
  ``tensorrt-cu12``): one of them cannot load its libraries.

Checked once, when ONNX Runtime is first imported (``runtime.backends.import_onnxruntime``);
each problem is logged as a warning naming the fix. Reads metadata only: nothing is imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re

log = logging.getLogger(__name__)

# module -> (its CPU distribution, GPU distributions of the same module)
PAIRS = {
    "onnxruntime": ("onnxruntime", ("onnxruntime-gpu",)),
    "faiss": ("faiss-cpu", ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu13")),
}
_CU = re.compile(r"-cu(\d+)(?:-|$)")
# distributions whose CUDA major is their version's major
_VERSION_MAJOR = ("cuda-python", "cuda-bindings")
ORT_FIRST_CUDA13 = (1, 27)  # onnxruntime-gpu 1.27 and later are built for CUDA 13


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# the distributions the checks read (asked by name: listing every installed distribution's
# metadata took ~0.1-0.4 s, paid by each process's first onnxruntime import)
WATCHED = (
    *(d for cpu, gpus in PAIRS.values() for d in (cpu, *gpus)),
    "tensorrt-cu12",
    "tensorrt-cu13",
    "tensorrt-cu12-libs",
    "tensorrt-cu13-libs",
    "cuda-python",
    "cuda-bindings",
    "nvidia-cudnn-cu12",
    "nvidia-cudnn-cu13",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime-cu13",
    "nvidia-cublas-cu12",
    "nvidia-cublas-cu13",
)


def _installed() -> dict[str, str]:
    out = {}
    for name in WATCHED:
        try:
            out[name] = str(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _major(version: str) -> int | None:
    m = re.match(r"(\d+)(?:\.(\d+))?", version)
    return int(m.group(1)) if m else None


def cuda_majors(installed: dict[str, str]) -> dict[str, int]:
    """The CUDA major each installed GPU distribution is built for (where its name or version
    says so)."""
    out = {}
    for name, version in installed.items():
        m = _CU.search(name)
        if m and (name.startswith(("tensorrt", "faiss-gpu", "nvidia-", "cupy"))):
            out[name] = int(m.group(1))
        elif name in _VERSION_MAJOR and _major(version):
            out[name] = _major(version)
        elif name == "onnxruntime-gpu":
            parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
            out[name] = 13 if parts >= ORT_FIRST_CUDA13 else 12
    return out


def problems(installed: dict[str, str] | None = None) -> list[str]:
    """Every conflict in ``installed`` ({distribution: version}; default: this environment)."""
    installed = _installed() if installed is None else {_norm(k): v for k, v in installed.items()}
    found = []
    for module, (cpu, gpus) in PAIRS.items():
        both = [d for d in (cpu, *gpus) if d in installed]
        if len(both) > 1:
            found.append(
                f"{' and '.join(both)} are both installed: they are one Python module "
                f"({module}) and the last installed wins; uninstall both, then install one "
                '("univl-fast[cpu]" or "univl-fast[gpu-cu12]")'
            )
    majors = cuda_majors(installed)
    if len(set(majors.values())) > 1:
        listed = ", ".join(f"{d} (CUDA {m})" for d, m in sorted(majors.items()))
        found.append(
            f"GPU packages built for different CUDA majors are installed: {listed}; install one "
            'set ("univl-fast[gpu-cu12]" and constraints/gpu.txt)'
        )
    return found


@functools.lru_cache(maxsize=1)
def warn_once() -> tuple[str, ...]:
    """Log each problem of this environment once per process; returns them."""
    try:
        found = problems()
    except Exception as exc:  # noqa: BLE001 - a check that fails must not stop a load
        log.debug("install check skipped: %s", exc)
        return ()
    for problem in found:
        log.warning("install problem: %s", problem)
    return tuple(found)
