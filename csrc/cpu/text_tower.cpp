// Native text tower: weight packing, input checks, the choice of kernels and the text
// embedding stage (the shared forward pass: tower_driver.cpp; the kernels: text_tower_impl.h,
// compiled once per instruction set).
// This file is compiled for the baseline target: the std code it instantiates is safe to share.
#include "cpu/text_tower.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "cpu/tower_driver.h"

namespace univl {

template <typename T>
void AlignedArray<T>::Free::operator()(T* p) const {
  std::free(p);
}

template <typename T>
void AlignedArray<T>::allocate(int64_t n) {
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(T) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes > 0 ? bytes : 64);
  if (!p) throw std::bad_alloc();
  ptr.reset(static_cast<T*>(p));
  size = n;
}

template struct AlignedArray<int8_t>;

void QLinear::pack(const int8_t* w, int64_t n_, int64_t k_, const float* scale_,
                   const float* bias_) {
  if (n_ <= 0 || k_ <= 0 || n_ % 32 != 0 || k_ % 4 != 0 || k_ > kMaxK)
    throw std::invalid_argument("linear layer " + std::to_string(n_) + "x" + std::to_string(k_) +
                                ": the native kernels need out features % 32 == 0 and in "
                                "features % 4 == 0, at most " + std::to_string(kMaxK));
  n = n_;
  k = k_;
  packed.allocate(n * k);
  int8_t* dst = packed.data();
  const int64_t k4 = k / 4;
  for (int64_t p = 0; p < n / 16; ++p)
    for (int64_t q = 0; q < k4; ++q)
      for (int64_t c = 0; c < 16; ++c)
        std::memcpy(dst + ((p * k4 + q) * 16 + c) * 4, w + (p * 16 + c) * k + q * 4, 4);
  scale.assign(scale_, scale_ + n);
  bias.assign(n, 0.0f);
  if (bias_) bias.assign(bias_, bias_ + n);
  colsum.assign(n, 0);
  for (int64_t c = 0; c < n; ++c) {
    int32_t s = 0;  // |s| <= 127 * kMaxK: exact
    for (int64_t i = 0; i < k; ++i) s += w[c * k + i];
    colsum[c] = s;
  }
}

namespace text_detail {

void pooled_lengths(const TextTowerModel& m, const int64_t* ids, int64_t batch, int64_t seq,
                    std::vector<int64_t>& len, std::vector<int64_t>& offset) {
  if (seq < 1 || seq > m.context)
    throw std::invalid_argument("ids has " + std::to_string(seq) +
                                " columns; the text tower takes 1.." + std::to_string(m.context));
  len.resize(batch);
  offset.resize(batch + 1);
  offset[0] = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* row = ids + b * seq;
    int64_t pos = 0;
    for (int64_t t = 0; t < seq; ++t) {
      if (row[t] < 0 || row[t] >= m.vocab)
        throw std::invalid_argument("ids[" + std::to_string(b) + ", " + std::to_string(t) +
                                    "] = " + std::to_string(row[t]) + " is outside the vocabulary "
                                    "[0, " + std::to_string(m.vocab) + ")");
    }
    if (m.pool == TextPool::kArgmax) {
      for (int64_t t = 1; t < seq; ++t)
        if (row[t] > row[pos]) pos = t;  // first maximum, like argmax
    } else {
      for (int64_t t = 0; t < seq; ++t)
        if (row[t] == m.eos_id) {
          pos = t;
          break;
        }
    }
    len[b] = pos + 1;
    offset[b + 1] = offset[b] + len[b];
  }
}

}  // namespace text_detail

void text_forward(const TextKernels& k, const TextTowerModel& m, const int64_t* ids,
                  int64_t batch, int64_t seq, float* out, Team* team) {
  if (batch <= 0) return;
  std::vector<int64_t> len, off;
  text_detail::pooled_lengths(m, ids, batch, seq, len, off);
  const int64_t* const lenp = len.data();
  const int64_t* const offp = off.data();
  const TowerSpec spec{&m.blocks, &m.ln_final, &m.proj, m.width, m.heads, m.hidden,
                       m.embed_dim, m.ln_eps, m.act, /*causal=*/true, /*embed_width=*/0};
  const EmbedStage embed = [&](const TowerCtx& c, const TowerBuffers& buf) {
    int64_t b0, b1;
    c.range(batch, b0, b1);
    k.embed(m.token_embedding.data(), m.positional.data(), ids, seq, lenp, offp, m.width, b0, b1,
            buf.x);
    c.sync();
  };
  tower_forward(k, spec, batch, lenp, offp, embed, out, team);
}

namespace {

// libgcc's checks include the OS's support for the wider register state (XCR0).
#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

bool cpu_has_avx512_vnni() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
}
#endif

struct IsaBuild {
  const char* name;
  const TextKernels* kernels;
};

// The builds this CPU runs, best last. The CPU is checked first: nothing in the AVX2 / AVX-512
// files may run on a CPU without that ISA.
std::vector<IsaBuild> supported_builds() {
  std::vector<IsaBuild> out{{"generic", text_kernels_generic()}};
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has_avx2()) out.push_back({"avx2", text_kernels_avx2()});
  if (cpu_has_avx512_vnni()) out.push_back({"avx512_vnni", text_kernels_avx512_vnni()});
#endif
  return out;
}

}  // namespace

std::vector<std::string> text_tower_supported_isas() {
  std::vector<std::string> out;
  for (const auto& b : supported_builds()) out.emplace_back(b.name);
  return out;
}

std::string text_tower_best_isa() { return text_tower_supported_isas().back(); }

const TextKernels* text_kernels_for(const std::string& isa) {
  for (const auto& b : supported_builds())
    if (isa == b.name) return b.kernels;
  return nullptr;
}

}  // namespace univl
