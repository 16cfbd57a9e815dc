"""``python -m univl_fast.info`` / ``univl-fast info``: what was built and what is available here.

Prints the univl_fast version, the build of the compiled core (or why it failed to import),
numpy, ONNX Runtime (version and execution providers), faiss (version and GPU count), TensorRT
presence and the CUDA devices the CUDA driver reports (asked directly, whatever the core was
built with). Never imports torch.

    python -m univl_fast.info            # readable report
    python -m univl_fast.info --brief    # one line per item
    python -m univl_fast.info --json     # machine-readable
    python -m univl_fast.info --engine DIR   # + what that engine runs here and how it was
                                             #   verified on this host (load-time check)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def collect() -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict."""
    import univl_fast

    info: dict[str, Any] = {
        "univl_fast": univl_fast.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }

    try:
        from univl_fast import _C

        info["core"] = {"available": True, "path": _C.__file__, **_C.build_info()}
        # what the core's own CUDA kernels see (0 when it was built without nvcc)
        info["core"]["cuda_devices"] = int(_C.cuda_device_count())
    except Exception as exc:  # noqa: BLE001 - report why, whatever it was
        info["core"] = {
            "available": False,
            "error": _error(exc),
            "hint": "build it with: python -m pip install --no-build-isolation -e .",
        }

    # GPUs as the CUDA driver sees them, whatever the core was built with
    from univl_fast.utils.cuda_driver import driver_info

    driver = driver_info()
    info["cuda_devices"] = driver.devices
    info["cuda_driver_version"] = driver.driver_version
    info["cuda_driver"] = driver.to_json()

    import numpy

    info["numpy"] = numpy.__version__

    try:
        import onnxruntime

        info["onnxruntime"] = {
            "version": onnxruntime.__version__,
            "providers": list(onnxruntime.get_available_providers()),
        }
        if driver.devices and "CUDAExecutionProvider" in info["onnxruntime"]["providers"]:
            from univl_fast.runtime.backends import provider_binds

            ok, why = provider_binds("CUDAExecutionProvider")
            info["onnxruntime"]["cuda_binds"] = ok
            if not ok:
                info["onnxruntime"]["cuda_problem"] = why
    except Exception as exc:  # noqa: BLE001
        info["onnxruntime"] = {"version": None, "error": _error(exc)}

    try:
        import faiss

        info["faiss"] = {"version": faiss.__version__, "gpus": int(faiss.get_num_gpus())}
    except Exception as exc:  # noqa: BLE001
        info["faiss"] = {"version": None, "gpus": 0, "error": _error(exc)}

    # Presence only: importing tensorrt initializes CUDA, and info must stay cheap and torch-free.
    trt_spec = importlib.util.find_spec("tensorrt")
    info["tensorrt"] = {
        "installed": trt_spec is not None,
        "version": (_version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"))
        if trt_spec is not None
        else None,
    }
    info["torch_installed"] = importlib.util.find_spec("torch") is not None
    return info


def _core_line(core: dict[str, Any]) -> str:
    if not core.get("available"):
        return f"not available ({core['error']}); {core['hint']}"
    cuda = (
        f"CUDA {core['nvcc_version']} archs {','.join(core['cuda_architectures'])} "
        f"(runtime {core['cuda_runtime']})"
        if core["cuda"]
        else "no CUDA"
    )
    omp = f"OpenMP {core['openmp_version']}" if core["openmp"] else "no OpenMP"
    return (
        f"{core['compiler']} {core['cxx_standard']} {core['build_type']}; "
        f"SIMD {'/'.join(core['simd_compiled'])} (using {core['simd_selected']}); "
        f"native text tower {core.get('text_tower_isas', ['?'])[-1]}; "
        f"{omp}, {core['threads']} threads; {cuda}"
    )


def brief_lines(info: dict[str, Any]) -> list[str]:
    ort = info["onnxruntime"]
    faiss = info["faiss"]
    trt = info["tensorrt"]
    return [
        f"univl_fast: {info['univl_fast']} (Python {info['python']})",
        f"core (_C): {_core_line(info['core'])}",
        f"numpy: {info['numpy']}",
        "onnxruntime: "
        + (
            f"{ort['version']} providers {', '.join(ort['providers'])}"
            if ort["version"]
            else f"not available ({ort['error']})"
        ),
        "faiss: "
        + (
            f"{faiss['version']} gpus {faiss['gpus']}"
            if faiss["version"]
            else f"not available ({faiss['error']})"
        ),
        "tensorrt: "
        + (
            f"installed {trt['version'] or ''}".rstrip()
            if trt["installed"]
            else "not installed (pip install univl-fast[gpu])"
        ),
        _gpu_line(info),
    ]


def _gpu_line(info: dict[str, Any]) -> str:
    driver = info.get("cuda_driver") or {}
    if not info["cuda_devices"]:
        return f"cuda devices: 0 ({driver.get('error') or 'none visible'})"
    line = (
        f"cuda devices: {info['cuda_devices']} ({', '.join(driver.get('names', []))}; "
        f"driver supports CUDA {driver.get('driver_cuda', '?')})"
    )
    ort = info["onnxruntime"]
    if ort.get("cuda_binds") is False:
        line += f"; onnxruntime CUDA NOT usable: {ort['cuda_problem']}"
    return line


def full_report(info: dict[str, Any]) -> str:
    lines = brief_lines(info)
    lines.insert(1, f"platform: {info['platform']}")
    core = info["core"]
    if core.get("available"):
        lines.append("core build info:")
        for key in sorted(k for k in core if k != "available"):
            lines.append(f"  {key}: {core[key]}")
    lines.append(f"torch installed (training/export only): {info['torch_installed']}")
    return "\n".join(lines)


def engine_info(engine_dir: str) -> dict[str, Any]:
    """What an engine dir runs here: an Encoder opened on it (the load-time parity check
    included, ``univl_fast.runtime.verify_load``) and its choices."""
    from univl_fast.runtime import Encoder

    enc = Encoder(engine_dir)
    return {"path": str(engine_dir), **enc.info()}


def engine_lines(engine: dict[str, Any]) -> list[str]:
    """The engine part of the report: choices, then one line per tower's load-time check."""
    v = engine["verification"]
    lines = [
        f"engine: {engine['path']}",
        f"  runs: {engine['precision']} on {engine['backend']} (text {engine['text_runtime']}, "
        f"image {engine['image_runtime']})",
        f"  load-time check ({v['mode']}): {v['seconds']:.2f} s"
        + (f"; references {v['references']}" if v.get("references") else "; no reference inputs"),
    ]
    for tower, c in v["towers"].items():
        lines.append(f"  {tower} {c['key']} ({c['runtime']}): {c['status']}: {c['reason']}")
    for fb in v["fallbacks"]:
        lines.append(f"  fallback: {fb['change']} (why: {fb['why']})")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        metavar="DIR",
        help="also load this engine dir and report what runs here and how it was verified",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--brief", action="store_true", help="one line per item")
    fmt.add_argument("--json", action="store_true", help="machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    info = collect()
    if getattr(args, "engine", None):
        info["engine"] = engine_info(args.engine)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    lines = brief_lines(info) if args.brief else full_report(info).splitlines()
    if "engine" in info:
        lines += engine_lines(info["engine"])
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m univl_fast.info", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
