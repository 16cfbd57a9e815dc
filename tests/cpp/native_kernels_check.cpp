// Self-check of the native towers' kernels and forward pass without Python: every kernel build
// this CPU runs against double / int64 references at odd sizes (outputs pre-filled with NaN, so
// an unwritten one fails), and a small random text tower run alone, on a thread team and row by
// row (bitwise the same), each build against the portable one. scripts/cross_aarch64.sh
// cross-compiles it (with the csrc/cpu files of a non-x86 build) for aarch64 and runs it under
// qemu-aarch64; it builds and runs natively too. Prints one line per failure; exit status 1 if
// any.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "serving/team.h"
#include "cpu/text_tower.h"

namespace {

using univl::QLinear;
using univl::QRows;
using univl::TextKernels;

int failures = 0;
int checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();
std::mt19937 rng(12345);

std::vector<float> normal(size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<int8_t> weights(size_t n) {
  std::uniform_int_distribution<int> d(-127, 127);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(d(rng));
  return v;
}

// Quantization + GEMM vs the int64 product of the kernel's own quantized rows; residual mode.
void check_linear(const std::string& isa, const TextKernels& k, int64_t rows, int64_t kk,
                  int64_t n) {
  const std::string tag = isa + " linear " + std::to_string(rows) + "x" + std::to_string(kk) +
                          "x" + std::to_string(n);
  const std::vector<float> x = normal(rows * kk, 3.0f);
  const std::vector<int8_t> w = weights(n * kk);
  std::vector<float> scale(n), bias = normal(n, 1.0f);
  for (int64_t c = 0; c < n; ++c) scale[c] = 0.001f + 0.0001f * static_cast<float>(c);
  QLinear q;
  q.pack(w.data(), n, kk, scale.data(), bias.data());
  std::vector<uint8_t> qx(rows * kk);
  std::vector<float> sx(rows);
  std::vector<int32_t> zx(rows);
  const QRows a{qx.data(), sx.data(), zx.data(), kk};
  k.quant_rows(x.data(), 0, rows, kk, a);
  std::vector<float> y(rows * n, kNaN);
  k.qgemm(q.view(), 0, n / 32, a, rows, {y.data(), n, false});
  double worst = 0.0, top = 0.0;
  std::vector<double> ref(rows * n);
  for (int64_t m = 0; m < rows; ++m) {
    // the documented quantization: |x - s (q - z)| <= s / 2 (+ float rounding)
    for (int64_t i = 0; i < kk; ++i) {
      const double deq = sx[m] * (static_cast<double>(qx[m * kk + i]) - zx[m]);
      if (std::fabs(deq - x[m * kk + i]) > sx[m] * 0.5001 + 1e-6 * std::fabs(x[m * kk + i]))
        worst = 1e9;
    }
    for (int64_t c = 0; c < n; ++c) {
      int64_t acc = 0;
      for (int64_t i = 0; i < kk; ++i)
        acc += (static_cast<int64_t>(qx[m * kk + i]) - zx[m]) * w[c * kk + i];
      ref[m * n + c] = static_cast<double>(acc) * sx[m] * scale[c] + bias[c];
      top = std::fmax(top, std::fabs(ref[m * n + c]));
    }
  }
  for (int64_t i = 0; i < rows * n; ++i) {
    const double e = std::fabs(y[i] - ref[i]);  // NaN (unwritten) fails below
    worst = (e == e) ? std::fmax(worst, e) : 1e9;
  }
  expect(worst <= 2e-6 * top + 1e-6, tag + " error " + std::to_string(worst));
  std::vector<float> y2 = y;
  k.qgemm(q.view(), 0, n / 32, a, rows, {y2.data(), n, true});
  double diff = 0.0;
  for (int64_t i = 0; i < rows * n; ++i) diff = std::fmax(diff, std::fabs(y2[i] - 2.0 * y[i]));
  expect(diff <= 1e-5 * top + 1e-6, tag + " residual mode off by " + std::to_string(diff));
}

void check_layer_norm(const std::string& isa, const TextKernels& k, int64_t d) {
  const int64_t rows = 3;
  const std::vector<float> x = normal(rows * d, 4.0f), w = normal(d, 1.0f), b = normal(d, 1.0f);
  std::vector<float> y(rows * d, kNaN);
  k.ln_rows(x.data(), 0, rows, d, w.data(), b.data(), 1e-5f, y.data());
  double worst = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < d; ++i) mean += x[r * d + i];
    mean /= static_cast<double>(d);
    for (int64_t i = 0; i < d; ++i) var += (x[r * d + i] - mean) * (x[r * d + i] - mean);
    const double rstd = 1.0 / std::sqrt(var / static_cast<double>(d) + 1e-5);
    for (int64_t i = 0; i < d; ++i) {
      const double ref = (x[r * d + i] - mean) * rstd * w[i] + b[i];
      const double e = std::fabs(y[r * d + i] - ref) / (1.0 + std::fabs(ref));
      worst = (e == e) ? std::fmax(worst, e) : 1e9;
    }
  }
  expect(worst <= 1e-4, isa + " layer norm d=" + std::to_string(d) + " " + std::to_string(worst));
}

void check_attention(const std::string& isa, const TextKernels& k, bool causal) {
  const int64_t heads = 3, hd = 20, d = heads * hd;
  const std::vector<int64_t> lens{1, 5, 17, 40};
  std::vector<int64_t> off{0};
  for (auto l : lens) off.push_back(off.back() + l);
  const int64_t rows = off.back();
  const std::vector<float> qkv = normal(rows * 3 * d, 1.5f);
  std::vector<float> out(rows * d, kNaN), scratch((40 + 15) * (hd + 1));
  k.attention(qkv.data(), d, heads, lens.data(), off.data(), causal, false, 0,
              static_cast<int64_t>(lens.size()) * heads, out.data(), scratch.data());
  double worst = 0.0;
  for (size_t b = 0; b < lens.size(); ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < lens[b]; ++i) {
        const float* q = &qkv[(off[b] + i) * 3 * d + h * hd];
        const int64_t keys = causal ? i + 1 : lens[b];
        std::vector<double> p(keys);
        double mx = -1e300, sum = 0.0;
        for (int64_t j = 0; j < keys; ++j) {
          const float* kk = &qkv[(off[b] + j) * 3 * d + d + h * hd];
          double s = 0.0;
          for (int64_t t = 0; t < hd; ++t) s += static_cast<double>(q[t]) * kk[t];
          p[j] = s / std::sqrt(static_cast<double>(hd));
          mx = std::fmax(mx, p[j]);
        }
        for (auto& v : p) sum += (v = std::exp(v - mx));
        for (int64_t t = 0; t < hd; ++t) {
          double ref = 0.0;
          for (int64_t j = 0; j < keys; ++j) ref += p[j] * qkv[(off[b] + j) * 3 * d + 2 * d + h * hd + t];
          ref /= sum;
          const double e = std::fabs(out[(off[b] + i) * d + h * hd + t] - ref);
          worst = (e == e) ? std::fmax(worst, e) : 1e9;
        }
      }
  expect(worst <= 1e-4, isa + (causal ? " causal" : " full") + " attention " +
                            std::to_string(worst));
}

void check_activation(const std::string& isa, const TextKernels& k) {
  std::vector<float> x;
  for (int i = -200000; i <= 200000; ++i) x.push_back(static_cast<float>(i) * 1e-3f);
  for (const auto act : {univl::TextAct::kGelu, univl::TextAct::kQuickGelu}) {
    std::vector<float> y = x;
    k.activation(act, y.data(), static_cast<int64_t>(y.size()));
    double worst = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i];
      const double ref = act == univl::TextAct::kGelu ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))
                                                      : v / (1.0 + std::exp(-1.702 * v));
      const double e = std::fabs(y[i] - ref) / (1.0 + std::fabs(ref));
      worst = (e == e) ? std::fmax(worst, e) : 1e9;
    }
    expect(worst <= 1e-6, isa + " activation " + std::to_string(static_cast<int>(act)) + " " +
                              std::to_string(worst));
  }
}

univl::LayerNormW layer_norm(int64_t d) {
  univl::LayerNormW ln;
  ln.w = normal(d, 0.1f);
  for (auto& v : ln.w) v += 1.0f;
  ln.b = normal(d, 0.1f);
  return ln;
}

void linear(QLinear& q, int64_t n, int64_t kk, bool with_bias) {
  const std::vector<int8_t> w = weights(n * kk);
  std::vector<float> scale(n, 0.5f / (127.0f * std::sqrt(static_cast<float>(kk))));
  const std::vector<float> bias = normal(n, 0.02f);
  q.pack(w.data(), n, kk, scale.data(), with_bias ? bias.data() : nullptr);
}

univl::TextTowerModel tiny_model() {
  univl::TextTowerModel m;
  m.vocab = 64;
  m.width = 64;
  m.heads = 2;
  m.hidden = 128;
  m.context = 16;
  m.embed_dim = 32;
  m.eos_id = 63;
  m.pool = univl::TextPool::kArgmax;
  const std::vector<float> emb = normal(m.vocab * m.width, 0.5f);
  m.token_embedding.resize(emb.size());
  for (size_t i = 0; i < emb.size(); ++i) {  // float16 bits of values on a 1/64 grid (exact)
    const float v = std::round(emb[i] * 64.0f) / 64.0f;
    uint16_t h = 0;
    if (v != 0.0f) {
      int e;
      const float f = std::frexp(std::fabs(v), &e);  // v = f 2^e, f in [0.5, 1)
      const uint16_t mant = static_cast<uint16_t>(std::lround((f * 2.0f - 1.0f) * 1024.0f));
      h = static_cast<uint16_t>(((e - 1 + 15) << 10) + mant);
      if (v < 0.0f) h |= 0x8000u;
    }
    m.token_embedding[i] = h;
  }
  m.positional = normal(m.context * m.width, 0.1f);
  m.blocks.resize(2);
  for (auto& b : m.blocks) {
    b.ln_1 = layer_norm(m.width);
    b.ln_2 = layer_norm(m.width);
    linear(b.qkv, 3 * m.width, m.width, true);
    linear(b.out, m.width, m.width, true);
    linear(b.fc1, m.hidden, m.width, true);
    linear(b.fc2, m.width, m.hidden, true);
  }
  m.ln_final = layer_norm(m.width);
  linear(m.proj, m.embed_dim, m.width, false);
  return m;
}

void check_tower(const std::vector<std::string>& isas) {
  const univl::TextTowerModel m = tiny_model();
  const int64_t batch = 3, seq = 9;
  std::vector<int64_t> ids(batch * seq);
  std::uniform_int_distribution<int> tok(1, 62);
  for (auto& t : ids) t = tok(rng);
  ids[0 * seq + 8] = 63;  // pooled at the end; row 1 early; row 2 at its argmax
  ids[1 * seq + 2] = 63;
  std::vector<float> base;
  univl::Team team(2);
  for (const auto& isa : isas) {
    const TextKernels* k = univl::text_kernels_for(isa);
    std::vector<float> alone(batch * m.embed_dim, kNaN), teamed = alone, rows = alone;
    univl::text_forward(*k, m, ids.data(), batch, seq, alone.data(), nullptr);
    univl::text_forward(*k, m, ids.data(), batch, seq, teamed.data(), &team);
    for (int64_t b = 0; b < batch; ++b)
      univl::text_forward(*k, m, ids.data() + b * seq, 1, seq, rows.data() + b * m.embed_dim,
                          nullptr);
    bool finite = true, same = true, same_rows = true;
    for (size_t i = 0; i < alone.size(); ++i) {
      finite = finite && std::isfinite(alone[i]);
      same = same && alone[i] == teamed[i];
      same_rows = same_rows && alone[i] == rows[i];
    }
    expect(finite, isa + " tower: every output written and finite");
    expect(same, isa + " tower: a team of 2 gives the lone run's result bit for bit");
    expect(same_rows, isa + " tower: a batch row equals the row run alone bit for bit");
    if (base.empty()) {
      base = alone;
      continue;
    }
    double worst = 1.0;
    for (int64_t b = 0; b < batch; ++b) {
      double ab = 0.0, aa = 0.0, bb = 0.0;
      for (int64_t j = 0; j < m.embed_dim; ++j) {
        const double u = alone[b * m.embed_dim + j], v = base[b * m.embed_dim + j];
        ab += u * v;
        aa += u * u;
        bb += v * v;
      }
      worst = std::fmin(worst, ab / std::sqrt(aa * bb));
    }
    expect(worst > 0.9999, isa + " tower vs generic: cosine " + std::to_string(worst));
  }
}

}  // namespace

int main() {
  const std::vector<std::string> isas = univl::text_tower_supported_isas();
  std::string names;
  for (const auto& s : isas) names += (names.empty() ? "" : ", ") + s;
  std::printf("native kernel builds this CPU runs: %s\n", names.c_str());
  expect(!isas.empty() && isas.front() == "generic", "'generic' listed first");
#if !(defined(__x86_64__) || defined(_M_X64))
  expect(isas.size() == 1, "a non-x86 build has the portable kernels only");
#endif
  expect(univl::text_kernels_for("avx9000") == nullptr, "an unknown build is refused");
  for (const auto& isa : isas) {
    const TextKernels* k = univl::text_kernels_for(isa);
    expect(k != nullptr, isa + " kernels");
    if (!k) continue;
    for (const int64_t rows : {1, 2, 3, 13, 97})
      for (const int64_t kk : {4, 36, 516})
        check_linear(isa, *k, rows, kk, rows == 97 ? 32 : 96);
    for (const int64_t d : {1, 7, 8, 9, 77, 512}) check_layer_norm(isa, *k, d);
    check_attention(isa, *k, true);
    check_attention(isa, *k, false);
    check_activation(isa, *k);
  }
  check_tower(isas);
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
