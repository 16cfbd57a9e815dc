// Native int8 CLIP text tower (CPU): the query / caption / text-document encoder of an engine,
// run by our own code instead of ONNX Runtime.
//
// Why: a query is ~10-30 tokens, so every linear layer is a small-M GEMM whose cost is reading
// its int8 weights (ViT-B-32: 37.7 MB, more than the 32 MB L3 of the machines this project
// targets). ORT's int8 GEMM streams those weights at well under memory speed at M ~ 20; the
// AVX-512 VNNI and AVX2 kernels here prefetch the next weight panel while they compute the
// current one.
//
// Numerics (what the exporter verifies against PyTorch):
//   * weights: int8, symmetric, one scale per output channel (quantized by the exporter);
//   * activations: uint8, asymmetric, one scale + zero point per row (per token), computed on
//     the fly before every linear layer; int32 accumulation, exact in every build (VNNI does
//     not saturate; the AVX2 kernel multiplies int16-widened operands with vpmaddwd);
//   * token embeddings stored as float16 (converted as rows are gathered); everything else
//     (positional embedding, LayerNorm, attention, GELU, residual stream) in float32.
// Rows are packed: each sequence contributes only its tokens up to the pooled (end-of-text)
// position, so padding costs nothing and batches of mixed lengths waste no work. This is exact
// for CLIP: attention is causal and the output is read at the pooled position.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/text_tower_kernels.h"

namespace univl {

// 64-byte aligned, uninitialised storage.
template <typename T>
struct AlignedArray {
  struct Free {
    void operator()(T* p) const;
  };
  std::unique_ptr<T[], Free> ptr;
  int64_t size = 0;
  void allocate(int64_t n);
  T* data() { return ptr.get(); }
  const T* data() const { return ptr.get(); }
};

// One linear layer y = x W^T + b with int8 weights W (n x k), packed for the GEMM kernels:
// panels of 16 output columns, 4 consecutive k per 32-bit lane: [n/16][k/4][16][4].
struct QLinear {
  int64_t n = 0, k = 0;
  AlignedArray<int8_t> packed;
  std::vector<float> scale;   // per output column
  std::vector<float> bias;    // per output column (zeros when the layer has none)
  std::vector<int32_t> colsum;  // sum over k of W[col] (exact), for the activation zero point
  // w: row-major int8 (n x k). Requires n % 32 == 0, k % 4 == 0 and k <= kMaxK.
  void pack(const int8_t* w, int64_t n_, int64_t k_, const float* scale_, const float* bias_);
  QLinearView view() const {
    return {n, k, packed.data(), scale.data(), bias.data(), colsum.data()};
  }
  // Largest k whose int32 accumulator and zero-point correction cannot overflow:
  // |acc - zero * colsum| <= 2 * 255 * 127 * k < 2^31.
  static constexpr int64_t kMaxK = 32768;
};

struct LayerNormW {
  std::vector<float> w, b;
};

struct TextBlockW {
  LayerNormW ln_1, ln_2;
  QLinear qkv, out, fc1, fc2;
};

enum class TextPool : int { kArgmax = 0, kEos = 1 };

struct TextTowerModel {
  int64_t vocab = 0, width = 0, heads = 0, hidden = 0, context = 0, embed_dim = 0;
  float ln_eps = 1e-5f;
  TextAct act = TextAct::kGelu;
  TextPool pool = TextPool::kArgmax;
  int64_t eos_id = 0;
  std::vector<uint16_t> token_embedding;  // vocab x width, IEEE float16 bits (half the bytes)
  std::vector<float> positional;       // context x width
  std::vector<TextBlockW> blocks;
  LayerNormW ln_final;
  QLinear proj;  // width -> embed_dim, no bias
};

class Team;  // serving/team.h

// ids: int64 (batch x seq), row-major; out: float32 (batch x embed_dim), raw (unnormalized).
// kernels: one ISA's kernels (text_kernels_for). team: the threads to run on (nullptr: the
// calling thread alone; a team busy with another call is not waited for: the call then runs
// alone). Throws std::invalid_argument for ids outside [0, vocab) or seq outside [1, context].
void text_forward(const TextKernels& kernels, const TextTowerModel& m, const int64_t* ids,
                  int64_t batch, int64_t seq, float* out, Team* team);

// The builds of the kernels this CPU runs, best last: "generic" (portable, scalar GEMM),
// "avx2" (AVX2 + FMA + F16C, x86-64), "avx512_vnni" (AVX-512 F/BW/VL/DQ + VNNI, x86-64).
std::string text_tower_best_isa();
std::vector<std::string> text_tower_supported_isas();
const TextKernels* text_kernels_for(const std::string& isa);  // nullptr if not supported here

namespace text_detail {
// Pooled position of each row (argmax of ids, or the first eos_id, else 0) -> row lengths.
void pooled_lengths(const TextTowerModel& m, const int64_t* ids, int64_t batch, int64_t seq,
                    std::vector<int64_t>& len, std::vector<int64_t>& offset);
}  // namespace text_detail

}  // namespace univl
