"""The built module runs on any x86-64 CPU: AVX-512 code only inside the AVX-512 kernels, AVX /
AVX2 code only inside the AVX2 and AVX-512 kernels.

The x86 kernels are chosen at run time after a CPU check, so the rest of the module must hold
no instruction a CPU without them lacks (common: AMD Zen 1-3 and Intel client CPUs have AVX2
only; old or small x86-64 CPUs not even that). The risk is the linker: an inline function or
template instance (std code included) emitted by a file compiled for AVX2 / AVX-512 is one
COMDAT copy among several, and the linker keeps one of them for the whole module. So:

* the linked module: no EVEX-encoded instruction, mask register (k0-k7) or VNNI instruction in
  any function outside the AVX-512 kernels, and no VEX-encoded instruction (AVX, AVX2, FMA,
  F16C) outside the AVX2 and AVX-512 kernels. The kernels' own functions are named by
  convention: their qualified name contains ``avx512`` (case-insensitive): namespace
  ``isa_avx512_vnni`` (text tower) and ``Avx512Kernel`` / ``rows_avx512`` (combine), or
  ``avx2``: namespace ``isa_avx2`` (text tower) and ``Avx2Kernel`` / ``rows_avx2`` (combine);
* the AVX2 and AVX-512 text-tower files compiled at -O0 (nothing inlined, so every inline
  function they use is emitted): each defines no external symbol but its entry point, whatever
  the link order or optimiser would do; the AVX2 one holds no AVX-512 instruction;
* the checker itself flags a deliberately broken library (an inline template compiled for
  AVX-512 / AVX2 in one file, picked by the linker for a baseline file).
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

_C = pytest.importorskip("univl_fast._C", reason="compiled core not built")

ROOT = Path(__file__).resolve().parents[1]
OBJDUMP = shutil.which("objdump")
CXX = shutil.which("c++") or shutil.which("g++")

pytestmark = [
    pytest.mark.skipif(
        platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 builds only"
    ),
    pytest.mark.skipif(OBJDUMP is None, reason="objdump (binutils) not found"),
]

_LEGACY_PREFIXES = {"66", "67", "f2", "f3", "2e", "3e", "26", "36", "64", "65", "f0"}
_SYMBOL = re.compile(r"^[0-9a-f]+ <(.*)>:$")
_EVEX_OPERANDS = re.compile(r"%zmm\d|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b|\{1to\d+\}")
_VNNI = re.compile(r"\bvpdp(busds?|wssds?)\b")
_KERNEL_NAME = re.compile(r"avx512", re.IGNORECASE)
_VEX_KERNEL_NAME = re.compile(r"avx2|avx512", re.IGNORECASE)


def _opcode(raw: str) -> list[str]:
    code = raw.split()
    while code and code[0] in _LEGACY_PREFIXES:
        code = code[1:]
    return code


def _is_evex(raw: str, asm: str) -> bool:
    """EVEX prefix (0x62 as the first opcode byte: always EVEX in 64-bit mode), an AVX-512-only
    register operand, or a VNNI instruction (EVEX or VEX form)."""
    return (_opcode(raw)[:1] == ["62"]) or bool(_EVEX_OPERANDS.search(asm) or _VNNI.search(asm))


def _is_vex(raw: str, asm: str) -> bool:
    """VEX prefix (0xc4 / 0xc5 as the first opcode byte: always VEX in 64-bit mode): AVX, AVX2,
    FMA, F16C (and the VEX forms of SSE instructions, which need AVX too)."""
    return _opcode(raw)[:1] in (["c4"], ["c5"])


def _by_function(path: Path, is_wide) -> dict[str, int]:
    out = subprocess.run(
        [OBJDUMP, "-d", "-C", "--insn-width=15", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, int] = {}
    name = "<before any symbol>"
    for line in out.splitlines():
        m = _SYMBOL.match(line)
        if m:
            name = m.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        if is_wide(parts[1], parts[2]):
            found[name] = found.get(name, 0) + 1
    return found


def evex_by_function(path: Path) -> dict[str, int]:
    """{demangled function name: count of AVX-512-only instructions} for a binary's code."""
    return _by_function(path, _is_evex)


def vex_by_function(path: Path) -> dict[str, int]:
    """{demangled function name: count of VEX-encoded (AVX / AVX2) instructions}."""
    return _by_function(path, _is_vex)


def outside_kernels(found: dict[str, int], names: re.Pattern = _KERNEL_NAME) -> dict[str, int]:
    return {k: v for k, v in found.items() if not names.search(k)}


def test_module_has_avx512_code_only_in_the_avx512_kernels():
    found = evex_by_function(Path(_C.__file__))
    bad = outside_kernels(found)
    assert not bad, "AVX-512 instructions outside the AVX-512 kernels:\n" + "\n".join(
        f"  {n} ({c} instructions)" for n, c in sorted(bad.items())
    )
    # the checker sees the kernels that are there (it would otherwise pass vacuously)
    text_kernels = [k for k in found if "isa_avx512_vnni::" in k]
    assert text_kernels and sum(found[k] for k in text_kernels) > 100, sorted(found)
    assert any("kernel_rows" in k for k in text_kernels), text_kernels  # the VNNI GEMM
    assert not [k for k in found if "isa_avx2::" in k], "AVX-512 code in the AVX2 kernels"


def test_module_has_avx_code_only_in_the_x86_kernels():
    """Baseline code (everything but the AVX2 / AVX-512 kernels) is plain x86-64: no VEX."""
    found = vex_by_function(Path(_C.__file__))
    bad = outside_kernels(found, _VEX_KERNEL_NAME)
    assert not bad, "AVX / AVX2 instructions outside the x86 kernels:\n" + "\n".join(
        f"  {n} ({c} instructions)" for n, c in sorted(bad.items())
    )
    text_kernels = [k for k in found if "isa_avx2::" in k]
    assert text_kernels and sum(found[k] for k in text_kernels) > 100, sorted(found)
    assert any("qgemm" in k for k in text_kernels), text_kernels  # the AVX2 GEMM


def _flags(which: str) -> list[str]:
    m = re.search(rf"set\(UNIVL_{which}_FLAGS ([^)]*)\)", (ROOT / "CMakeLists.txt").read_text())
    assert m, f"CMakeLists.txt has no set(UNIVL_{which}_FLAGS ...) line"
    return m.group(1).split()


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize(
    ("which", "source", "entry"),
    [
        ("AVX512", "text_tower_avx512.cpp", "univl::text_kernels_avx512_vnni()"),
        ("AVX2", "text_tower_avx2.cpp", "univl::text_kernels_avx2()"),
    ],
)
def test_x86_file_defines_nothing_the_linker_could_share(tmp_path, which, source, entry):
    """At -O0 every inline function the file uses is emitted: only its entry point may be an
    external (global, weak or unique) symbol; everything else must be file-local. The AVX2 file
    (at -O0 and -O3) holds no AVX-512 instruction."""
    objs = []
    for opt in ("-O0", "-O3"):
        obj = tmp_path / f"{source}{opt}.o"
        subprocess.run(
            [CXX, "-std=c++17", opt, "-fopenmp-simd", f"-I{ROOT / 'csrc'}", *_flags(which)]
            + ["-c", str(ROOT / "csrc/cpu" / source), "-o", str(obj)],
            check=True,
            capture_output=True,
        )
        objs.append(obj)
    nm = subprocess.run(
        ["nm", "-C", "--defined-only", str(objs[0])], check=True, capture_output=True, text=True
    ).stdout
    external = sorted(
        line.split(" ", 2)[2] for line in nm.splitlines() if line.split(" ")[1] in "TWVuDRBGS"
    )
    assert external == [entry], external
    if which == "AVX2":
        for obj in objs:
            assert not evex_by_function(obj), (obj.name, evex_by_function(obj))
            assert sum(vex_by_function(obj).values()) > 100  # it is AVX2 code, seen


_BROKEN_HEADER = """
template <class T> __attribute__((noinline)) void scale2(T* x, int n) {
  for (int i = 0; i < n; ++i) x[i] *= T(2);
}
"""


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("which", ["AVX512", "AVX2"])
def test_checker_flags_a_broken_library(tmp_path, which):
    """An inline template instantiated in a file built for AVX-512 (AVX2) and in a baseline
    file: the linker keeps the first copy (the wide one here) for both, so baseline code would
    run it. The checker must flag it; kernels named by the convention stay allowed."""
    ns = "isa_avx512" if which == "AVX512" else "isa_avx2"
    (tmp_path / "scale2.h").write_text(_BROKEN_HEADER)
    (tmp_path / "kernels.cpp").write_text(
        f'#include "scale2.h"\nnamespace {ns} {{ void run(float* x, int n) {{ scale2(x, n); }}'
        " void own(float* x, int n) { for (int i = 0; i < n; ++i) x[i] += 1.0f; } }\n"
    )
    (tmp_path / "base.cpp").write_text(
        '#include "scale2.h"\nvoid baseline(float* x, int n) { scale2(x, n); }\n'
    )
    lib = tmp_path / "libbroken.so"
    subprocess.run(
        [CXX, "-O3", "-fPIC", *_flags(which), "-c", "kernels.cpp", "-o", "k.o"],
        cwd=tmp_path,
        check=True,
    )
    subprocess.run([CXX, "-O3", "-fPIC", "-c", "base.cpp", "-o", "b.o"], cwd=tmp_path, check=True)
    subprocess.run([CXX, "-shared", "k.o", "b.o", "-o", str(lib)], cwd=tmp_path, check=True)
    if which == "AVX512":
        found, names = evex_by_function(lib), _KERNEL_NAME
    else:
        found, names = vex_by_function(lib), _VEX_KERNEL_NAME
    assert any(f"{ns}::own" in k for k in found), found  # allowed, and seen
    assert list(outside_kernels(found, names)) == ["void scale2<float>(float*, int)"], found
