// AVX2 + FMA + F16C combine kernel. Compiled with function target attributes (not a global
// -mavx2), so nothing here leaks into code that runs on CPUs without AVX2; combine.cpp only
// calls it after checking the CPU.
#include "cpu/combine_common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define UNIVL_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace univl {
namespace {

using namespace detail;

// Four elements widened to double.
UNIVL_AVX2 inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
UNIVL_AVX2 inline __m256d load4(const half_bits* p) {
  return _mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

UNIVL_AVX2 inline double hsum(__m256d v) {
  const __m128d lo = _mm256_castpd256_pd128(v);
  const __m128d hi = _mm256_extractf128_pd(v, 1);
  const __m128d s = _mm_add_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// Stores 4 floats; Stream: non-temporal (see combine_avx512.cpp). Needs 16-byte aligned p.
template <bool Stream>
UNIVL_AVX2 inline void store4(float* p, __m128 v) {
  if constexpr (Stream) {
    _mm_stream_ps(p, v);
  } else {
    _mm_storeu_ps(p, v);
  }
}

template <class TA, class TB>
struct Avx2Kernel {
  UNIVL_AVX2 static void rows(const CombineArgs& x, int64_t r0, int64_t r1) {
    if (x.stream_stores) {
      rows_impl<true>(x, r0, r1);
      _mm_sfence();  // make the streamed rows visible before the threads join
    } else {
      rows_impl<false>(x, r0, r1);
    }
  }

  template <bool Stream>
  UNIVL_AVX2 static void rows_impl(const CombineArgs& x, int64_t r0, int64_t r1) {
    const int64_t d = x.d;
    for (int64_t r = r0; r < r1; ++r) {
      const TA* a = row_ptr<TA>(x.a, r);
      const TB* b = row_ptr<TB>(x.b, r);
      float* o = x.out + r * x.out_row_stride;

      __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
      __m256d acc2 = _mm256_setzero_pd(), acc3 = _mm256_setzero_pd();
      int64_t j = 0;
      for (; j + 16 <= d; j += 16) {
        const __m256d s0 = _mm256_add_pd(load4(a + j), load4(b + j));
        const __m256d s1 = _mm256_add_pd(load4(a + j + 4), load4(b + j + 4));
        const __m256d s2 = _mm256_add_pd(load4(a + j + 8), load4(b + j + 8));
        const __m256d s3 = _mm256_add_pd(load4(a + j + 12), load4(b + j + 12));
        acc0 = _mm256_fmadd_pd(s0, s0, acc0);
        acc1 = _mm256_fmadd_pd(s1, s1, acc1);
        acc2 = _mm256_fmadd_pd(s2, s2, acc2);
        acc3 = _mm256_fmadd_pd(s3, s3, acc3);
      }
      for (; j + 4 <= d; j += 4) {
        const __m256d s = _mm256_add_pd(load4(a + j), load4(b + j));
        acc0 = _mm256_fmadd_pd(s, s, acc0);
      }
      double sumsq = hsum(_mm256_add_pd(_mm256_add_pd(acc0, acc1), _mm256_add_pd(acc2, acc3)));
      for (; j < d; ++j) {
        const double s = load_scalar(a + j) + load_scalar(b + j);
        sumsq += s * s;
      }

      const RowCase c = classify(sumsq);
      if (c != RowCase::kScale) {
        fill_special(o, d, c);
        continue;
      }
      const double inv_s = 1.0 / __builtin_sqrt(sumsq);
      const __m256d inv = _mm256_set1_pd(inv_s);
      j = 0;
      for (; j + 8 <= d; j += 8) {
        const __m256d s0 = _mm256_add_pd(load4(a + j), load4(b + j));
        const __m256d s1 = _mm256_add_pd(load4(a + j + 4), load4(b + j + 4));
        store4<Stream>(o + j, _mm256_cvtpd_ps(_mm256_mul_pd(s0, inv)));
        store4<Stream>(o + j + 4, _mm256_cvtpd_ps(_mm256_mul_pd(s1, inv)));
      }
      for (; j + 4 <= d; j += 4) {
        const __m256d s = _mm256_add_pd(load4(a + j), load4(b + j));
        store4<Stream>(o + j, _mm256_cvtpd_ps(_mm256_mul_pd(s, inv)));
      }
      for (; j < d; ++j) {
        o[j] = static_cast<float>((load_scalar(a + j) + load_scalar(b + j)) * inv_s);
      }
    }
  }
};

UNIVL_AVX2 void rows_avx2(const CombineArgs& x, int64_t r0, int64_t r1) {
  dispatch_dtypes<Avx2Kernel>(x, r0, r1);
}

}  // namespace

CombineRowsFn combine_rows_avx2() { return &rows_avx2; }

}  // namespace univl

#else
#error "combine_avx2.cpp is an x86-64 file: CMakeLists.txt lists it only for x86-64 builds"
#endif
