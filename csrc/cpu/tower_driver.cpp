// The native towers' shared forward pass (tower_driver.h). Baseline target: the std code it
// instantiates is safe to share.
#include "cpu/tower_driver.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>

#include "serving/team.h"

namespace univl {

void TowerCtx::sync() const {
  if (nt > 1) team->barrier();
}

namespace tower_profile {
namespace {
std::atomic<bool> g_on{false};
std::mutex g_mutex;
Totals g_totals{};
constexpr const char* kNames[kCount] = {"embed", "ln_1+quant", "qkv gemm", "attention",
                                        "attn quant", "out gemm",   "ln_2+quant", "fc1 gemm",
                                        "gelu+quant", "fc2 gemm",   "ln_post+proj"};
}  // namespace
const char* name(int stage) { return stage >= 0 && stage < kCount ? kNames[stage] : "?"; }
void enable(bool on) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_totals = Totals{};
  g_on.store(on, std::memory_order_relaxed);
}
Totals read() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_totals;
}
}  // namespace tower_profile

namespace {

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

void tower_forward(const TextKernels& k, const TowerSpec& s, int64_t batch, const int64_t* len,
                   const int64_t* off, const EmbedStage& embed, float* out, Team* team) {
  if (batch <= 0) return;
  const int64_t rows = off[batch], d = s.d, hidden = s.hidden;
  const int64_t widest = std::max({d, hidden, s.embed_width});
  const int64_t layers = static_cast<int64_t>(s.blocks->size());
  const int threads = team ? team->size() : 1;
  int64_t max_len = 0;
  for (int64_t b = 0; b < batch; ++b) max_len = std::max(max_len, len[b]);
  // per-thread scratch: a LayerNorm row, or one attention job's transposed keys + scores
  const int64_t scratch_len = std::max(widest, (max_len + 15) * (d / s.heads + 1)) + 16;

  // All buffers from one per-thread workspace: no allocation while the team runs.
  static thread_local Workspace ws;
  const int64_t sizes[] = {
      rows * d,                                         // x: residual stream, packed rows
      rows * std::max({3 * d, hidden, s.embed_width}),  // q | k | v, then the MLP's hidden layer
      rows * d,                                         // attention output
      batch * d,                                        // pooled rows after the last attention
      rows,                                             // activation scale per row
      threads * scratch_len};                           // per-thread scratch row
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
  auto qr = [&](int64_t width) { return QRows{q8, parts[4], zero, width}; };

  namespace tp = tower_profile;
  const bool profiling = tp::g_on.load(std::memory_order_relaxed);
  tp::Totals prof{};  // member 0's, merged into the global totals after the run
  using Clock = std::chrono::steady_clock;
  auto body = [&](const TowerCtx& c) {
    float* scratch = scratch_all + c.tid * scratch_len;
    int64_t b0, b1, r0, r1;
    c.range(batch, b0, b1);
    const bool timing = profiling && c.tid == 0;
    Clock::time_point mark = timing ? Clock::now() : Clock::time_point{};
    // the barrier that ends a stage (timed by member 0 when profiling)
    auto end_stage = [&](int stage, double macs) {
      if (!timing) return c.sync();
      const Clock::time_point done = Clock::now();
      c.sync();
      const Clock::time_point met = Clock::now();
      prof.work[stage] += std::chrono::duration<double>(done - mark).count();
      prof.wait[stage] += std::chrono::duration<double>(met - done).count();
      prof.macs[stage] += macs;
      mark = met;
    };
    // one GEMM (panel pairs split over the team), then the barrier
    auto gemm = [&](int stage, const QLinear& w, int64_t width, int64_t n, GemmOut o) {
      int64_t p0, p1;
      c.range(w.n / 32, p0, p1);
      k.qgemm(w.view(), p0, p1, qr(width), n, o);
      end_stage(stage, static_cast<double>(n) * w.n * w.k);
    };
    auto ln_quant = [&](int stage, const float* src, int64_t n, const LayerNormW& ln) {
      c.range(n, r0, r1);
      k.ln_quant_rows(src, r0, r1, d, ln.w.data(), ln.b.data(), s.eps, qr(d), scratch);
      end_stage(stage, 0);
    };
    embed(c, TowerBuffers{x, qkv, att, qr(d), scratch});
    if (timing) {
      const Clock::time_point now = Clock::now();
      prof.work[tp::kEmbed] += std::chrono::duration<double>(now - mark).count();
      mark = now;
    }
    for (int64_t l = 0; l < layers; ++l) {
      const TextBlockW& bw = (*s.blocks)[l];
      const bool last = l == layers - 1;
      ln_quant(tp::kLn1, x, rows, bw.ln_1);
      gemm(tp::kQkv, bw.qkv, d, rows, {qkv, 3 * d, false});
      int64_t j0, j1;
      c.range(batch * s.heads, j0, j1);
      k.attention(qkv, d, s.heads, len, off, s.causal, last, j0, j1, att, scratch);
      double att_macs = 0;
      if (timing)
        for (int64_t b = 0; b < batch; ++b)
          att_macs += 2.0 * d * len[b] * (last ? 1 : (s.causal ? (len[b] + 1) / 2.0 : len[b]));
      end_stage(tp::kAttention, att_macs);
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
      end_stage(tp::kAttnQuant, 0);
      gemm(tp::kOutProj, bw.out, d, n, {res, d, true});
      ln_quant(tp::kLn2, res, n, bw.ln_2);
      gemm(tp::kFc1, bw.fc1, d, n, {mlp, hidden, false});
      c.range(n, r0, r1);
      k.act_quant_rows(mlp, r0, r1, hidden, s.act, qr(hidden));
      end_stage(tp::kAct, 0);
      gemm(tp::kFc2, bw.fc2, hidden, n, {res, d, true});
    }
    ln_quant(tp::kFinal, xl, batch, *s.ln_final);
    gemm(tp::kFinal, *s.proj, d, batch, {out, s.embed_dim, false});
  };
  const std::function<void(int)> member = [&](int tid) { body(TowerCtx{team, tid, threads}); };
  // The team is busy with another caller's batch: run this one alone rather than wait.
  if (threads == 1 || !team->try_run(member)) body(TowerCtx{nullptr, 0, 1});
  ws.trim();
  if (profiling) {
    std::lock_guard<std::mutex> lock(tp::g_mutex);
    for (int i = 0; i < tp::kCount; ++i) {
      tp::g_totals.work[i] += prof.work[i];
      tp::g_totals.wait[i] += prof.wait[i];
      tp::g_totals.macs[i] += prof.macs[i];
    }
    ++tp::g_totals.calls;
  }
}

}  // namespace univl
