// Native int8 CLIP ViT image tower (CPU): the image-document encoder of an engine, run by our
// own code instead of ONNX Runtime, on the text tower's kernels, thread team and packing
// (text_tower_kernels.h, tower_driver.h).
//
// Forward (open_clip VisionTransformer, pool_type "tok", no attention pooling):
//   patches (im2col of the preprocessed float32 pixels, one row of 3*p*p values per patch)
//   -> int8 GEMM with the conv weights (the patch embedding; activations quantized per patch
//   row like every other linear layer) -> + positional embedding, class token (+ its position)
//   -> ln_pre -> N pre-LN blocks with full attention -> ln_post on the class token -> proj.
// The class token is stored as the LAST row of each image's rows: full attention does not
// depend on the order of the rows, and the shared driver reads the pooled row there (after
// the last attention only that row goes through the MLP: exact, 1/50 of the last MLP).
// Numerics as the text tower (text_tower.h): int8 weights per output channel, uint8 activations
// per row, float32 LayerNorm / attention / GELU / residual stream.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/text_tower.h"

namespace univl {

struct ImageTowerModel {
  int64_t width = 0, heads = 0, hidden = 0, embed_dim = 0;
  int64_t patch = 0, grid = 0;  // patch size (pixels), patches per side
  float ln_eps = 1e-5f;
  TextAct act = TextAct::kGelu;
  QLinear patch_embed;         // width x (3 * patch * patch), columns (channel, y, x), no bias
  std::vector<float> class_pos;  // (grid^2 + 1) x width: rows 0..grid^2-1 the patches'
                                 // positional embeddings, the last the class token + its own
  LayerNormW ln_pre;
  std::vector<TextBlockW> blocks;
  LayerNormW ln_post;
  QLinear proj;  // width -> embed_dim, no bias

  int64_t image_size() const { return patch * grid; }
  int64_t tokens() const { return grid * grid + 1; }
};

class Team;  // serving/team.h

// pixels: float32 (batch x 3 x S x S), S = image_size(), row-major; out: float32 (batch x
// embed_dim), raw (unnormalised). kernels / team: as text_forward.
void image_forward(const TextKernels& kernels, const ImageTowerModel& m, const float* pixels,
                   int64_t batch, float* out, Team* team);

}  // namespace univl
