"""Is a CUDA GPU visible here? Asked of the CUDA driver itself (``libcuda`` through ctypes).

The answer does not depend on how ``univl_fast._C`` was built (a core built without ``nvcc``,
the usual case on a runtime image, still finds the GPU here) nor on any Python GPU package.
Nothing here raises: a missing driver library, a missing symbol or a driver error all read as
"no device", with the reason in ``CudaDriverInfo.error``.

``cuInit`` initialises the driver in the calling process, and a process that did so before
``fork()`` must not use CUDA in its children. A parent that will fork (the pre-forking
server) asks with ``isolated=True``: the probe then runs in a short-lived subprocess.

Unverified on a GPU: written against the CUDA driver API (``cuInit``, ``cuDeviceGetCount``,
``cuDriverGetVersion``, ``cuDeviceGet``, ``cuDeviceGetName``); tested here with a fake
``libcuda`` (tests/test_gpu_detect.py).

    python -m univl_fast.utils.cuda_driver      # the probe as JSON (what isolated=True runs)
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

# Tried in order. Tests point this at a fake driver library.
LIBCUDA_NAMES: tuple[str, ...] = ("libcuda.so.1", "libcuda.so")


@dataclass(frozen=True)
class CudaDriverInfo:
    devices: int = 0
    driver_version: int = 0  # CUDA's encoding: 1000 * major + 10 * minor (12040 = 12.4)
    names: tuple[str, ...] = field(default_factory=tuple)
    capabilities: tuple[str, ...] = field(default_factory=tuple)  # per device, "8.9"
    error: str | None = None  # why devices is 0, when the driver said so or could not be asked

    @property
    def driver_cuda(self) -> str:
        """The CUDA version the driver supports, "12.4" (empty when unknown)."""
        v = self.driver_version
        return f"{v // 1000}.{(v % 1000) // 10}" if v else ""

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "names": list(self.names),
            "capabilities": list(self.capabilities),
            "driver_cuda": self.driver_cuda,
        }


def _load_library(names: tuple[str, ...]):
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name), None
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    return None, "no CUDA driver library (" + "; ".join(errors or ["none named"]) + ")"


def probe(names: tuple[str, ...] | None = None) -> CudaDriverInfo:
    """Ask the driver in this process (initialises it). Never raises."""
    lib, why = _load_library(tuple(names or LIBCUDA_NAMES))
    if lib is None:
        return CudaDriverInfo(error=why)
    try:
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            version = ctypes.c_int(0)
        rc = int(lib.cuInit(ctypes.c_uint(0)))
        if rc != 0:
            # 100 = CUDA_ERROR_NO_DEVICE (also when CUDA_VISIBLE_DEVICES hides them all)
            return CudaDriverInfo(0, version.value, error=f"cuInit failed with CUDA error {rc}")
        count = ctypes.c_int(0)
        rc = int(lib.cuDeviceGetCount(ctypes.byref(count)))
        if rc != 0:
            return CudaDriverInfo(
                0, version.value, error=f"cuDeviceGetCount failed with CUDA error {rc}"
            )
        n = max(0, count.value)
        names_out, caps = [], []
        for i in range(n):
            name, cap = _device(lib, i)
            names_out.append(name)
            caps.append(cap)
        return CudaDriverInfo(
            n, version.value, tuple(names_out), tuple(caps), None if n else "no device"
        )
    except Exception as exc:  # noqa: BLE001 - a broken driver library means no usable GPU
        return CudaDriverInfo(error=f"the CUDA driver library failed: {type(exc).__name__}: {exc}")


def _device(lib, ordinal: int) -> tuple[str, str]:
    """(name, compute capability "8.9") of device ``ordinal``; placeholders where unknown."""
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return f"CUDA device {ordinal}", ""
    buf = ctypes.create_string_buffer(256)
    name = f"CUDA device {ordinal}"
    if lib.cuDeviceGetName(buf, len(buf), dev) == 0:
        name = buf.value.decode("utf-8", "replace")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    get = getattr(lib, "cuDeviceGetAttribute", None)
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if get is None or get(ctypes.byref(major), 75, dev) or get(ctypes.byref(minor), 76, dev):
        return name, ""
    return name, f"{major.value}.{minor.value}"


def _probe_in_subprocess() -> CudaDriverInfo:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = (
        "import sys, univl_fast.utils.cuda_driver as d; "
        f"d.LIBCUDA_NAMES = {LIBCUDA_NAMES!r}; sys.exit(d.main())"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        data = json.loads(out.stdout)
        return CudaDriverInfo(
            int(data["devices"]),
            int(data["driver_version"]),
            tuple(data["names"]),
            tuple(data["capabilities"]),
            data["error"],
        )
    except Exception as exc:  # noqa: BLE001 - the probe itself failing means no known GPU
        return CudaDriverInfo(error=f"the isolated CUDA probe failed: {type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=2)
def driver_info(isolated: bool = False) -> CudaDriverInfo:
    """The driver's answer, asked once per process (``isolated``: from a subprocess, so this
    process never initialises CUDA; for a parent that forks workers)."""
    return _probe_in_subprocess() if isolated else probe()


def device_count(isolated: bool = False) -> int:
    """CUDA devices the driver makes visible to this process (0 when none or no driver)."""
    return driver_info(isolated).devices


def main() -> int:
    print(json.dumps(probe().to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
