// Native text tower kernels, portable build: scalar int8 GEMM, element-wise loops vectorised for
// the baseline target. Correct everywhere; on CPUs without AVX-512 VNNI ONNX Runtime is faster,
// so the runtime only picks this when asked to (tests compare it with the VNNI build).
#define UNIVL_TT_NS isa_generic
#define UNIVL_TT_VNNI 0
#include "cpu/text_tower_impl.h"

namespace univl {
const TextKernels* text_kernels_generic() { return &isa_generic::kTextKernels; }
}  // namespace univl
