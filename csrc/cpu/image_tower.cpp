// Native image tower: the image embedding stage (im2col, patch GEMM, class token, positional
// embedding, ln_pre) on the shared forward pass (tower_driver.cpp). Baseline target.
#include "cpu/image_tower.h"

#include <cstring>
#include <vector>

#include "cpu/tower_driver.h"

namespace univl {

void image_forward(const TextKernels& k, const ImageTowerModel& m, const float* pixels,
                   int64_t batch, float* out, Team* team) {
  if (batch <= 0) return;
  const int64_t t = m.tokens(), np = t - 1, d = m.width, p = m.patch, g = m.grid;
  const int64_t s = m.image_size(), kk = 3 * p * p;
  std::vector<int64_t> len(batch, t), off(batch + 1);
  for (int64_t b = 0; b <= batch; ++b) off[b] = b * t;
  const TowerSpec spec{&m.blocks, &m.ln_post, &m.proj, d, m.heads, m.hidden,
                       m.embed_dim, m.ln_eps, m.act, /*causal=*/false, /*embed_width=*/kk};
  const int64_t patches = batch * np;
  const EmbedStage embed = [&](const TowerCtx& c, const TowerBuffers& buf) {
    // 1. im2col: patch row (b, py, px) = pixels[b][ch][py*p + y][px*p + x], columns (ch, y, x)
    //    like the conv weight's; then each row quantized (one scale + zero point per patch).
    int64_t r0, r1;
    c.range(patches, r0, r1);
    float* cols = buf.big;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / np, py = (r % np) / g, px = r % g;
      float* dst = cols + r * kk;
      for (int64_t ch = 0; ch < 3; ++ch) {
        const float* src = pixels + ((b * 3 + ch) * s + py * p) * s + px * p;
        for (int64_t y = 0; y < p; ++y) std::memcpy(dst + (ch * p + y) * p, src + y * s,
                                                    sizeof(float) * p);
      }
    }
    QRows q = buf.q;
    q.width = kk;
    k.quant_rows(cols, r0, r1, kk, q);
    c.sync();
    // 2. the patch embedding GEMM into `mid` (patch rows, contiguous)
    int64_t p0, p1;
    c.range(m.patch_embed.n / 32, p0, p1);
    k.qgemm(m.patch_embed.view(), p0, p1, q, patches, {buf.mid, d, false});
    c.sync();
    // 3. residual stream rows: patch + position, class token last; then ln_pre in place
    c.range(batch * t, r0, r1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / t, i = r % t;
      float* dst = buf.x + r * d;
      const float* pos = m.class_pos.data() + i * d;
      if (i == np) {
        std::memcpy(dst, pos, sizeof(float) * d);
      } else {
        const float* e = buf.mid + (b * np + i) * d;
        for (int64_t j = 0; j < d; ++j) dst[j] = e[j] + pos[j];
      }
    }
    k.ln_rows(buf.x, r0, r1, d, m.ln_pre.w.data(), m.ln_pre.b.data(), m.ln_eps, buf.x);
    c.sync();
  };
  tower_forward(k, spec, batch, len.data(), off.data(), embed, out, team);
}

}  // namespace univl
