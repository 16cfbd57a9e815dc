// The native towers' per-ISA kernels (text and image share them): what text_tower_impl.h
// compiles once per instruction set, and the plain views they work on. The drivers
// (tower_driver.cpp, text_tower.cpp, image_tower.cpp; baseline target) own the models, the
// workspace and the thread team, split each stage's work and call these through one table per
// ISA.
//
// Why plain views and no std containers here: text_tower_avx2.cpp and text_tower_avx512.cpp
// are each compiled with their ISA's flags for the whole file. Any inline function or template
// they instantiate with external linkage (std::vector<float>::data, std::max<float>,
// std::function, Team's inline members, ...) would be emitted as AVX2 / AVX-512 code in a COMDAT
// group, and the linker keeps ONE copy of each group module-wide: the baseline code could end up
// calling that copy (SIGILL on a CPU without the ISA). So the kernels use only their own
// internal-linkage helpers, compiler builtins and intrinsics (always_inline, never emitted out
// of line), and this header has no includes beyond <cstdint>. tests/test_build_isa.py checks
// both object files (compiled at -O0, where nothing is inlined) and the linked module.
#pragma once

#include <cstdint>

namespace univl {

enum class TextAct : int { kGelu = 0, kQuickGelu = 1 };

// One int8 linear layer y = x W^T + b, weights packed for the GEMM kernels: panels of 16
// output columns, 4 consecutive k per 32-bit lane: [n/16][k/4][16][4].
struct QLinearView {
  int64_t n, k;
  const int8_t* packed;
  const float* scale;     // per output column
  const float* bias;      // per output column
  const int32_t* colsum;  // sum over k of W[col] (exact), for the activation zero point
};

// uint8 activations, one scale and integer zero point per row: x ~ scale * (q - zero).
struct QRows {
  uint8_t* q;  // rows x width
  float* scale;
  int32_t* zero;
  int64_t width;
};

// out[m][col] (+)= (acc - zero_m * colsum) * scale_m * w.scale + w.bias (correction in int32)
struct GemmOut {
  float* data;
  int64_t ld;
  bool accumulate;  // add into out (residual connections) instead of overwriting it
};

// Every kernel works on a caller-given range [begin, end) of its rows / panels / jobs (one
// thread's share) and does not synchronise.
struct TextKernels {
  // x[off[b] + t] = tok[ids[b * seq + t]] + pos[t] for b in [b0, b1), t < len[b];
  // tok: float16 bits (vocab x d)
  void (*embed)(const uint16_t* tok, const float* pos, const int64_t* ids, int64_t seq,
                const int64_t* len, const int64_t* off, int64_t d, int64_t b0, int64_t b1,
                float* x);
  // rows [r0, r1) of x (d wide): LayerNorm (w, b, eps) then quantize into a
  void (*ln_quant_rows)(const float* x, int64_t r0, int64_t r1, int64_t d, const float* w,
                        const float* b, float eps, QRows a, float* scratch);
  void (*quant_rows)(const float* x, int64_t r0, int64_t r1, int64_t d, QRows a);
  // activation in place, then quantize
  void (*act_quant_rows)(float* x, int64_t r0, int64_t r1, int64_t d, TextAct act, QRows a);
  void (*activation)(TextAct act, float* x, int64_t n);  // in place
  // panel pairs (32 output columns each) [p0, p1) for `rows` rows of a
  void (*qgemm)(const QLinearView& w, int64_t p0, int64_t p1, const QRows& a, int64_t rows,
                GemmOut o);
  // attention jobs (sequence b, head h) = j in [j0, j1): b = j / heads, h = j % heads.
  // qkv: packed rows x 3d; causal: row i attends to rows <= i (text), else to every row of its
  // sequence (image); pooled_only: only each sequence's last row is a query and out has one
  // row per sequence; scratch: >= (max(len) + 15) * (d / heads + 1) floats.
  void (*attention)(const float* qkv, int64_t d, int64_t heads, const int64_t* len,
                    const int64_t* off, bool causal, bool pooled_only, int64_t j0, int64_t j1,
                    float* out, float* scratch);
  // rows [r0, r1) of x (d wide): LayerNorm (w, b, eps) into y (y may be x)
  void (*ln_rows)(const float* x, int64_t r0, int64_t r1, int64_t d, const float* w,
                  const float* b, float eps, float* y);
};

// One table per build. The x86 ones exist only in x86-64 builds (text_tower_avx2.cpp,
// text_tower_avx512.cpp); text_tower.cpp hands them out only after checking the CPU.
const TextKernels* text_kernels_generic();
#if defined(__x86_64__) || defined(_M_X64)
const TextKernels* text_kernels_avx2();
const TextKernels* text_kernels_avx512_vnni();
#endif

}  // namespace univl
