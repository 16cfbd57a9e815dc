// AVX-512 (F/BW/VL/DQ) combine kernel: 8 doubles per register, masked tails. Compiled with
// function target attributes; combine.cpp only calls it after checking the CPU.
#include "cpu/combine_common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define UNIVL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

namespace univl {
namespace {

using namespace detail;

// Eight elements widened to double; the masked forms read only the lanes in m (no fault past
// the end of a row).
UNIVL_AVX512 inline __m512d load8(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
UNIVL_AVX512 inline __m512d load8(const half_bits* p) {
  return _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
UNIVL_AVX512 inline __m512d load8(const float* p, __mmask8 m) {
  return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, p));
}
UNIVL_AVX512 inline __m512d load8(const half_bits* p, __mmask8 m) {
  return _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_maskz_loadu_epi16(m, p)));
}

// Stores 8 floats; Stream: non-temporal (bypasses the cache, saves the read-for-ownership of the
// destination line), for outputs too large to stay in cache. Needs 16-byte aligned p.
template <bool Stream>
UNIVL_AVX512 inline void store8(float* p, __m256 v) {
  if constexpr (Stream) {
    _mm_stream_ps(p, _mm256_castps256_ps128(v));
    _mm_stream_ps(p + 4, _mm256_extractf128_ps(v, 1));
  } else {
    _mm256_storeu_ps(p, v);
  }
}

template <class TA, class TB>
struct Avx512Kernel {
  UNIVL_AVX512 static void rows(const CombineArgs& x, int64_t r0, int64_t r1) {
    if (x.stream_stores) {
      rows_impl<true>(x, r0, r1);
      _mm_sfence();  // make the streamed rows visible before the threads join
    } else {
      rows_impl<false>(x, r0, r1);
    }
  }

  template <bool Stream>
  UNIVL_AVX512 static void rows_impl(const CombineArgs& x, int64_t r0, int64_t r1) {
    const int64_t d = x.d;
    const int64_t tail = d & 7;
    const __mmask8 tail_mask = static_cast<__mmask8>((1u << tail) - 1u);
    for (int64_t r = r0; r < r1; ++r) {
      const TA* a = row_ptr<TA>(x.a, r);
      const TB* b = row_ptr<TB>(x.b, r);
      float* o = x.out + r * x.out_row_stride;

      __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
      __m512d acc2 = _mm512_setzero_pd(), acc3 = _mm512_setzero_pd();
      int64_t j = 0;
      for (; j + 32 <= d; j += 32) {
        const __m512d s0 = _mm512_add_pd(load8(a + j), load8(b + j));
        const __m512d s1 = _mm512_add_pd(load8(a + j + 8), load8(b + j + 8));
        const __m512d s2 = _mm512_add_pd(load8(a + j + 16), load8(b + j + 16));
        const __m512d s3 = _mm512_add_pd(load8(a + j + 24), load8(b + j + 24));
        acc0 = _mm512_fmadd_pd(s0, s0, acc0);
        acc1 = _mm512_fmadd_pd(s1, s1, acc1);
        acc2 = _mm512_fmadd_pd(s2, s2, acc2);
        acc3 = _mm512_fmadd_pd(s3, s3, acc3);
      }
      for (; j + 8 <= d; j += 8) {
        const __m512d s = _mm512_add_pd(load8(a + j), load8(b + j));
        acc0 = _mm512_fmadd_pd(s, s, acc0);
      }
      if (tail) {
        const __m512d s = _mm512_add_pd(load8(a + j, tail_mask), load8(b + j, tail_mask));
        acc1 = _mm512_fmadd_pd(s, s, acc1);
      }
      const double sumsq =
          _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc0, acc1), _mm512_add_pd(acc2, acc3)));

      const RowCase c = classify(sumsq);
      if (c != RowCase::kScale) {
        fill_special(o, d, c);
        continue;
      }
      const __m512d inv = _mm512_set1_pd(1.0 / __builtin_sqrt(sumsq));
      j = 0;
      for (; j + 16 <= d; j += 16) {
        const __m512d s0 = _mm512_add_pd(load8(a + j), load8(b + j));
        const __m512d s1 = _mm512_add_pd(load8(a + j + 8), load8(b + j + 8));
        store8<Stream>(o + j, _mm512_cvtpd_ps(_mm512_mul_pd(s0, inv)));
        store8<Stream>(o + j + 8, _mm512_cvtpd_ps(_mm512_mul_pd(s1, inv)));
      }
      for (; j + 8 <= d; j += 8) {
        const __m512d s = _mm512_add_pd(load8(a + j), load8(b + j));
        store8<Stream>(o + j, _mm512_cvtpd_ps(_mm512_mul_pd(s, inv)));
      }
      if (tail) {
        const __m512d s = _mm512_add_pd(load8(a + j, tail_mask), load8(b + j, tail_mask));
        _mm256_mask_storeu_ps(o + j, tail_mask, _mm512_cvtpd_ps(_mm512_mul_pd(s, inv)));
      }
    }
  }
};

UNIVL_AVX512 void rows_avx512(const CombineArgs& x, int64_t r0, int64_t r1) {
  dispatch_dtypes<Avx512Kernel>(x, r0, r1);
}

}  // namespace

CombineRowsFn combine_rows_avx512() { return &rows_avx512; }

}  // namespace univl

#else
#error "combine_avx512.cpp is an x86-64 file: CMakeLists.txt lists it only for x86-64 builds"
#endif
