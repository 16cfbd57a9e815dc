// Native text tower kernels, portable build: scalar int8 GEMM, element-wise loops vectorised for
// the baseline target. Correct everywhere (aarch64 included); slow, so the runtime's 'auto' only
// runs the native towers where an AVX2 or AVX-512 VNNI build exists (tests compare the builds).
#define UNIVL_TT_NS isa_generic
#define UNIVL_TT_VNNI 0
#include "cpu/text_tower_impl.h"

namespace univl {
const TextKernels* text_kernels_generic() { return &isa_generic::kTextKernels; }
}  // namespace univl
