// Portable combine kernel: any CPU. The compiler may auto-vectorize it for the baseline ISA.
#include <cmath>

#include "cpu/combine_common.h"

namespace univl {
namespace {

using namespace detail;

template <class TA, class TB>
struct ScalarKernel {
  static void rows(const CombineArgs& x, int64_t r0, int64_t r1) {
    const int64_t d = x.d;
    for (int64_t r = r0; r < r1; ++r) {
      const TA* a = row_ptr<TA>(x.a, r);
      const TB* b = row_ptr<TB>(x.b, r);
      float* o = x.out + r * x.out_row_stride;
      // Four partial sums: shorter dependency chains, and they let the compiler vectorize.
      double acc[4] = {0.0, 0.0, 0.0, 0.0};
      int64_t j = 0;
      for (; j + 4 <= d; j += 4) {
        for (int k = 0; k < 4; ++k) {
          const double s = load_scalar(a + j + k) + load_scalar(b + j + k);
          acc[k] += s * s;
        }
      }
      for (; j < d; ++j) {
        const double s = load_scalar(a + j) + load_scalar(b + j);
        acc[0] += s * s;
      }
      const double sumsq = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      const RowCase c = classify(sumsq);
      if (c != RowCase::kScale) {
        fill_special(o, d, c);
        continue;
      }
      const double inv = 1.0 / std::sqrt(sumsq);
      for (j = 0; j < d; ++j) {
        o[j] = static_cast<float>((load_scalar(a + j) + load_scalar(b + j)) * inv);
      }
    }
  }
};

void rows_scalar(const CombineArgs& x, int64_t r0, int64_t r1) {
  dispatch_dtypes<ScalarKernel>(x, r0, r1);
}

}  // namespace

CombineRowsFn combine_rows_scalar() { return &rows_scalar; }

}  // namespace univl
