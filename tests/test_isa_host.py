"""What the compiled core reports and runs matches the CPU it runs on (marker ``isa``).

The oracle is numpy's own CPUID reading (``numpy._core._multiarray_umath.__cpu_features__``),
independent of ``univl_fast._C``. Natively these tests check this host; under
``qemu-x86_64 -cpu Haswell`` (``scripts/cpu_matrix.sh``) they check an AVX2-only CPU, where
nothing may claim or pick an AVX-512 kernel. Everything runs in this process: a subprocess of
an emulated Python would run natively (qemu-user does not follow exec).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("univl_fast._C", reason="compiled core not built")

pytestmark = pytest.mark.isa

# each ISA name the core may report -> the CPUID features (numpy's names) it needs
NEEDS = {
    "scalar": (),
    "generic": (),
    "avx2": ("AVX2", "FMA3", "F16C"),
    "avx512": ("AVX512F", "AVX512BW", "AVX512VL", "AVX512DQ"),
    "avx512_vnni": ("AVX512F", "AVX512BW", "AVX512VL", "AVX512DQ", "AVX512VNNI", "FMA3"),
    "avx_vnni": ("AVX2", "FMA3", "AVXVNNI"),
}


def cpu_features() -> dict[str, bool]:
    """CPUID as numpy reads it (its runtime dispatch); a name it does not know reads False."""
    from numpy._core._multiarray_umath import __cpu_features__

    return dict(__cpu_features__)


def has(isa: str) -> bool:
    f = cpu_features()
    return all(f.get(name, False) for name in NEEDS[isa])


def _check_listed(isas: list[str], what: str) -> None:
    unknown = [i for i in isas if i not in NEEDS]
    assert not unknown, f"{what}: ISA names this test does not map to CPUID features: {unknown}"
    wrong = [i for i in isas if not has(i)]
    assert not wrong, f"{what} lists {wrong}, which this CPU lacks ({_flags()})"


def _flags() -> str:
    wanted = sorted({n for needs in NEEDS.values() for n in needs})
    return ", ".join(f"{n}={int(cpu_features().get(n, False))}" for n in wanted)


def test_core_lists_exactly_the_kernels_this_cpu_runs():
    from univl_fast import _C

    info = _C.build_info()
    _check_listed(list(info["simd_supported"]), "simd_supported")
    _check_listed(list(_C.text_tower_isas()), "text_tower_isas")
    for isa in ("avx2", "avx512"):  # compiled and supported by the CPU: must be offered
        if isa in info["simd_compiled"] and has(isa):
            assert isa in info["simd_supported"], f"{isa} compiled, CPU has it ({_flags()})"
    if has("avx512_vnni"):
        assert "avx512_vnni" in _C.text_tower_isas()


def test_combine_kernel_picks_the_best_this_cpu_has_and_matches_the_reference():
    from univl_fast import _C
    from univl_fast.ops import combine_image_docs_reference

    info = _C.build_info()
    best = next(
        isa for isa in ("avx512", "avx2", "scalar") if isa in info["simd_compiled"] and has(isa)
    )
    assert info["simd_selected"] == best, f"selected {info['simd_selected']} ({_flags()})"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 96), dtype=np.float32)
    b = rng.standard_normal((37, 96), dtype=np.float32)
    want = combine_image_docs_reference(a, b)
    for variant in info["simd_supported"]:  # every kernel this CPU can run, the best last
        previous = _C.set_simd_variant(variant)
        try:
            got = _C.combine_image_docs(a, b)
        finally:
            _C.set_simd_variant(previous)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=variant)


def test_combine_kernel_refuses_a_variant_this_cpu_lacks():
    from univl_fast import _C

    info = _C.build_info()
    missing = [v for v in info["simd_compiled"] if v not in info["simd_supported"]]
    if not missing:  # this CPU runs every compiled kernel: nothing to refuse
        assert all(has(v) for v in info["simd_compiled"])
        return
    with pytest.raises((ValueError, RuntimeError), match=missing[-1]):
        _C.set_simd_variant(missing[-1])
    assert _C.build_info()["simd_selected"] == info["simd_selected"]


def test_info_report_names_no_kernel_this_cpu_lacks():
    """``python -m univl_fast.info`` (its report, built in this process): the SIMD kernel in
    use and the native text tower's ISA are ones this CPU has."""
    from univl_fast import info

    collected = info.collect()
    brief = "\n".join(info.brief_lines(collected))
    core = collected["core"]
    assert f"using {core['simd_selected']}" in brief
    assert has(core["simd_selected"])
    tower_isa = core["text_tower_isas"][-1]
    assert f"native text tower {tower_isa}" in brief and has(tower_isa)
    if not has("avx512"):
        assert "using avx512" not in brief and "avx512_vnni" not in brief, brief
