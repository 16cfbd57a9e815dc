// Native text tower kernels, AVX2 build (+ FMA, F16C): the x86 CPUs without AVX-512 VNNI (AMD
// Zen 1-3, Intel before Ice Lake / Cascade Lake, Intel client cores). CMakeLists.txt compiles
// this whole file with UNIVL_AVX2_FLAGS, so the element-wise loops vectorise to 256-bit too;
// text_tower.cpp only hands the kernels out after checking the CPU. The int8 GEMM is exact
// (vpmaddwd on widened operands: no int16 saturation). What this file may contain
// (internal-linkage code, no std inline code): text_tower_kernels.h.
#include "cpu/text_tower_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#error "text_tower_avx2.cpp must be compiled with UNIVL_AVX2_FLAGS (see CMakeLists.txt)"
#endif
#if defined(__AVX512F__)
#error "text_tower_avx2.cpp must not be compiled with AVX-512 flags"
#endif
#define UNIVL_TT_NS isa_avx2
#define UNIVL_TT_AVX2 1
#include "cpu/text_tower_impl.h"

namespace univl {
const TextKernels* text_kernels_avx2() { return &isa_avx2::kTextKernels; }
}  // namespace univl
#else
#error "text_tower_avx2.cpp is an x86-64 file: CMakeLists.txt lists it only for x86-64 builds"
#endif
