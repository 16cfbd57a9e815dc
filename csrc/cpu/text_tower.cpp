// Native text tower: weight packing, input checks, the choice of kernels and the forward pass
// that drives them (the kernels live in text_tower_impl.h, compiled once per instruction set).
// This file is compiled for the baseline target: the std code it instantiates is safe to share.
#include "cpu/text_tower.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>

#include "cpu/team.h"

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

namespace {

// Which member of the team runs the forward pass. Every member runs every stage, in the same
// order; each takes its share of the work (contiguous, static) and meets the others at a
// barrier after the stage.
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

// Scratch memory of one calling thread, kept between calls (fresh large allocations would be
// new mmaps: page faults and zeroing on every query); released after a call that needed more
// than kKeepBytes (a big document batch).
constexpr size_t kKeepBytes = size_t{32} << 20;

struct Workspace {
  std::vector<float> f;
  std::vector<int32_t> z;
  std::vector<uint8_t> u;
  void trim() {
    if (f.capacity() * sizeof(float) + z.capacity() * sizeof(int32_t) + u.capacity() >
        kKeepBytes) {
      std::vector<float>().swap(f);
      std::vector<int32_t>().swap(z);
      std::vector<uint8_t>().swap(u);
    }
  }
};

}  // namespace

void text_forward(const TextKernels& k, const TextTowerModel& m, const int64_t* ids,
                  int64_t batch, int64_t seq, float* out, Team* team) {
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
      threads * scratch_len};          // per-thread scratch row
  size_t total = 0;
  for (int64_t n : sizes) total += static_cast<size_t>(n) + 16;
  if (ws.f.size() < total) ws.f.resize(total);
  float* parts[6];
  float* p = ws.f.data();
  for (int i = 0; i < 6; ++i) {
    parts[i] = p;
    p += sizes[i] + 16;
  }
  if (ws.u.size() < static_cast<size_t>(rows * widest)) ws.u.resize(rows * widest);
  if (ws.z.size() < static_cast<size_t>(rows)) ws.z.resize(rows);
  float* const x = parts[0];
  float* const qkv = parts[1];
  float* const mlp = parts[1];  // q|k|v is dead once the attention output exists
  float* const att = parts[2];
  float* const xl = parts[3];
  // Plain pointers: `ws` is thread-local, and the team's other threads run `body` too.
  uint8_t* const q8 = ws.u.data();
  int32_t* const zero = ws.z.data();
  float* const scratch_all = parts[5];
  const int64_t* const lenp = len.data();
  const int64_t* const offp = off.data();
  auto qr = [&](int64_t width) { return QRows{q8, parts[4], zero, width}; };

  auto body = [&](const Ctx& c) {
    float* scratch = scratch_all + c.tid * scratch_len;
    int64_t b0, b1, r0, r1;
    c.range(batch, b0, b1);
    // one GEMM (panel pairs split over the team), then the barrier
    auto gemm = [&](const QLinear& w, int64_t width, int64_t n, GemmOut o) {
      int64_t p0, p1;
      c.range(w.n / 32, p0, p1);
      k.qgemm(w.view(), p0, p1, qr(width), n, o);
      c.sync();
    };
    auto ln_quant = [&](const float* src, int64_t n, const LayerNormW& ln) {
      c.range(n, r0, r1);
      k.ln_quant_rows(src, r0, r1, d, ln.w.data(), ln.b.data(), m.ln_eps, qr(d), scratch);
      c.sync();
    };
    k.embed(m.token_embedding.data(), m.positional.data(), ids, seq, lenp, offp, d, b0, b1, x);
    c.sync();
    for (int64_t l = 0; l < layers; ++l) {
      const TextBlockW& bw = m.blocks[l];
      const bool last = l == layers - 1;
      ln_quant(x, rows, bw.ln_1);
      gemm(bw.qkv, d, rows, {qkv, 3 * d, false});
      int64_t j0, j1;
      c.range(batch * m.heads, j0, j1);
      k.attention(qkv, d, m.heads, lenp, offp, last, j0, j1, att, scratch);
      c.sync();
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
      c.range(n, r0, r1);
      k.quant_rows(att, r0, r1, d, qr(d));
      c.sync();
      gemm(bw.out, d, n, {res, d, true});
      ln_quant(res, n, bw.ln_2);
      gemm(bw.fc1, d, n, {mlp, hidden, false});
      c.range(n, r0, r1);
      k.act_quant_rows(mlp, r0, r1, hidden, m.act, qr(hidden));
      c.sync();
      gemm(bw.fc2, hidden, n, {res, d, true});
    }
    ln_quant(xl, batch, m.ln_final);
    gemm(m.proj, d, batch, {out, m.embed_dim, false});
  };
  const std::function<void(int)> member = [&](int tid) { body(Ctx{team, tid, threads}); };
  // The team is busy with another caller's batch: run this one alone rather than wait.
  if (threads == 1 || !team->try_run(member)) body(Ctx{nullptr, 0, 1});
  ws.trim();
}

namespace {

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

std::vector<std::string> text_tower_supported_isas() {
  std::vector<std::string> out{"generic"};
  // The CPU first: nothing in the AVX-512 file runs on a CPU without AVX-512.
  if (cpu_has_avx512_vnni() && text_kernels_avx512_vnni()) out.emplace_back("avx512_vnni");
  return out;
}

std::string text_tower_best_isa() { return text_tower_supported_isas().back(); }

const TextKernels* text_kernels_for(const std::string& isa) {
  for (const auto& s : text_tower_supported_isas()) {
    if (s != isa) continue;
    return isa == "generic" ? text_kernels_generic() : text_kernels_avx512_vnni();
  }
  return nullptr;
}

}  // namespace univl
