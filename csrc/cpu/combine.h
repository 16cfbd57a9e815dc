// Fused image-document combine (UniVL-DR Eq. 3): out[i] = (a[i] + b[i]) / ||a[i] + b[i]||.
//
// CPU implementation: one kernel per instruction set (scalar, AVX2, AVX-512), chosen at run time
// from what the CPU supports, rows split over threads. Accumulation is in double, so the result
// is within ~1 ulp of float32 of a float64 reference and a + b cannot overflow.
//
// Defined results:
//   * a row whose sum a[i] + b[i] is all zero gives an all-zero output row;
//   * a row with any NaN or inf in a[i] or b[i] gives an all-NaN output row.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace univl {

enum class DType : int { kFloat32 = 0, kFloat16 = 1 };

inline const char* dtype_name(DType t) { return t == DType::kFloat32 ? "float32" : "float16"; }

// A read-only (rows, cols) matrix whose last dimension is contiguous. Row stride is in elements
// and may be negative (numpy views such as x[::-1]).
struct RowMatrix {
  const void* data = nullptr;
  int64_t row_stride = 0;
  DType dtype = DType::kFloat32;
};

struct CombineArgs {
  RowMatrix a;
  RowMatrix b;
  float* out = nullptr;
  int64_t out_row_stride = 0;  // in elements
  int64_t n = 0;               // rows
  int64_t d = 0;               // columns
  // Set by combine_image_docs_cpu: write with non-temporal stores (large, 16-byte aligned out).
  bool stream_stores = false;
};

// Computes rows [row_begin, row_end) of the combine. Every output element is written.
using CombineRowsFn = void (*)(const CombineArgs& args, int64_t row_begin, int64_t row_end);

// Per-ISA kernels; the x86 ones exist only in x86-64 builds (CMakeLists.txt).
CombineRowsFn combine_rows_scalar();
#if defined(__x86_64__) || defined(_M_X64)
CombineRowsFn combine_rows_avx2();
CombineRowsFn combine_rows_avx512();
#endif

// The whole op: picks the kernel and splits rows over threads. Call without the GIL.
void combine_image_docs_cpu(const CombineArgs& args);

// Names of the SIMD variants compiled into this build, e.g. {"scalar", "avx2", "avx512"}.
std::vector<std::string> combine_simd_compiled();
// Variants this CPU can run (subset of the compiled ones), best last.
std::vector<std::string> combine_simd_supported();
// The variant combine_image_docs_cpu uses now.
std::string combine_simd_selected();
// Forces a variant (tests, benchmarks). Returns false if it is not supported here.
bool combine_set_simd(const std::string& name);

// Threads the CPU combine may use: the CPUs this process may run on (sched_getaffinity), or
// UNIVL_FAST_COMBINE_THREADS (1..1024) when set. Read once.
int cpu_num_threads();

}  // namespace univl
