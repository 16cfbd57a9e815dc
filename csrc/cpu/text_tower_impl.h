// The native text tower's forward pass, compiled once per instruction set: included (once) by
// text_tower_generic.cpp (portable, scalar int8 GEMM) and text_tower_avx512.cpp (AVX-512 VNNI
// GEMM, whole file built for AVX-512). Not a normal header: the including file defines
//   UNIVL_TT_NS    the namespace the code goes into
//   UNIVL_TT_VNNI  1 for the VNNI GEMM kernel, 0 for the portable one
// LayerNorm, softmax and GELU are plain loops the compiler vectorises for the target it is built
// for; the GEMM, dot products and activation quantization have AVX-512 intrinsics in the VNNI
// build and plain loops in the portable one.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "cpu/text_tower.h"

#if UNIVL_TT_VNNI
#include <immintrin.h>
#endif
#include "cpu/team.h"

namespace univl {
namespace UNIVL_TT_NS {
namespace {

constexpr int64_t kMR = 12;  // rows per micro-kernel call (2 x 12 accumulators)
constexpr int64_t kMC = 96;  // rows per chunk: a chunk of activations stays in L2 while the
                             // weight panels stream past it

// ------------------------------------------------------------------ element-wise math
// exp(x) for x <= 88: Cephes-style range reduction + degree-6 polynomial (rel. err ~2e-7).
inline float exp_poly(float x) {
  x = std::max(x, -87.0f);
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}

// erf(x), Abramowitz & Stegun 7.1.26 (abs. err <= 1.5e-7).
inline float erf_poly(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_poly(-ax * ax);
  return x < 0.0f ? -y : y;
}

inline float gelu(float x) { return 0.5f * x * (1.0f + erf_poly(x * 0.70710678118654752f)); }
inline float quick_gelu(float x) { return x / (1.0f + exp_poly(-1.702f * x)); }

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
    l = std::min(l, x[i]);
    h = std::max(h, x[i]);
  }
  *lo = l;
  *hi = h;
}

inline void to_u8(const float* x, int64_t n, float inv, float z, uint8_t* q) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::min(255.0f, std::max(0.0f, x[i] * inv + (z + 0.5f)));
    q[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
  }
}
#endif

// Row x (n floats) -> uint8 with one scale and zero point: x ~ scale * (q - zero).
inline void quantize_row(const float* x, int64_t n, uint8_t* q, float* scale, float* zero) {
  float lo, hi;  // 0 is always inside [lo, hi], so it is represented exactly
  min_max(x, n, &lo, &hi);
  float s = (hi - lo) / 255.0f;
  if (!(s > 0.0f)) s = 1.0f;
  const float z = std::min(255.0f, std::max(0.0f, std::floor(-lo / s + 0.5f)));
  to_u8(x, n, 1.0f / s, z, q);
  *scale = s;
  *zero = z;
}

inline void layer_norm_row(const float* x, int64_t n, const LayerNormW& ln, float eps, float* y) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / static_cast<float>(n);
  float var = 0.0f;
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / std::sqrt(var / static_cast<float>(n) + eps);
  const float* w = ln.w.data();
  const float* b = ln.b.data();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

// ------------------------------------------------------------------ activations of a GEMM
struct QRows {
  uint8_t* q;  // rows x width
  float* scale;
  float* zero;
  int64_t width;
};

// Which member of the team runs this code. Every member calls every function below, in the
// same order; each takes its share of the work (contiguous, static) and ends at a barrier.
struct Ctx {
  Team* team;  // nullptr: running alone
  int tid, nt;
  void range(int64_t n, int64_t& begin, int64_t& end) const {
    begin = n * tid / nt;
    end = n * (tid + 1) / nt;
  }
  void sync() const {
    if (nt > 1) team->barrier();
  }
};

void ln_quant_rows(const Ctx& c, const float* x, int64_t rows, int64_t d, const LayerNormW& ln,
                   float eps, QRows a, float* scratch) {
  int64_t r0, r1;
  c.range(rows, r0, r1);
  for (int64_t r = r0; r < r1; ++r) {
    layer_norm_row(x + r * d, d, ln, eps, scratch);
    quantize_row(scratch, d, a.q + r * a.width, a.scale + r, a.zero + r);
  }
  c.sync();
}

void quant_rows(const Ctx& c, const float* x, int64_t rows, int64_t d, QRows a) {
  int64_t r0, r1;
  c.range(rows, r0, r1);
  for (int64_t r = r0; r < r1; ++r)
    quantize_row(x + r * d, d, a.q + r * a.width, a.scale + r, a.zero + r);
  c.sync();
}

void act_quant_rows(const Ctx& c, float* x, int64_t rows, int64_t d, TextAct act, QRows a) {
  int64_t r0, r1;
  c.range(rows, r0, r1);
  for (int64_t r = r0; r < r1; ++r) {
    float* row = x + r * d;
    if (act == TextAct::kGelu) {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) row[i] = gelu(row[i]);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) row[i] = quick_gelu(row[i]);
    }
    quantize_row(row, d, a.q + r * a.width, a.scale + r, a.zero + r);
  }
  c.sync();
}

// ------------------------------------------------------------------ int8 GEMM
// out[m][col] (+)= (acc - zero_m * colsum) * scale_m * w.scale + w.bias,
// acc = sum_k q[m][k] W[col][k]
struct GemmOut {
  float* data;
  int64_t ld;
  bool accumulate;  // add into out (residual connections) instead of overwriting it
};

#if UNIVL_TT_VNNI
// int32 accumulators (rows x 32) -> float outputs: dequantize, bias, optional residual add.
void epilogue(const int32_t* acc, int rows, const float* sa, const float* za, const QLinear& w,
              int64_t col, GemmOut o) {
  for (int h = 0; h < 2; ++h) {
    const __m512 cs = _mm512_loadu_ps(w.colsum.data() + col + 16 * h);
    const __m512 sw = _mm512_loadu_ps(w.scale.data() + col + 16 * h);
    const __m512 bi = _mm512_loadu_ps(w.bias.data() + col + 16 * h);
    for (int m = 0; m < rows; ++m) {
      const __m512 acc_f = _mm512_cvtepi32_ps(_mm512_load_si512(acc + m * 32 + 16 * h));
      __m512 y = _mm512_fmadd_ps(_mm512_fnmadd_ps(_mm512_set1_ps(za[m]), cs, acc_f),
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
void kernel_rows(const uint8_t* a, int64_t lda, const float* sa, const float* za,
                 const int8_t* b0, int64_t k4, const QLinear& w, int64_t col, GemmOut o,
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
      std::memcpy(&a4, a + m * lda + k * 4, 4);
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
using KernelFn = void (*)(const uint8_t*, int64_t, const float*, const float*, const int8_t*,
                          int64_t, const QLinear&, int64_t, GemmOut, const int8_t*);
const KernelFn kKernels[kMR + 1] = {nullptr,         kernel_rows<1>,  kernel_rows<2>,
                                    kernel_rows<3>,  kernel_rows<4>,  kernel_rows<5>,
                                    kernel_rows<6>,  kernel_rows<7>,  kernel_rows<8>,
                                    kernel_rows<9>,  kernel_rows<10>, kernel_rows<11>,
                                    kernel_rows<12>};

void panel_rows(const uint8_t* a, int64_t lda, const float* sa, const float* za, int64_t rows,
                const int8_t* b0, int64_t k4, const QLinear& w, int64_t col, GemmOut o,
                const int8_t* pf) {
  kKernels[rows](a, lda, sa, za, b0, k4, w, col, o, pf);
}
#else
// Portable: the same packed layout, plain loops.
void panel_rows(const uint8_t* a, int64_t lda, const float* sa, const float* za, int64_t rows,
                const int8_t* b0, int64_t k4, const QLinear& w, int64_t col, GemmOut o,
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
      float y = (static_cast<float>(acc[c]) - za[m] * w.colsum[col + c]) *
                    (w.scale[col + c] * sa[m]) +
                w.bias[col + c];
      dst[c] = o.accumulate ? dst[c] + y : y;
    }
  }
}
#endif

// Panel pairs are split over the team; each thread streams its own contiguous range of the
// packed weights, prefetching the next pair while it computes (rows in chunks of kMC).
void qgemm(const Ctx& c, const QLinear& w, const QRows& a, int64_t rows, GemmOut o) {
  const int64_t k4 = w.k / 4, pairs = w.n / 32;
  const int8_t* packed = w.packed.data();
  int64_t p0, p1;
  c.range(pairs, p0, p1);
  for (int64_t m0 = 0; m0 < rows; m0 += kMC) {
    const int64_t mc = std::min(kMC, rows - m0);
    for (int64_t p = p0; p < p1; ++p) {
      const int8_t* b0 = packed + p * k4 * 128;
      const int8_t* pf = (m0 == 0 && p + 1 < pairs) ? b0 + k4 * 128 : nullptr;
      for (int64_t r = 0; r < mc; r += kMR) {
        const int64_t m = m0 + r;
        const GemmOut om{o.data + m * o.ld, o.ld, o.accumulate};
        panel_rows(a.q + m * a.width, a.width, a.scale + m, a.zero + m, std::min(kMR, mc - r),
                   b0, k4, w, p * 32, om, r == 0 ? pf : nullptr);
      }
    }
  }
  c.sync();
}

// ------------------------------------------------------------------ attention
// Causal multi-head attention over packed rows. qkv: rows x 3d (q | k | v). pooled_only: only
// the last row of each sequence is a query (the last block); out then has one row per sequence.
void attention(const Ctx& c, const float* qkv, int64_t d, int64_t heads,
               const std::vector<int64_t>& len, const std::vector<int64_t>& off, bool pooled_only,
               float* out, float* scores) {
  const int64_t hd = d / heads, batch = static_cast<int64_t>(len.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  int64_t j0, j1;
  c.range(batch * heads, j0, j1);
  for (int64_t job = j0; job < j1; ++job) {
    const int64_t b = job / heads, h = job % heads, n = len[b], base = off[b];
    for (int64_t i = pooled_only ? n - 1 : 0; i < n; ++i) {
      const float* q = qkv + (base + i) * 3 * d + h * hd;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= i; ++j) {
        const float* k = qkv + (base + j) * 3 * d + d + h * hd;
        scores[j] = dot(q, k, hd) * scale;
        mx = std::max(mx, scores[j]);
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j <= i; ++j) {
        scores[j] = exp_poly(scores[j] - mx);
        sum += scores[j];
      }
      const float inv = 1.0f / sum;
      float* o = (pooled_only ? out + b * d : out + (base + i) * d) + h * hd;
#pragma omp simd
      for (int64_t t = 0; t < hd; ++t) o[t] = 0.0f;
      for (int64_t j = 0; j <= i; ++j) {
        const float* v = qkv + (base + j) * 3 * d + 2 * d + h * hd;
        axpy(o, scores[j] * inv, v, hd);
      }
    }
  }
  c.sync();
}

// Scratch memory of one calling thread, kept between calls (fresh large allocations would be
// new mmaps: page faults and zeroing on every query); released after a call that needed more
// than kKeepBytes (a big document batch).
constexpr size_t kKeepBytes = size_t{32} << 20;

struct Workspace {
  std::vector<float> f;
  std::vector<uint8_t> u;
  void trim() {
    if (f.capacity() * sizeof(float) + u.capacity() > kKeepBytes) {
      std::vector<float>().swap(f);
      std::vector<uint8_t>().swap(u);
    }
  }
};

void forward(const TextTowerModel& m, const int64_t* ids, int64_t batch, int64_t seq, float* out,
             Team* team) {
  if (batch <= 0) return;
  std::vector<int64_t> len, off;
  text_detail::pooled_lengths(m, ids, batch, seq, len, off);
  const int64_t rows = off[batch], d = m.width, hidden = m.hidden;
  const int64_t widest = std::max(d, hidden);
  const int64_t layers = static_cast<int64_t>(m.blocks.size());
  const int threads = team ? team->size() : 1;
  const int64_t scratch_len = std::max(widest, m.context) + 16;

  // All buffers from one per-thread workspace: no allocation while the team runs.
  static thread_local Workspace ws;
  const int64_t sizes[] = {
      rows * d,                        // x: residual stream, packed rows
      rows * std::max(3 * d, hidden),  // q | k | v, then the MLP's hidden layer
      rows * d,                        // attention output
      batch * d,                       // pooled rows after the last attention
      rows,                            // activation scale per row
      rows,                            // activation zero point per row
      threads * scratch_len};          // per-thread scratch row
  size_t total = 0;
  for (int64_t n : sizes) total += static_cast<size_t>(n) + 16;
  if (ws.f.size() < total) ws.f.resize(total);
  float* parts[7];
  float* p = ws.f.data();
  for (int i = 0; i < 7; ++i) {
    parts[i] = p;
    p += sizes[i] + 16;
  }
  if (ws.u.size() < static_cast<size_t>(rows * widest)) ws.u.resize(rows * widest);
  float* const x = parts[0];
  float* const qkv = parts[1];
  float* const mlp = parts[1];  // q|k|v is dead once the attention output exists
  float* const att = parts[2];
  float* const xl = parts[3];
  // Plain pointers: `ws` is thread-local, and the team's other threads run `body` too.
  uint8_t* const q8 = ws.u.data();
  float* const scratch_all = parts[6];
  auto qr = [&](int64_t width) { return QRows{q8, parts[4], parts[5], width}; };

  auto body = [&](const Ctx& c) {
    float* scratch = scratch_all + c.tid * scratch_len;
    int64_t b0, b1;
    c.range(batch, b0, b1);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t t = 0; t < len[b]; ++t) {
        const float* e = m.token_embedding.data() + ids[b * seq + t] * d;
        const float* pe = m.positional.data() + t * d;
        float* dst = x + (off[b] + t) * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) dst[i] = e[i] + pe[i];
      }
    c.sync();
    for (int64_t l = 0; l < layers; ++l) {
      const TextBlockW& bw = m.blocks[l];
      const bool last = l == layers - 1;
      ln_quant_rows(c, x, rows, d, bw.ln_1, m.ln_eps, qr(d), scratch);
      qgemm(c, bw.qkv, qr(d), rows, {qkv, 3 * d, false});
      attention(c, qkv, d, m.heads, len, off, last, att, scratch);
      // After the last attention only the pooled row of each sequence is read: its residual
      // row moves to xl and the rest of the block runs on one row per sequence.
      float* res = x;
      int64_t n = rows;
      if (last) {
        for (int64_t b = b0; b < b1; ++b)
          std::memcpy(xl + b * d, x + (off[b + 1] - 1) * d, sizeof(float) * d);
        c.sync();
        res = xl;
        n = batch;
      }
      quant_rows(c, att, n, d, qr(d));
      qgemm(c, bw.out, qr(d), n, {res, d, true});
      ln_quant_rows(c, res, n, d, bw.ln_2, m.ln_eps, qr(d), scratch);
      qgemm(c, bw.fc1, qr(d), n, {mlp, hidden, false});
      act_quant_rows(c, mlp, n, hidden, m.act, qr(hidden));
      qgemm(c, bw.fc2, qr(hidden), n, {res, d, true});
    }
    ln_quant_rows(c, xl, batch, d, m.ln_final, m.ln_eps, qr(d), scratch);
    qgemm(c, m.proj, qr(d), batch, {out, m.embed_dim, false});
  };
  const std::function<void(int)> member = [&](int tid) { body(Ctx{team, tid, threads}); };
  // The team is busy with another caller's batch: run this one alone rather than wait.
  if (threads == 1 || !team->try_run(member)) body(Ctx{nullptr, 0, 1});
  ws.trim();
}

}  // namespace
}  // namespace UNIVL_TT_NS
}  // namespace univl
