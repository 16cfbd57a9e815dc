"""Execution backends for the exported towers (torch-free).

| name                   | runs                                   | needs                         |
|------------------------|----------------------------------------|-------------------------------|
| `onnxruntime-cpu`      | ONNX graphs, CPUExecutionProvider      | onnxruntime (always here)     |
| `onnxruntime-cuda`     | ONNX graphs, CUDAExecutionProvider     | onnxruntime-gpu + a CUDA GPU  |
| `onnxruntime-tensorrt` | ONNX graphs, TensorrtExecutionProvider | onnxruntime-gpu + TensorRT    |
| `tensorrt`             | the engine's TensorRT plans, natively  | tensorrt + cuda-python + GPU  |

``onnxruntime`` means the best ONNX Runtime provider available; ``None`` / ``"auto"`` the best
backend overall (TensorRT plans when present and runnable, then ORT CUDA, then ORT CPU).
Asking for one that cannot run here raises :class:`BackendUnavailable` naming what to
install. The GPU backends cannot be exercised on a machine without a GPU (unverified there).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from univl_fast.errors import UnivlFastError
from univl_fast.runtime.device_buffers import GrowingBuffer
from univl_fast.runtime.slots import SlotPool
from univl_fast.utils import cuda_driver
from univl_fast.utils.env import env_flag, env_int

log = logging.getLogger(__name__)

GPU_EXTRA = "pip install univl-fast[gpu]"  # = [gpu-cu12], the CUDA 12 set
BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
ALIASES = {"onnxruntime": None, "ort": None, "cpu": "onnxruntime-cpu", "cuda": "onnxruntime-cuda"}
_PROVIDER = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}


class BackendUnavailable(UnivlFastError, RuntimeError):
    """The requested backend cannot run on this machine; the message says what is missing."""


@dataclass
class ThreadSettings:
    """ONNX Runtime threading for a service on a small machine.

    intra_op: threads inside one operator (default: physical cores, or env
    ``UNIVL_FAST_INTRA_OP_THREADS``); inter_op 1 and sequential execution: the towers are a
    chain of ops, parallel branches only add scheduling cost.
    """

    intra_op: int | None = None
    inter_op: int = 1
    sequential: bool = True
    # Busy-wait between the ops of one run (ORT's own default), stopped as soon as the run
    # ends (``session.force_spinning_stop``). Measured on the 2-core box with a ViT-B-32 int8
    # query (bench/results/encode.md): 2.5 ms with spinning vs 4.9 ms without (each of the
    # ~100 parallel sections otherwise pays a thread wake-up); with one CPU hog beside it,
    # 4.8 ms vs 5.0 ms, where spinning that went on after the run (ORT's default) took 7.2 ms.
    # Stopping at the end of the run also leaves the cores to FAISS, which searches right
    # after encoding. None = env UNIVL_FAST_ORT_SPIN (0/1; anything else raises EnvVarError).
    spin: bool | None = None

    def resolved_spin(self) -> bool:
        if self.spin is not None:
            return bool(self.spin)
        return env_flag("UNIVL_FAST_ORT_SPIN", default=True)

    def resolved_intra_op(self) -> int:
        if self.intra_op:
            return int(self.intra_op)
        return env_int("UNIVL_FAST_INTRA_OP_THREADS") or physical_cores()


def physical_cores() -> int:
    """Physical cores visible to this process (affinity-aware, SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        sib = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(sib.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


INSTALL_EXTRA = 'pip install "univl-fast[cpu]" (or "univl-fast[gpu-cu12]" on a CUDA host, not both)'


def import_onnxruntime():
    """The onnxruntime module, or an ImportError naming the extra that brings it."""
    from univl_fast.utils.install_check import warn_once

    warn_once()  # a CPU and a GPU build side by side, or mixed CUDA majors: say so once
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"onnxruntime is not installed ({exc}): {INSTALL_EXTRA}") from exc
    return onnxruntime


def _ort_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def _cuda_devices() -> int:
    """CUDA devices the driver makes visible (``univl_fast.utils.cuda_driver``: asked of
    ``libcuda`` directly, whatever ``_C`` was built with)."""
    return cuda_driver.device_count()


# A one-node ONNX model (Identity on a float tensor of shape (1,)), serialized by hand so that
# probing a provider needs neither the onnx package nor an engine file.
def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _pb_varint(number << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint((number << 3) | 2) + _pb_varint(len(data)) + data


def _probe_model_bytes() -> bytes:
    shape = _pb_field(1, _pb_field(1, 1))  # TensorShapeProto.dim { dim_value: 1 }
    tensor_type = _pb_field(1, _pb_field(1, 1) + _pb_field(2, shape))  # float, (1,)
    value = lambda name: _pb_field(1, name) + _pb_field(2, tensor_type)  # noqa: E731
    node = _pb_field(1, "x") + _pb_field(2, "y") + _pb_field(4, "Identity")
    graph = (
        _pb_field(1, node)
        + _pb_field(2, "provider_probe")
        + _pb_field(11, value("x"))
        + _pb_field(12, value("y"))
    )
    opset = _pb_field(1, "") + _pb_field(2, 13)
    return _pb_field(1, 8) + _pb_field(7, graph) + _pb_field(8, opset)  # ir_version 8


@functools.lru_cache(maxsize=4)
def provider_binds(provider: str) -> tuple[bool, str]:
    """Whether ONNX Runtime really binds ``provider`` for a session (a tiny probe graph), and
    why not. onnxruntime-gpu lists CUDAExecutionProvider as available even where its CUDA /
    cuDNN libraries are missing; a session then silently runs on the CPU."""
    if provider == "CPUExecutionProvider":
        return True, ""
    ort = import_onnxruntime()
    if provider not in ort.get_available_providers():
        return False, f"onnxruntime has no {provider}"
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(
            _probe_model_bytes(), so, providers=[provider, "CPUExecutionProvider"]
        )
        bound = list(session.get_providers())
    except Exception as exc:  # noqa: BLE001 - a provider that cannot open a session is unusable
        return False, f"{provider} failed to open a session: {type(exc).__name__}: {exc}"
    if provider in bound:
        return True, ""
    return False, _not_bound_reason(provider, bound)


def _not_bound_reason(provider: str, bound: list[str]) -> str:
    return (
        f"ONNX Runtime did not bind {provider} (the session got {', '.join(bound) or 'none'}): "
        "its CUDA / cuDNN libraries are missing or do not match this onnxruntime-gpu "
        f"({GPU_EXTRA}; check with: python -m univl_fast.info)"
    )


def tensorrt_importable() -> bool:
    return (
        importlib.util.find_spec("tensorrt") is not None
        and importlib.util.find_spec("cuda") is not None
    )


class PlanUnusable(BackendUnavailable):
    """A TensorRT plan cannot run here: built for another GPU model or TensorRT version, or
    TensorRT could not deserialize it."""


def tensorrt_version() -> str | None:
    """The installed TensorRT's version (the module's own, so any wheel name counts)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt as trt

    return str(getattr(trt, "__version__", "")) or None


def plan_provenance(device: int = 0) -> dict[str, str | None]:
    """What a plan built here is bound to: the GPU model, its compute capability and the
    TensorRT version (recorded in the engine manifest beside each plan)."""
    drv = cuda_driver.driver_info()
    return {
        "gpu": drv.names[device] if device < drv.devices else None,
        "compute_capability": drv.capabilities[device] if device < len(drv.capabilities) else None,
        "tensorrt": tensorrt_version(),
    }


def plan_mismatch(entry: Mapping, device: int = 0) -> str | None:
    """Why a plan whose manifest entry is ``entry`` was built for another GPU model or
    TensorRT version than this host's (None: same, or not recorded: TensorRT's own
    deserialization check then decides)."""
    here = plan_provenance(device)
    problems = [
        f"{what} {entry[key]!r} built it, this host has {here[key]!r}"
        for key, what in (("gpu", "GPU"), ("tensorrt", "TensorRT"))
        if entry.get(key) and entry[key] != here[key]
    ]
    return "; ".join(problems) or None


def tensorrt_plans_problem(plans: Mapping[str, Mapping], device: int = 0) -> str | None:
    """Why the plans ``{path: manifest entry}`` cannot run here, or None once every one of them
    matches this host and deserializes (kept for the towers that open them next), so a loader
    can fall back to ONNX Runtime instead of failing."""
    for path, entry in plans.items():
        why = plan_mismatch(entry, device)
        if why is None:
            try:
                _deserialized(str(path), device)
            except BackendUnavailable as exc:
                why = str(exc)
        if why is not None:
            _PLAN_ENGINES.clear()
            return f"{path}: {why}"
    return None


# plan path -> deserialized ICudaEngine, from tensorrt_plans_problem to the TensorRTTower
# that opens the same plan (one deserialization per plan and load)
_PLAN_ENGINES: dict[str, object] = {}


def _deserialized(path: str, device: int):
    engine = _PLAN_ENGINES.get(path)
    if engine is not None:
        return engine
    if not tensorrt_importable():
        raise BackendUnavailable(f"tensorrt / cuda-python are not installed ({GPU_EXTRA})")
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    (err,) = cudart.cudaSetDevice(device)
    _check_cuda(err, f"cudaSetDevice({device})")
    logger = trt.Logger(trt.Logger.WARNING)
    with open(path, "rb") as fh:
        engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
    if engine is None:
        raise PlanUnusable(
            f"{path}: TensorRT {tensorrt_version()} could not deserialize the plan (built by "
            "another TensorRT version or for another GPU?); rebuild it on this host with "
            "python export/build_trt_plans.py ENGINE_DIR"
        )
    _PLAN_ENGINES[path] = engine
    return engine


def _ort_gpu_backend_usable(backend: str, provs: list[str]) -> bool:
    provider = _PROVIDER[backend]
    if provider not in provs:
        return False
    ok, why = provider_binds(provider)
    if not ok:
        log.warning("backend %s not used: %s", backend, why)
    return ok


def available_backends(has_plans: bool = False) -> list[str]:
    """Backends that can run here, best first. A GPU is asked of the CUDA driver (not of how
    ``_C`` was built); an ONNX Runtime GPU provider counts only where a probe session really
    binds it."""
    out = []
    gpus = _cuda_devices()
    provs = _ort_providers()
    if has_plans and gpus and tensorrt_importable():
        out.append("tensorrt")
    for backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        if gpus and _ort_gpu_backend_usable(backend, provs):
            out.append(backend)
    out.append("onnxruntime-cpu")
    return out


def resolve_backend(name: str | None, has_plans: bool = False) -> str:
    """Map a user's backend name (or None/"auto") to one that can run here, or raise."""
    if name in (None, "auto"):
        return available_backends(has_plans)[0]
    key = name.lower()
    if key in ALIASES:
        mapped = ALIASES[key]
        if mapped is None:
            return next(b for b in available_backends(False) if b.startswith("onnxruntime"))
        key = mapped
    if key not in BACKENDS:
        raise ValueError(
            f"backend {name!r}: unknown; choose from auto, onnxruntime, {', '.join(BACKENDS)}"
        )
    if key == "onnxruntime-cpu":
        return key
    reasons = []
    gpus = _cuda_devices()
    if gpus == 0:
        why = cuda_driver.driver_info().error
        reasons.append("no CUDA device is visible" + (f" ({why})" if why else ""))
    if key == "tensorrt":
        if not tensorrt_importable():
            reasons.append(f"tensorrt / cuda-python are not installed ({GPU_EXTRA})")
        if not has_plans:
            reasons.append(
                "this engine has no TensorRT plans (export with --tensorrt on a GPU host)"
            )
    elif _PROVIDER[key] not in _ort_providers():
        reasons.append(
            f"onnxruntime has no {_PROVIDER[key]} (installed: {', '.join(_ort_providers())}; "
            f"{GPU_EXTRA})"
        )
    elif gpus:
        ok, why = provider_binds(_PROVIDER[key])
        if not ok:
            reasons.append(why)
    if reasons:
        raise BackendUnavailable(f"backend {key!r} cannot run here: " + "; ".join(reasons))
    return key


class ProviderNotBound(BackendUnavailable):
    """ONNX Runtime opened the session on another provider than the one asked for."""


class OrtTower:
    """One ONNX graph in an ONNX Runtime session: ``run(array) -> float32 (n, d)``."""

    def __init__(
        self,
        path: str | os.PathLike,
        backend: str = "onnxruntime-cpu",
        threads: ThreadSettings | None = None,
    ):
        ort = import_onnxruntime()
        threads = threads or ThreadSettings()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads.resolved_intra_op()
        so.inter_op_num_threads = threads.inter_op
        so.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL
            if threads.sequential
            else ort.ExecutionMode.ORT_PARALLEL
        )
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = threads.resolved_spin()
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            so.add_session_config_entry("session.force_spinning_stop", "1")
        so.log_severity_level = 3
        providers = [_PROVIDER[backend]]
        if backend != "onnxruntime-cpu":
            providers.append("CPUExecutionProvider")
        self.path = str(path)
        self.backend = backend
        self.session = ort.InferenceSession(self.path, so, providers=providers)
        # onnxruntime-gpu falls back to the CPU provider without an error when its CUDA /
        # cuDNN libraries cannot load: refuse instead of running (and reporting) the wrong one.
        self.providers: list[str] = list(self.session.get_providers())
        if _PROVIDER[backend] not in self.providers:
            raise ProviderNotBound(
                f"{self.path}: backend {backend!r}: "
                + _not_bound_reason(_PROVIDER[backend], self.providers)
            )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)


class _TrtSlot:
    """One TensorRT execution context with its own CUDA stream and reused device buffers.

    A slot is used by one thread at a time (TensorRTTower hands them out), so its context's
    shapes / tensor addresses and its buffers are never shared by two running calls."""

    def __init__(self, tower: TensorRTTower):
        cudart = tower._cudart
        self.context = tower.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{tower.path}: TensorRT could not create an execution context")
        err, self.stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
        _check_cuda(err, "cudaStreamCreateWithFlags")
        self.d_in = GrowingBuffer(tower._malloc, tower._free)
        self.d_out = GrowingBuffer(tower._malloc, tower._free)

    def close(self, cudart) -> None:
        self.d_in.release()
        self.d_out.release()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None


def _check_cuda(err, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed with CUDA error {int(err)}")


class TensorRTTower:
    """A serialized TensorRT plan run natively (tensorrt + cuda-python) on CUDA ``device``.

    Thread-safe: each concurrent call takes its own execution slot (context + stream + device
    buffers); up to ``max_contexts`` slots are created on demand and kept, and a call beyond
    that waits for a free one. Device buffers are reused across calls and grow only when a
    bigger batch comes (``runtime/device_buffers.py``), so steady traffic allocates no device
    memory. Unverified: written against the TensorRT 10 tensor API and cuda-python's runtime
    bindings; it has never run on a GPU (none available to this project)."""

    def __init__(
        self,
        plan_path: str | os.PathLike,
        input_name: str,
        output_name: str,
        device: int = 0,
        max_contexts: int = 4,
    ):
        if not tensorrt_importable():
            raise BackendUnavailable(f"tensorrt / cuda-python are not installed ({GPU_EXTRA})")
        if max_contexts < 1:
            raise ValueError(f"max_contexts must be >= 1, got {max_contexts}")
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self._trt, self._cudart = trt, cudart
        self.path, self.device = str(plan_path), int(device)
        self._set_device()
        self.engine = _deserialized(self.path, self.device)
        _PLAN_ENGINES.pop(self.path, None)
        self.input_name, self.output_name = input_name, output_name
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(output_name)))
        # the plan's optimization profile bounds the batch: bigger batches run in chunks
        self.max_batch: int | None = self._profile_max_batch()
        self._slots = SlotPool(lambda: _TrtSlot(self), max_contexts)

    def _profile_max_batch(self) -> int | None:
        try:
            _min, _opt, biggest = self.engine.get_tensor_profile_shape(self.input_name, 0)
            return max(1, int(biggest[0]))
        except Exception:  # noqa: BLE001 - no readable profile: batches go through whole
            return None

    def _set_device(self) -> None:
        (err,) = self._cudart.cudaSetDevice(self.device)
        _check_cuda(err, f"cudaSetDevice({self.device})")

    def _malloc(self, nbytes: int) -> int:
        err, ptr = self._cudart.cudaMalloc(nbytes)
        _check_cuda(err, f"cudaMalloc({nbytes})")
        return int(ptr)

    def _free(self, ptr: int) -> None:
        self._cudart.cudaFree(ptr)

    def run(self, x: np.ndarray) -> np.ndarray:
        """(n, ...) input batch -> float32 (n, d); safe to call from several threads."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        self._set_device()  # the CUDA current device is per thread
        step = self.max_batch or len(x) or 1
        with self._slots.take() as slot:
            if len(x) <= step:
                return self._run_on(slot, x)
            return np.concatenate(
                [self._run_on(slot, x[i : i + step]) for i in range(0, len(x), step)]
            )

    def _run_on(self, slot: _TrtSlot, x: np.ndarray) -> np.ndarray:
        cudart, ctx = self._cudart, slot.context
        if not ctx.set_input_shape(self.input_name, x.shape):
            raise ValueError(f"{self.path}: input shape {x.shape} is outside the plan's profile")
        out = np.empty(tuple(ctx.get_tensor_shape(self.output_name)), dtype=self.output_dtype)
        d_in = slot.d_in.reserve(x.nbytes)
        d_out = slot.d_out.reserve(out.nbytes)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        (err,) = cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, slot.stream)
        _check_cuda(err, "cudaMemcpyAsync (input)")
        ctx.set_tensor_address(self.input_name, d_in)
        ctx.set_tensor_address(self.output_name, d_out)
        if not ctx.execute_async_v3(int(slot.stream)):
            cudart.cudaStreamSynchronize(slot.stream)
            raise RuntimeError(f"{self.path}: TensorRT execute_async_v3 failed")
        (err,) = cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, slot.stream)
        _check_cuda(err, "cudaMemcpyAsync (output)")
        # Synchronised before the slot is handed back: the next user may grow (free) its buffers.
        (err,) = cudart.cudaStreamSynchronize(slot.stream)
        _check_cuda(err, "cudaStreamSynchronize")
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Frees every slot's stream and device buffers (idle slots; call when no run is in
        flight)."""
        for slot in self._slots.drain():
            slot.close(self._cudart)


def open_tower(
    path: str | os.PathLike,
    backend: str,
    io_names: Mapping[str, str] | None = None,
    threads: ThreadSettings | None = None,
):
    """A runnable tower for ``backend``: OrtTower for ONNX files, TensorRTTower for plans."""
    if backend == "tensorrt":
        names = io_names or {}
        return TensorRTTower(path, names["input"], names["output"])
    return OrtTower(path, backend, threads)
