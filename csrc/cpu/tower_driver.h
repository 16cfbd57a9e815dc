// The forward pass both native towers share (baseline target): the pre-LN transformer blocks,
// the final LayerNorm on each sequence's pooled row and the projection, run by a thread team
// over packed rows through one ISA's kernels (text_tower_kernels.h). Each tower supplies its
// embedding stage (text: token + positional embedding; image: patch GEMM, class token,
// positional embedding, ln_pre) and the row layout: sequence b owns rows [off[b], off[b] +
// len[b]) and its LAST row is the pooled one (text: the end-of-text token; image: the class
// token, stored last, which full attention does not mind).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/text_tower.h"

namespace univl {

class Team;  // serving/team.h

// Which member of the team runs a stage. Every member runs every stage, in the same order;
// each takes its share of the work (contiguous, static) and meets the others at a barrier after
// the stage.
struct TowerCtx {
  Team* team;  // nullptr: running alone
  int tid, nt;
  void range(int64_t n, int64_t& begin, int64_t& end) const {
    begin = n * tid / nt;
    end = n * (tid + 1) / nt;
  }
  void sync() const;
};

// The workspace as the embedding stage sees it.
struct TowerBuffers {
  float* x;        // residual stream: rows x d (the stage writes every row)
  float* big;      // rows x max(3d, hidden, embed_width) floats of scratch
  float* mid;      // rows x d floats of scratch
  QRows q;         // uint8 rows (rows x max(d, hidden, embed_width)); set q.width per use
  float* scratch;  // this member's scratch row
};

struct TowerSpec {
  const std::vector<TextBlockW>* blocks;
  const LayerNormW* ln_final;  // applied to the pooled rows
  const QLinear* proj;         // width -> embed_dim, no bias
  int64_t d, heads, hidden, embed_dim;
  float eps;
  TextAct act;
  bool causal;
  int64_t embed_width;  // widest row the embedding stage stages in `big` / quantizes in `q`
};

// The embedding stage: fills x (all rows), ending with a barrier (ctx.sync()).
using EmbedStage = std::function<void(const TowerCtx&, const TowerBuffers&)>;

// Optional per-stage profile of tower_forward (diagnostics; off by default, then one relaxed
// atomic load per stage). Member 0 of the team times each stage: "work" until it reaches the
// stage's barrier, "wait" at the barrier (the other members' imbalance and the sync itself);
// the embedding stage (the tower's own, with its own barriers) counts as one stage. macs: the
// stage's multiply-accumulates (GEMM: rows x n x k; attention: scores + weighted sum).
namespace tower_profile {
enum Stage : int {
  kEmbed = 0,
  kLn1,        // ln_1 + activation quantization
  kQkv,        // QKV GEMM
  kAttention,  // full / causal attention, float32
  kAttnQuant,  // quantization of the attention output (+ the pooled-row copy, last block)
  kOutProj,    // out-proj GEMM (+ residual)
  kLn2,        // ln_2 + quantization
  kFc1,        // MLP up GEMM
  kAct,        // GELU + quantization
  kFc2,        // MLP down GEMM (+ residual)
  kFinal,      // final LayerNorm + projection
  kCount
};
const char* name(int stage);
void enable(bool on);  // also clears what was gathered
struct Totals {
  double work[kCount], wait[kCount], macs[kCount];
  int64_t calls;
};
Totals read();
}  // namespace tower_profile

// out: float32 (batch x embed_dim), raw. len / off: rows of each sequence (off has batch + 1
// entries, off[batch] = all rows). team: see text_forward.
void tower_forward(const TextKernels& k, const TowerSpec& s, int64_t batch, const int64_t* len,
                   const int64_t* off, const EmbedStage& embed, float* out, Team* team);

}  // namespace univl
