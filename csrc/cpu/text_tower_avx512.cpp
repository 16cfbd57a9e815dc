// Native text tower kernels, AVX-512 VNNI build. CMakeLists.txt compiles this whole file with
// the AVX-512 flags (UNIVL_AVX512_FLAGS: F/BW/VL/DQ/VNNI), so the element-wise loops vectorise
// to 512-bit too; text_tower.cpp only hands the kernels out after checking the CPU. What this
// file may contain (internal-linkage code, no std inline code): text_tower_kernels.h.
#include "cpu/text_tower_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
      defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__FMA__))
#error "text_tower_avx512.cpp must be compiled with UNIVL_AVX512_FLAGS (see CMakeLists.txt)"
#endif
#define UNIVL_TT_NS isa_avx512_vnni
#define UNIVL_TT_VNNI 1
#include "cpu/text_tower_impl.h"

namespace univl {
const TextKernels* text_kernels_avx512_vnni() { return &isa_avx512_vnni::kTextKernels; }
}  // namespace univl
#else
#error "text_tower_avx512.cpp is an x86-64 file: CMakeLists.txt lists it only for x86-64 builds"
#endif
