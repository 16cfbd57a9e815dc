// The native text tower's kernels (text_tower_kernels.h), compiled once per instruction set:
// included (once) by text_tower_generic.cpp (portable, scalar int8 GEMM, baseline target),
// text_tower_avx2.cpp (AVX2 + FMA + F16C; int8 GEMM through vpmaddwd) and text_tower_avx512.cpp
// (AVX-512 VNNI GEMM). The two x86 files are compiled whole with their ISA's flags.
// Not a normal header: the including file defines
//   UNIVL_TT_NS    the namespace the code goes into
//   UNIVL_TT_VNNI  1 for the AVX-512 VNNI kernels
//   UNIVL_TT_AVX2  1 for the AVX2 kernels (UNIVL_TT_VNNI 0)
// and neither for the portable one.
// LayerNorm, softmax and GELU are plain loops the compiler vectorises for the target it is built
// for; the GEMM, dot products, attention and activation quantization have intrinsics in the
// AVX-512 and AVX2 builds and plain loops in the portable one. Every build computes the same
// quantization and the same exact int32 GEMM; they differ only in float rounding.
//
// Rule (see text_tower_kernels.h): everything here has internal linkage (an unnamed namespace)
// and calls no inline function or template defined elsewhere: no std:: functions or containers,
// only builtins and intrinsics. In a file compiled for AVX-512 such a function would be emitted
// as AVX-512 code that the linker may pick for the whole module. tests/test_build_isa.py
// compiles the AVX-512 file at -O0 and fails on any external symbol other than its entry point.
#include <cstdint>

#include "cpu/text_tower_kernels.h"

#ifndef UNIVL_TT_VNNI
#define UNIVL_TT_VNNI 0
#endif
#ifndef UNIVL_TT_AVX2
#define UNIVL_TT_AVX2 0
#endif
#if UNIVL_TT_VNNI && UNIVL_TT_AVX2
#error "UNIVL_TT_VNNI and UNIVL_TT_AVX2 are exclusive"
#endif

#if UNIVL_TT_VNNI || UNIVL_TT_AVX2
// GCC 12's AVX-512 intrinsics initialise their "undefined" vectors from themselves, which warns
// once they are inlined into code built with -mavx512f (GCC bug 105593); nothing of ours.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#endif

namespace univl {
namespace UNIVL_TT_NS {
namespace {

constexpr int64_t kMR = 12;  // rows per micro-kernel call (2 x 12 accumulators)
constexpr int64_t kMC = 96;  // rows per chunk: a chunk of activations stays in L2 while the
                             // weight panels stream past it

// ------------------------------------------------------------------ scalar helpers
// Same results as std::max / std::min (NaN handling included), without their COMDAT copies.
inline float max_f(float a, float b) { return a < b ? b : a; }
inline float min_f(float a, float b) { return b < a ? b : a; }
inline int64_t min_i(int64_t a, int64_t b) { return b < a ? b : a; }

// ------------------------------------------------------------------ element-wise math
// exp(x) for every float x: Cephes-style range reduction + degree-6 polynomial (rel. err ~2e-7)
// on [kExpLo, kExpHi]; 0 below kExpLo (exp(-87) = 1.6e-38, the flush error is below FLT_MIN),
// +inf above kExpHi (the tower only ever passes x <= 0), NaN for NaN. The polynomial runs on
// the argument clamped into range (NaN -> kExpLo), so the exponent n is in [-126, 127] and
// (n + 127) << 23 always builds a normal float: no int32 overflow for any input.
constexpr float kExpLo = -87.0f, kExpHi = 88.0f;
inline float exp_poly(float x) {
  const float xc = x > kExpLo ? (x < kExpHi ? x : kExpHi) : kExpLo;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  __builtin_memcpy(&two_n, &bits, sizeof(float));
  float e = p * two_n;
  e = x < kExpLo ? 0.0f : e;
  e = x > kExpHi ? __builtin_inff() : e;
  return x == x ? e : x;
}

// erf(x), Abramowitz & Stegun 7.1.26 (abs. err <= 1.5e-7); +-1 at +-inf, NaN for NaN.
inline float erf_poly(float x) {
  const float ax = __builtin_fabsf(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_poly(-ax * ax);
  return x < 0.0f ? -y : y;
}

// Both as torch computes them in float32, including at +-inf: gelu(+inf) = quick_gelu(+inf) =
// +inf, gelu(-inf) = quick_gelu(-inf) = NaN (-inf * 0), NaN -> NaN.
inline float gelu(float x) { return 0.5f * x * (1.0f + erf_poly(x * 0.70710678118654752f)); }

// 1 / (1 + exp(-t)) through e = exp(-|t|) in [0, 1]: never overflows.
inline float sigmoid(float t) {
  const float e = exp_poly(-__builtin_fabsf(t));
  const float s = 1.0f / (1.0f + e);
  return t >= 0.0f ? s : e * s;
}
inline float quick_gelu(float x) { return x * sigmoid(1.702f * x); }

void activation(TextAct act, float* x, int64_t n) {
  if (act == TextAct::kGelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] = gelu(x[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] = quick_gelu(x[i]);
  }
}

// ------------------------------------------------------------------ vector primitives
#if UNIVL_TT_VNNI
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

inline float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

inline void axpy(float* y, float p, const float* x, int64_t n) {  // y += p * x
  const __m512 pv = _mm512_set1_ps(p);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(pv, xv, _mm512_maskz_loadu_ps(m, y + i)));
  }
}

inline void min_max(const float* x, int64_t n, float* lo, float* hi) {  // 0 included
  __m512 l = _mm512_setzero_ps(), h = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);  // masked lanes read 0
    l = _mm512_min_ps(l, v);
    h = _mm512_max_ps(h, v);
  }
  *lo = _mm512_reduce_min_ps(l);
  *hi = _mm512_reduce_max_ps(h);
}

inline void to_u8(const float* x, int64_t n, float inv, float z, uint8_t* q) {
  const __m512 iv = _mm512_set1_ps(inv), off = _mm512_set1_ps(z + 0.5f);
  const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), iv, off);
    v = _mm512_min_ps(top, _mm512_max_ps(zero, v));
    _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
  }
}
#elif UNIVL_TT_AVX2
// Lanes [0, min(left, 8)) all ones: the mask of AVX's maskload / maskstore.
inline __m256i tail_mask8(int64_t left) {
  const int32_t l = static_cast<int32_t>(left < 8 ? left : 8);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  if (i < n) {
    const __m256i m = tail_mask8(n - i);
    acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), acc);
  }
  return hsum8(acc);
}

inline void axpy(float* y, float p, const float* x, int64_t n) {  // y += p * x
  const __m256 pv = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  if (i < n) {
    const __m256i m = tail_mask8(n - i);
    const __m256 v = _mm256_fmadd_ps(pv, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m));
    _mm256_maskstore_ps(y + i, m, v);
  }
}

inline void min_max(const float* x, int64_t n, float* lo, float* hi) {  // 0 included
  __m256 l = _mm256_setzero_ps(), h = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_maskload_ps(x + i, tail_mask8(n - i));  // masked lanes read 0
    l = _mm256_min_ps(l, v);
    h = _mm256_max_ps(h, v);
  }
  __m128 l4 = _mm_min_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps(l, 1));
  __m128 h4 = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  l4 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4));
  h4 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
  *lo = _mm_cvtss_f32(_mm_min_ss(l4, _mm_movehdup_ps(l4)));
  *hi = _mm_cvtss_f32(_mm_max_ss(h4, _mm_movehdup_ps(h4)));
}

// 8 floats -> 8 bytes: clamp(x * inv + z + 0.5, 0, 255), truncated (as the other builds)
inline __m128i u8x8(__m256 x, __m256 iv, __m256 off) {
  __m256 v = _mm256_fmadd_ps(x, iv, off);
  v = _mm256_min_ps(_mm256_set1_ps(255.0f), _mm256_max_ps(_mm256_setzero_ps(), v));
  const __m256i i32 = _mm256_cvttps_epi32(v);
  const __m128i i16 =
      _mm_packus_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  return _mm_packus_epi16(i16, i16);  // low 8 bytes
}

inline void to_u8(const float* x, int64_t n, float inv, float z, uint8_t* q) {
  const __m256 iv = _mm256_set1_ps(inv), off = _mm256_set1_ps(z + 0.5f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), u8x8(_mm256_loadu_ps(x + i), iv, off));
  if (i < n) {
    alignas(16) uint8_t tail[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tail),
                    u8x8(_mm256_maskload_ps(x + i, tail_mask8(n - i)), iv, off));
    for (int64_t j = 0; i + j < n; ++j) q[i + j] = tail[j];
  }
}
#else
inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float* y, float p, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += p * x[i];
}

inline void min_max(const float* x, int64_t n, float* lo, float* hi) {
  float l = 0.0f, h = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    l = min_f(l, x[i]);
    h = max_f(h, x[i]);
  }
  *lo = l;
  *hi = h;
}

inline void to_u8(const float* x, int64_t n, float inv, float z, uint8_t* q) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = min_f(255.0f, max_f(0.0f, x[i] * inv + (z + 0.5f)));
    q[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
  }
}
#endif

// Row x (n floats) -> uint8 with one scale and an integer zero point: x ~ scale * (q - zero).
inline void quantize_row(const float* x, int64_t n, uint8_t* q, float* scale, int32_t* zero) {
  float lo, hi;  // 0 is always inside [lo, hi], so it is represented exactly
  min_max(x, n, &lo, &hi);
  float s = (hi - lo) / 255.0f;
  if (!(s > 0.0f)) s = 1.0f;
  const float z = min_f(255.0f, max_f(0.0f, __builtin_floorf(-lo / s + 0.5f)));
  to_u8(x, n, 1.0f / s, z, q);
  *scale = s;
  *zero = static_cast<int32_t>(z);
}

inline void layer_norm_row(const float* x, int64_t n, const float* w, const float* b, float eps,
                           float* y) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / static_cast<float>(n);
  float var = 0.0f;
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / __builtin_sqrtf(var / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

// ------------------------------------------------------------------ row stages
#if UNIVL_TT_VNNI
// dst = float(e) + pe, e: n float16 values
inline void add_half_row(const uint16_t* e, const float* pe, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 ev = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, e + i));
    _mm512_mask_storeu_ps(dst + i, m, _mm512_add_ps(ev, _mm512_maskz_loadu_ps(m, pe + i)));
  }
}
#endif

#if !UNIVL_TT_VNNI
// IEEE float16 -> float32, exact: exponent and mantissa moved into place and rescaled by 2^112
// (which also normalises subnormals); inf / NaN rebuilt.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t em = h & 0x7FFFu;
  uint32_t bits = em << 13;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  f *= 5.192296858534828e33f;  // 2^112
  __builtin_memcpy(&bits, &f, sizeof f);
  if (em >= 0x7C00u) bits = 0x7F800000u | ((em & 0x3FFu) << 13);
  bits |= static_cast<uint32_t>(h & 0x8000u) << 16;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}
#endif

#if UNIVL_TT_AVX2
inline void add_half_row(const uint16_t* e, const float* pe, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 ev = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e + i)));
    _mm256_storeu_ps(dst + i, _mm256_add_ps(ev, _mm256_loadu_ps(pe + i)));
  }
  for (; i < n; ++i) dst[i] = half_bits_to_float(e[i]) + pe[i];  // exact either way
}
#elif !UNIVL_TT_VNNI
inline void add_half_row(const uint16_t* e, const float* pe, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(e[i]) + pe[i];
}
#endif

void embed(const uint16_t* tok, const float* pos, const int64_t* ids, int64_t seq,
           const int64_t* len, const int64_t* off, int64_t d, int64_t b0, int64_t b1, float* x) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t t = 0; t < len[b]; ++t)
      add_half_row(tok + ids[b * seq + t] * d, pos + t * d, d, x + (off[b] + t) * d);
}

void ln_quant_rows(const float* x, int64_t r0, int64_t r1, int64_t d, const float* w,
                   const float* b, float eps, QRows a, float* scratch) {
  for (int64_t r = r0; r < r1; ++r) {
    layer_norm_row(x + r * d, d, w, b, eps, scratch);
    quantize_row(scratch, d, a.q + r * a.width, a.scale + r, a.zero + r);
  }
}

void ln_rows(const float* x, int64_t r0, int64_t r1, int64_t d, const float* w, const float* b,
             float eps, float* y) {
  for (int64_t r = r0; r < r1; ++r) layer_norm_row(x + r * d, d, w, b, eps, y + r * d);
}

void quant_rows(const float* x, int64_t r0, int64_t r1, int64_t d, QRows a) {
  for (int64_t r = r0; r < r1; ++r)
    quantize_row(x + r * d, d, a.q + r * a.width, a.scale + r, a.zero + r);
}

void act_quant_rows(float* x, int64_t r0, int64_t r1, int64_t d, TextAct act, QRows a) {
  for (int64_t r = r0; r < r1; ++r) {
    float* row = x + r * d;
    activation(act, row, d);
    quantize_row(row, d, a.q + r * a.width, a.scale + r, a.zero + r);
  }
}

// ------------------------------------------------------------------ int8 GEMM
// out[m][col] (+)= (acc - zero_m * colsum) * scale_m * w.scale + w.bias,
// acc = sum_k q[m][k] W[col][k]. The zero-point correction is exact in int32 (k <= kMaxK, see
// QLinear); only its result is rounded to float.
#if UNIVL_TT_VNNI
// int32 accumulators (rows x 32) -> float outputs: dequantize, bias, optional residual add.
void epilogue(const int32_t* acc, int rows, const float* sa, const int32_t* za,
              const QLinearView& w, int64_t col, GemmOut o) {
  for (int h = 0; h < 2; ++h) {
    const __m512i cs = _mm512_loadu_si512(w.colsum + col + 16 * h);
    const __m512 sw = _mm512_loadu_ps(w.scale + col + 16 * h);
    const __m512 bi = _mm512_loadu_ps(w.bias + col + 16 * h);
    for (int m = 0; m < rows; ++m) {
      const __m512i exact = _mm512_sub_epi32(_mm512_load_si512(acc + m * 32 + 16 * h),
                                             _mm512_mullo_epi32(_mm512_set1_epi32(za[m]), cs));
      __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact),
                                 _mm512_mul_ps(sw, _mm512_set1_ps(sa[m])), bi);
      float* dst = o.data + m * o.ld + col + 16 * h;
      if (o.accumulate) y = _mm512_add_ps(y, _mm512_loadu_ps(dst));
      _mm512_storeu_ps(dst, y);
    }
  }
}

// MR rows x 32 columns (two 16-column panels). pf: the next panel pair, prefetched while this
// one is computed (nullptr: no prefetch).
template <int MR>
void kernel_rows(const uint8_t* a, int64_t lda, const float* sa, const int32_t* za,
                 const int8_t* b0, int64_t k4, const QLinearView& w, int64_t col, GemmOut o,
                 const int8_t* pf) {
  const int8_t* b1 = b0 + k4 * 64;
  __m512i c0[MR], c1[MR];
  _Pragma("GCC unroll 16") for (int m = 0; m < MR; ++m) {
    c0[m] = _mm512_setzero_si512();
    c1[m] = _mm512_setzero_si512();
  }
  for (int64_t k = 0; k < k4; ++k) {
    const __m512i w0 = _mm512_loadu_si512(b0 + k * 64);
    const __m512i w1 = _mm512_loadu_si512(b1 + k * 64);
    if (pf) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + k * 128), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(pf + k * 128 + 64), _MM_HINT_T0);
    }
    _Pragma("GCC unroll 16") for (int m = 0; m < MR; ++m) {
      int32_t a4;
      __builtin_memcpy(&a4, a + m * lda + k * 4, 4);
      const __m512i av = _mm512_set1_epi32(a4);
      c0[m] = _mm512_dpbusd_epi32(c0[m], av, w0);
      c1[m] = _mm512_dpbusd_epi32(c1[m], av, w1);
    }
  }
  // Accumulators go through memory once: reading them directly in the epilogue below made
  // GCC 12 keep a stack copy of every accumulator inside the k loop (2x slower).
  alignas(64) int32_t acc[MR][32];
  _Pragma("GCC unroll 16") for (int m = 0; m < MR; ++m) {
    _mm512_store_si512(acc[m], c0[m]);
    _mm512_store_si512(acc[m] + 16, c1[m]);
  }
  epilogue(&acc[0][0], MR, sa, za, w, col, o);
}
using KernelFn = void (*)(const uint8_t*, int64_t, const float*, const int32_t*, const int8_t*,
                          int64_t, const QLinearView&, int64_t, GemmOut, const int8_t*);
const KernelFn kKernels[kMR + 1] = {nullptr,         kernel_rows<1>,  kernel_rows<2>,
                                    kernel_rows<3>,  kernel_rows<4>,  kernel_rows<5>,
                                    kernel_rows<6>,  kernel_rows<7>,  kernel_rows<8>,
                                    kernel_rows<9>,  kernel_rows<10>, kernel_rows<11>,
                                    kernel_rows<12>};

void panel_rows(const uint8_t* a, int64_t lda, const float* sa, const int32_t* za, int64_t rows,
                const int8_t* b0, int64_t k4, const QLinearView& w, int64_t col, GemmOut o,
                const int8_t* pf) {
  kKernels[rows](a, lda, sa, za, b0, k4, w, col, o, pf);
}
#elif UNIVL_TT_AVX2
// AVX2 has no u8 x s8 multiply that accumulates into int32 without saturating (vpmaddubsw
// saturates int16 pairs: 255 * 127 * 2 > 32767). So both operands are widened to int16 and
// multiplied by vpmaddwd (exact int32 pair sums). Weights: the same packed panels as the other
// builds ([16 columns][4 k] per k step); each thread sign-extends a chunk of one panel (kKC4 k
// steps, 8 KB) into int16 on its stack once and every row block reads it from L1 as vpmaddwd's
// memory operand (16 bytes = 4 columns x 4 k per ymm). Activations: the 4 uint8 of a k step
// zero-extended to int16 and repeated in every 64-bit lane. Each int32 lane then holds one
// column's sum over 2 of the 4 k; the pairs are added at the end. Measured on Zen 4 against the
// register-only vpmaddwd + vpaddd peak: bench/results/encode_avx2.md.
constexpr int64_t kMR2 = 3;    // rows per micro-kernel call (3 x 4 accumulators x 16 columns)
constexpr int64_t kKC4 = 64;   // k steps (of 4) per widened weight chunk: 64 x 64 int16 = 8 KB

// Four uint8 activations -> int16 (a0, a1, a2, a3) in each 64-bit lane.
inline __m256i spread_a4(const uint8_t* p) {
  int32_t a4;
  __builtin_memcpy(&a4, p, 4);
  const __m256i spread = _mm256_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1,
                                          0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1);
  return _mm256_shuffle_epi8(_mm256_set1_epi32(a4), spread);
}

// int32 accumulators (rows x 16) -> float outputs: dequantize, bias, optional residual add.
void epilogue16(const int32_t* acc, int64_t rows, const float* sa, const int32_t* za,
                const QLinearView& w, int64_t col, GemmOut o) {
  for (int h = 0; h < 2; ++h) {
    const int64_t c = col + 8 * h;
    const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.colsum + c));
    const __m256 sw = _mm256_loadu_ps(w.scale + c);
    const __m256 bi = _mm256_loadu_ps(w.bias + c);
    for (int64_t m = 0; m < rows; ++m) {
      const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc + m * 16 + 8 * h));
      const __m256i exact = _mm256_sub_epi32(a, _mm256_mullo_epi32(_mm256_set1_epi32(za[m]), cs));
      __m256 y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact),
                                 _mm256_mul_ps(sw, _mm256_set1_ps(sa[m])), bi);
      float* dst = o.data + m * o.ld + c;
      if (o.accumulate) y = _mm256_add_ps(y, _mm256_loadu_ps(dst));
      _mm256_storeu_ps(dst, y);
    }
  }
}

alignas(32) constexpr int8_t kSpreadA4[32] = {0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1,
                                             0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1};

// 3 rows x 16 columns over k4 steps of a widened chunk wb ([k4][16 columns][4] int16); acc: the
// rows' pair-lane accumulators (3 x 4 vectors), zero-started when `first`. Written in assembly:
// GCC 12 spilled the 12 accumulators of the intrinsics version to the stack in the k loop (a
// load and a store per multiply-add, 0.8x the speed). ymm0-11 accumulators, ymm12 the row's
// spread activations, ymm13-14 products, ymm15 the byte-spread pattern.
void kernel_rows16_3(const uint8_t* a, int64_t lda, const int16_t* wb, int64_t k4, __m256i* acc,
                     bool first) {
  const int64_t first_l = first ? 1 : 0;
  __asm__ volatile(
      "vmovdqa %[spread], %%ymm15\n\t"
      "test %[first], %[first]\n\t"
      "jz 2f\n\t"
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
      "vpxor %%xmm6, %%xmm6, %%xmm6\n\t vpxor %%xmm7, %%xmm7, %%xmm7\n\t"
      "vpxor %%xmm8, %%xmm8, %%xmm8\n\t vpxor %%xmm9, %%xmm9, %%xmm9\n\t"
      "vpxor %%xmm10, %%xmm10, %%xmm10\n\t vpxor %%xmm11, %%xmm11, %%xmm11\n\t"
      "jmp 3f\n"
      "2:\n\t"
      "vmovdqa (%[acc]), %%ymm0\n\t vmovdqa 32(%[acc]), %%ymm1\n\t"
      "vmovdqa 64(%[acc]), %%ymm2\n\t vmovdqa 96(%[acc]), %%ymm3\n\t"
      "vmovdqa 128(%[acc]), %%ymm4\n\t vmovdqa 160(%[acc]), %%ymm5\n\t"
      "vmovdqa 192(%[acc]), %%ymm6\n\t vmovdqa 224(%[acc]), %%ymm7\n\t"
      "vmovdqa 256(%[acc]), %%ymm8\n\t vmovdqa 288(%[acc]), %%ymm9\n\t"
      "vmovdqa 320(%[acc]), %%ymm10\n\t vmovdqa 352(%[acc]), %%ymm11\n"
      "3:\n\t"
      "test %[k4], %[k4]\n\t"
      "jle 5f\n"
      "4:\n\t"
      "vpbroadcastd (%[a]), %%ymm12\n\t"
      "vpshufb %%ymm15, %%ymm12, %%ymm12\n\t"
      "vpmaddwd (%[w]), %%ymm12, %%ymm13\n\t vpaddd %%ymm13, %%ymm0, %%ymm0\n\t"
      "vpmaddwd 32(%[w]), %%ymm12, %%ymm14\n\t vpaddd %%ymm14, %%ymm1, %%ymm1\n\t"
      "vpmaddwd 64(%[w]), %%ymm12, %%ymm13\n\t vpaddd %%ymm13, %%ymm2, %%ymm2\n\t"
      "vpmaddwd 96(%[w]), %%ymm12, %%ymm14\n\t vpaddd %%ymm14, %%ymm3, %%ymm3\n\t"
      "vpbroadcastd (%[a], %[lda]), %%ymm12\n\t"
      "vpshufb %%ymm15, %%ymm12, %%ymm12\n\t"
      "vpmaddwd (%[w]), %%ymm12, %%ymm13\n\t vpaddd %%ymm13, %%ymm4, %%ymm4\n\t"
      "vpmaddwd 32(%[w]), %%ymm12, %%ymm14\n\t vpaddd %%ymm14, %%ymm5, %%ymm5\n\t"
      "vpmaddwd 64(%[w]), %%ymm12, %%ymm13\n\t vpaddd %%ymm13, %%ymm6, %%ymm6\n\t"
      "vpmaddwd 96(%[w]), %%ymm12, %%ymm14\n\t vpaddd %%ymm14, %%ymm7, %%ymm7\n\t"
      "vpbroadcastd (%[a], %[lda], 2), %%ymm12\n\t"
      "vpshufb %%ymm15, %%ymm12, %%ymm12\n\t"
      "vpmaddwd (%[w]), %%ymm12, %%ymm13\n\t vpaddd %%ymm13, %%ymm8, %%ymm8\n\t"
      "vpmaddwd 32(%[w]), %%ymm12, %%ymm14\n\t vpaddd %%ymm14, %%ymm9, %%ymm9\n\t"
      "vpmaddwd 64(%[w]), %%ymm12, %%ymm13\n\t vpaddd %%ymm13, %%ymm10, %%ymm10\n\t"
      "vpmaddwd 96(%[w]), %%ymm12, %%ymm14\n\t vpaddd %%ymm14, %%ymm11, %%ymm11\n\t"
      "add $4, %[a]\n\t"
      "sub $-128, %[w]\n\t"
      "dec %[k4]\n\t"
      "jnz 4b\n"
      "5:\n\t"
      "vmovdqa %%ymm0, (%[acc])\n\t vmovdqa %%ymm1, 32(%[acc])\n\t"
      "vmovdqa %%ymm2, 64(%[acc])\n\t vmovdqa %%ymm3, 96(%[acc])\n\t"
      "vmovdqa %%ymm4, 128(%[acc])\n\t vmovdqa %%ymm5, 160(%[acc])\n\t"
      "vmovdqa %%ymm6, 192(%[acc])\n\t vmovdqa %%ymm7, 224(%[acc])\n\t"
      "vmovdqa %%ymm8, 256(%[acc])\n\t vmovdqa %%ymm9, 288(%[acc])\n\t"
      "vmovdqa %%ymm10, 320(%[acc])\n\t vmovdqa %%ymm11, 352(%[acc])\n\t"
      : [a] "+r"(a), [w] "+r"(wb), [k4] "+r"(k4)
      : [lda] "r"(lda), [acc] "r"(acc), [first] "r"(first_l), [spread] "m"(kSpreadA4)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
        "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

// MR (1 or 2: the last rows of a chunk) rows x 16 columns, as kernel_rows16_3.
template <int MR>
void kernel_rows16(const uint8_t* a, int64_t lda, const int16_t* wb, int64_t k4, __m256i* acc,
                   bool first) {
  __m256i c[MR][4];
  _Pragma("GCC unroll 4") for (int m = 0; m < MR; ++m) {
    _Pragma("GCC unroll 4") for (int j = 0; j < 4; ++j) c[m][j] =
        first ? _mm256_setzero_si256() : _mm256_load_si256(acc + m * 4 + j);
  }
  for (int64_t k = 0; k < k4; ++k) {
    const __m256i* wk = reinterpret_cast<const __m256i*>(wb + k * 64);
    // row by row, each weight vector read from L1 as the multiply's operand: 12 accumulators
    // and one activation vector live, nothing spilled
    _Pragma("GCC unroll 4") for (int m = 0; m < MR; ++m) {
      const __m256i av = spread_a4(a + m * lda + k * 4);
      _Pragma("GCC unroll 4") for (int j = 0; j < 4; ++j) c[m][j] =
          _mm256_add_epi32(c[m][j], _mm256_madd_epi16(_mm256_load_si256(wk + j), av));
    }
  }
  _Pragma("GCC unroll 4") for (int m = 0; m < MR; ++m) {
    _Pragma("GCC unroll 4") for (int j = 0; j < 4; ++j) _mm256_store_si256(acc + m * 4 + j,
                                                                             c[m][j]);
  }
}

// Panels [2 p0, 2 p1) (16 columns each) for `rows` rows: per chunk of kMC rows and panel, the
// panel is widened chunk by chunk (prefetching the next panel's bytes while the first row
// chunk widens it) and every row block accumulates over it; then pairs are summed and the
// epilogue writes the outputs.
void qgemm(const QLinearView& w, int64_t p0, int64_t p1, const QRows& a, int64_t rows,
           GemmOut o) {
  const int64_t k4 = w.k / 4, panels = w.n / 16;
  alignas(32) int16_t wb[kKC4 * 64];
  alignas(32) __m256i acc[kMC * 4];
  alignas(32) int32_t sums[kMC * 16];
  for (int64_t m0 = 0; m0 < rows; m0 += kMC) {
    const int64_t mc = min_i(kMC, rows - m0);
    const uint8_t* am = a.q + m0 * a.width;
    for (int64_t panel = 2 * p0; panel < 2 * p1; ++panel) {
      const int8_t* b = w.packed + panel * k4 * 64;
      const int8_t* next = (m0 == 0 && panel + 1 < panels) ? b + k4 * 64 : nullptr;
      for (int64_t kc0 = 0; kc0 < k4; kc0 += kKC4) {
        const int64_t kc = min_i(kKC4, k4 - kc0);
        for (int64_t s = 0; s < kc; ++s) {
          const int8_t* src = b + (kc0 + s) * 64;
          if (next) _mm_prefetch(reinterpret_cast<const char*>(next + (kc0 + s) * 64), _MM_HINT_T0);
          _Pragma("GCC unroll 4") for (int j = 0; j < 4; ++j) _mm256_store_si256(
              reinterpret_cast<__m256i*>(wb + s * 64 + 16 * j),
              _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * j))));
        }
        const uint8_t* ak = am + kc0 * 4;
        const bool first = kc0 == 0;
        int64_t r = 0;
        for (; r + kMR2 <= mc; r += kMR2)
          kernel_rows16_3(ak + r * a.width, a.width, wb, kc, acc + r * 4, first);
        if (mc - r == 2) kernel_rows16<2>(ak + r * a.width, a.width, wb, kc, acc + r * 4, first);
        else if (mc - r == 1) kernel_rows16<1>(ak + r * a.width, a.width, wb, kc, acc + r * 4, first);
      }
      // lanes (col, k 0-1), (col, k 2-3) -> one sum per column, in column order
      for (int64_t m = 0; m < mc; ++m) {
        const __m256i* c = acc + m * 4;
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums + m * 16),
                           _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[0], c[1]), 0xD8));
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums + m * 16 + 8),
                           _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[2], c[3]), 0xD8));
      }
      const GemmOut om{o.data + m0 * o.ld, o.ld, o.accumulate};
      epilogue16(sums, mc, a.scale + m0, a.zero + m0, w, panel * 16, om);
    }
  }
}
#else
// Portable: the same packed layout, plain loops.
void panel_rows(const uint8_t* a, int64_t lda, const float* sa, const int32_t* za, int64_t rows,
                const int8_t* b0, int64_t k4, const QLinearView& w, int64_t col, GemmOut o,
                const int8_t* /*pf*/) {
  for (int64_t m = 0; m < rows; ++m) {
    int32_t acc[32] = {0};
    for (int64_t half = 0; half < 2; ++half) {
      const int8_t* bp = b0 + half * k4 * 64;
      for (int64_t k = 0; k < k4; ++k) {
        const uint8_t* ak = a + m * lda + k * 4;
        const int8_t* bk = bp + k * 64;
        for (int c = 0; c < 16; ++c) {
          int32_t s = 0;
          for (int j = 0; j < 4; ++j) s += static_cast<int32_t>(ak[j]) * bk[c * 4 + j];
          acc[half * 16 + c] += s;
        }
      }
    }
    float* dst = o.data + m * o.ld + col;
    for (int c = 0; c < 32; ++c) {
      const int32_t exact = acc[c] - za[m] * w.colsum[col + c];
      const float y =
          static_cast<float>(exact) * (w.scale[col + c] * sa[m]) + w.bias[col + c];
      dst[c] = o.accumulate ? dst[c] + y : y;
    }
  }
}
#endif

#if !UNIVL_TT_AVX2  // (the AVX2 build has its own, above)
// Each thread streams its own contiguous range of panel pairs, prefetching the next pair while
// it computes (rows in chunks of kMC).
void qgemm(const QLinearView& w, int64_t p0, int64_t p1, const QRows& a, int64_t rows,
           GemmOut o) {
  const int64_t k4 = w.k / 4, pairs = w.n / 32;
  const int8_t* packed = w.packed;
  for (int64_t m0 = 0; m0 < rows; m0 += kMC) {
    const int64_t mc = min_i(kMC, rows - m0);
    for (int64_t p = p0; p < p1; ++p) {
      const int8_t* b0 = packed + p * k4 * 128;
      const int8_t* pf = (m0 == 0 && p + 1 < pairs) ? b0 + k4 * 128 : nullptr;
      for (int64_t r = 0; r < mc; r += kMR) {
        const int64_t m = m0 + r;
        const GemmOut om{o.data + m * o.ld, o.ld, o.accumulate};
        panel_rows(a.q + m * a.width, a.width, a.scale + m, a.zero + m, min_i(kMR, mc - r), b0,
                   k4, w, p * 32, om, r == 0 ? pf : nullptr);
      }
    }
  }
}
#endif

// ------------------------------------------------------------------ attention
// Multi-head attention over packed rows, causal or full (see TextKernels::attention).
// Per (sequence, head) the keys are first transposed into kt (hd x ldk, ldk = n rounded up to
// 16, pre-scaled by 1/sqrt(hd), padding zero): a query's scores are then hd FMAs per 16 keys,
// accumulated in registers, instead of n dot products that each end in a horizontal reduction;
// the weighted sum of the values likewise keeps its output row in registers.
constexpr int64_t kKeyBlock = 64;  // keys per register block of scores (4 or 8 vectors)

#if UNIVL_TT_VNNI || UNIVL_TT_AVX2
// The vector words the attention loops below are written in, per ISA: VecF holds kVecW floats;
// vmask(left) selects the lanes < left (none when left <= 0).
#if UNIVL_TT_VNNI
using VecF = __m512;
using VecMask = __mmask16;
constexpr int64_t kVecW = 16;
inline VecF vzero() { return _mm512_setzero_ps(); }
inline VecF vset1(float x) { return _mm512_set1_ps(x); }
inline VecF vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, VecF v) { _mm512_storeu_ps(p, v); }
inline VecF vfmadd(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline VecF vadd(VecF a, VecF b) { return _mm512_add_ps(a, b); }
inline VecF vmul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
inline VecMask vmask(int64_t left) { return left > 0 ? tail_mask(left) : static_cast<VecMask>(0); }
inline VecF vload_masked(const float* p, VecMask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void vstore_masked(float* p, VecMask m, VecF v) { _mm512_mask_storeu_ps(p, m, v); }
#else
using VecF = __m256;
using VecMask = __m256i;
constexpr int64_t kVecW = 8;
inline VecF vzero() { return _mm256_setzero_ps(); }
inline VecF vset1(float x) { return _mm256_set1_ps(x); }
inline VecF vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, VecF v) { _mm256_storeu_ps(p, v); }
inline VecF vfmadd(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline VecF vadd(VecF a, VecF b) { return _mm256_add_ps(a, b); }
inline VecF vmul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
inline VecMask vmask(int64_t left) { return tail_mask8(left); }
inline VecF vload_masked(const float* p, VecMask m) { return _mm256_maskload_ps(p, m); }
inline void vstore_masked(float* p, VecMask m, VecF v) { _mm256_maskstore_ps(p, m, v); }
#endif

// s[0, kVecW * NV) = q . kt[:, 0, kVecW * NV) (hd terms each)
template <int NV>
void score_block(const float* q, const float* kt, int64_t hd, int64_t ldk, float* s) {
  VecF acc[NV];
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[v] = vzero();
  for (int64_t t = 0; t < hd; ++t) {
    const VecF qt = vset1(q[t]);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[v] =
        vfmadd(qt, vload(kt + t * ldk + kVecW * v), acc[v]);
  }
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) vstore(s + kVecW * v, acc[v]);
}

inline void query_scores(const float* q, const float* kt, int64_t hd, int64_t ldk, float* s) {
  // ldk is a multiple of 16: blocks of 64, 48, 32 or 16 keys
  constexpr int kNV = static_cast<int>(kKeyBlock / kVecW);
  for (int64_t j = 0; j < ldk; j += kKeyBlock) {
    const int64_t nv = min_i(kKeyBlock, ldk - j) / kVecW;
    if (nv == kNV) score_block<kNV>(q, kt + j, hd, ldk, s + j);
    else if (nv == kNV * 3 / 4) score_block<kNV * 3 / 4>(q, kt + j, hd, ldk, s + j);
    else if (nv == kNV / 2) score_block<kNV / 2>(q, kt + j, hd, ldk, s + j);
    else score_block<kNV / 4>(q, kt + j, hd, ldk, s + j);
  }
}

// o[0, hd) = inv * sum_{j < keys} p[j] * v_j, v_j = v + j * ldv; hd in blocks of 4 vectors
// (masked tail), two accumulator sets (even / odd j) so the FMA chains overlap.
inline void weighted_sum(const float* p, float inv, const float* v, int64_t ldv, int64_t keys,
                         int64_t hd, float* o) {
  for (int64_t t0 = 0; t0 < hd; t0 += 4 * kVecW) {
    VecMask m[4];
    VecF a[4], b[4];
    for (int u = 0; u < 4; ++u) {
      m[u] = vmask(hd - t0 - kVecW * u);
      a[u] = vzero();
      b[u] = vzero();
    }
    int64_t j = 0;
    for (; j + 1 < keys; j += 2) {
      const VecF p0 = vset1(p[j]), p1 = vset1(p[j + 1]);
      const float* v0 = v + j * ldv + t0;
      const float* v1 = v0 + ldv;
      _Pragma("GCC unroll 4") for (int u = 0; u < 4; ++u) {
        a[u] = vfmadd(p0, vload_masked(v0 + kVecW * u, m[u]), a[u]);
        b[u] = vfmadd(p1, vload_masked(v1 + kVecW * u, m[u]), b[u]);
      }
    }
    if (j < keys) {
      const VecF p0 = vset1(p[j]);
      const float* v0 = v + j * ldv + t0;
      _Pragma("GCC unroll 4") for (int u = 0; u < 4; ++u) a[u] =
          vfmadd(p0, vload_masked(v0 + kVecW * u, m[u]), a[u]);
    }
    const VecF iv = vset1(inv);
    _Pragma("GCC unroll 4") for (int u = 0; u < 4; ++u) vstore_masked(
        o + t0 + kVecW * u, m[u], vmul(vadd(a[u], b[u]), iv));
  }
}
#else
inline void query_scores(const float* q, const float* kt, int64_t hd, int64_t ldk, float* s) {
  for (int64_t j = 0; j < ldk; ++j) s[j] = 0.0f;
  for (int64_t t = 0; t < hd; ++t) {
    const float qt = q[t];
    const float* kr = kt + t * ldk;
#pragma omp simd
    for (int64_t j = 0; j < ldk; ++j) s[j] += qt * kr[j];
  }
}

inline void weighted_sum(const float* p, float inv, const float* v, int64_t ldv, int64_t keys,
                         int64_t hd, float* o) {
  for (int64_t t = 0; t < hd; ++t) o[t] = 0.0f;
  for (int64_t j = 0; j < keys; ++j) axpy(o, p[j], v + j * ldv, hd);
  for (int64_t t = 0; t < hd; ++t) o[t] *= inv;
}
#endif

void attention(const float* qkv, int64_t d, int64_t heads, const int64_t* len,
               const int64_t* off, bool causal, bool pooled_only, int64_t j0, int64_t j1,
               float* out, float* scratch) {
  const int64_t hd = d / heads;
  const float scale = 1.0f / __builtin_sqrtf(static_cast<float>(hd));
  for (int64_t job = j0; job < j1; ++job) {
    const int64_t b = job / heads, h = job % heads, n = len[b], base = off[b];
    const int64_t ldk = (n + 15) / 16 * 16;
    float* kt = scratch;             // hd x ldk
    float* scores = scratch + hd * ldk;  // ldk
    for (int64_t j = 0; j < n; ++j) {
      const float* k = qkv + (base + j) * 3 * d + d + h * hd;
      for (int64_t t = 0; t < hd; ++t) kt[t * ldk + j] = k[t] * scale;
    }
    for (int64_t t = 0; t < hd; ++t)
      for (int64_t j = n; j < ldk; ++j) kt[t * ldk + j] = 0.0f;
    for (int64_t i = pooled_only ? n - 1 : 0; i < n; ++i) {
      const int64_t keys = causal ? i + 1 : n;  // rows [0, keys) are attended to
      query_scores(qkv + (base + i) * 3 * d + h * hd, kt, hd, ldk, scores);
      float mx = -__builtin_inff();
      for (int64_t j = 0; j < keys; ++j) mx = max_f(mx, scores[j]);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < keys; ++j) {
        scores[j] = exp_poly(scores[j] - mx);
        sum += scores[j];
      }
      float* o = (pooled_only ? out + b * d : out + (base + i) * d) + h * hd;
      weighted_sum(scores, 1.0f / sum, qkv + base * 3 * d + 2 * d + h * hd, 3 * d, keys, hd, o);
    }
  }
}

constexpr TextKernels kTextKernels{&embed,      &ln_quant_rows, &quant_rows, &act_quant_rows,
                                   &activation, &qgemm,         &attention,  &ln_rows};

}  // namespace
}  // namespace UNIVL_TT_NS
}  // namespace univl
