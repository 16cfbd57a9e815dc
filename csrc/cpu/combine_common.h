// Shared pieces of the per-ISA combine kernels (internal header).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/combine.h"
#include "cpu/half.h"

namespace univl {
namespace detail {

using half_bits = uint16_t;  // float16 storage

inline double load_scalar(const float* p) { return static_cast<double>(*p); }
inline double load_scalar(const half_bits* p) { return static_cast<double>(half_to_float(*p)); }

template <class T>
inline const T* row_ptr(const RowMatrix& m, int64_t row) {
  return static_cast<const T*>(m.data) + row * m.row_stride;
}

// What to do with a row once its sum of squares is known.
enum class RowCase { kScale, kZero, kNaN };

inline RowCase classify(double sumsq) {
  // a + b is formed in double from float inputs, so it cannot overflow and the sum of squares is
  // finite unless an input element was NaN or inf.
  if (!std::isfinite(sumsq)) return RowCase::kNaN;
  if (sumsq == 0.0) return RowCase::kZero;
  return RowCase::kScale;
}

inline void fill_row(float* out, int64_t d, float value) {
  for (int64_t j = 0; j < d; ++j) out[j] = value;
}

inline void fill_special(float* out, int64_t d, RowCase c) {
  fill_row(out, d, c == RowCase::kNaN ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
}

// Instantiates Kernel<TA, TB>::rows for the dtype pair of the arguments.
template <template <class, class> class Kernel>
inline void dispatch_dtypes(const CombineArgs& x, int64_t r0, int64_t r1) {
  const bool a16 = x.a.dtype == DType::kFloat16;
  const bool b16 = x.b.dtype == DType::kFloat16;
  if (!a16 && !b16) return Kernel<float, float>::rows(x, r0, r1);
  if (a16 && b16) return Kernel<half_bits, half_bits>::rows(x, r0, r1);
  if (a16) return Kernel<half_bits, float>::rows(x, r0, r1);
  return Kernel<float, half_bits>::rows(x, r0, r1);
}

}  // namespace detail
}  // namespace univl
