"""Build of univl_fast: the Python package plus one CMake-built pybind11 module, univl_fast._C.

Everything about the compiled core lives in CMakeLists.txt; this file only runs CMake and puts
the module where setuptools expects it (also for editable installs). Environment knobs:

  UNIVL_CUDA=AUTO|ON|OFF     compile the CUDA kernels (AUTO: when nvcc is found)
  UNIVL_CUDA_ARCHS="80;90"   CUDA architectures (default: see CMakeLists.txt)
  UNIVL_BUILD_TYPE=Release   CMake build type
  UNIVL_CMAKE_ARGS="..."     extra arguments for the CMake configure step
  UNIVL_BUILD_DIR=path       CMake build tree (default: build/cmake-<python>-<build type>)
  CMAKE_BUILD_PARALLEL_LEVEL parallel compile jobs (default: CPU count)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path = ROOT) -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


def _cmake_executable() -> str:
    # Prefer the cmake wheel (pyproject's build requirement) over an older system one.
    try:
        import cmake  # type: ignore[import-not-found]

        exe = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("cmake")
    if exe is None:
        raise RuntimeError("building univl_fast._C needs CMake >= 3.24: pip install cmake")
    return exe


class CMakeBuild(build_ext):
    def copy_file(self, infile, outfile, *args, **kwargs):
        # Replace the module rather than overwrite it in place: a running process that has the
        # old one mapped (tests, a server) would crash if its pages changed under it.
        if os.path.exists(outfile) and not os.path.samefile(infile, outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        out_file = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = out_file.parent
        build_type = os.environ.get("UNIVL_BUILD_TYPE", "Debug" if self.debug else "Release")
        # A fixed build tree (not setuptools' per-run temp dir, which editable installs use) so
        # re-running pip recompiles only what changed.
        tag = f"{sys.implementation.cache_tag}-{build_type.lower()}"
        build_dir = Path(
            os.environ.get("UNIVL_BUILD_DIR", ROOT / "build" / f"cmake-{tag}")
        ).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)

        import pybind11

        cfg = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DUNIVL_OUTPUT_DIR={out_dir}",
            # The module name carries the interpreter's suffix (e.g. .cpython-311-x86_64-linux-gnu).
            f"-DPYTHON_MODULE_EXTENSION={''.join(out_file.suffixes)}",
        ]
        # Always restate these: CMake caches options, and a rebuild must follow the environment
        # of this run, not the one of the first configure.
        cfg.append(f"-DUNIVL_CUDA={os.environ.get('UNIVL_CUDA') or 'AUTO'}")
        if os.environ.get("UNIVL_CUDA_ARCHS"):
            cfg.append(f"-DUNIVL_CUDA_ARCHS={os.environ['UNIVL_CUDA_ARCHS']}")
        else:
            cfg.append("-UUNIVL_CUDA_ARCHS")  # back to the default in CMakeLists.txt
        cfg += shlex.split(os.environ.get("UNIVL_CMAKE_ARGS", ""))
        ninja = _ninja_executable()
        fresh = not (build_dir / "CMakeCache.txt").exists()
        if ninja and (fresh or (build_dir / "build.ninja").exists()):
            cfg += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]

        cmake = _cmake_executable()
        env = dict(os.environ)
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(
            [cmake, "-S", ext.source_dir, "-B", str(build_dir), *cfg], check=True, env=env
        )
        subprocess.run(
            [cmake, "--build", str(build_dir), "--config", build_type], check=True, env=env
        )
        if not out_file.exists():
            raise RuntimeError(f"CMake finished but {out_file} was not produced")


def _ninja_executable() -> str | None:
    exe = shutil.which("ninja")
    if exe:
        return exe
    try:
        import ninja  # type: ignore[import-not-found]

        exe = Path(ninja.BIN_DIR) / "ninja"
        return str(exe) if exe.exists() else None
    except ImportError:
        return None


setup(
    ext_modules=[CMakeExtension("univl_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
