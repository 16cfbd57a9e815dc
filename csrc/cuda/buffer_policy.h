// Growth policy of the reused device buffers (csrc/cuda/combine.cu). Plain C++ with no CUDA
// dependency, so tests/test_build.py compiles and checks it on a machine without nvcc or a GPU.
// univl_fast/runtime/buffers.py applies the same rule to the TensorRT runner's buffers.
#pragma once

#include <cstddef>

namespace univl {
namespace cuda {

// Allocation granularity: 2 MiB, the large-page size of the CUDA allocator.
constexpr std::size_t kBufferGranule = std::size_t{2} << 20;

// The capacity a buffer of capacity `current` bytes must have to hold `needed` bytes:
// `current` when it is already enough (never shrinks, so steady traffic allocates nothing);
// otherwise the larger of `needed` and twice `current`, rounded up to kBufferGranule (a batch
// size that creeps up reallocates O(log n) times, not once per call). 0 on size_t overflow.
inline std::size_t grown_capacity(std::size_t current, std::size_t needed) noexcept {
  if (needed <= current) return current;
  std::size_t want = needed;
  if (current <= static_cast<std::size_t>(-1) / 2 && 2 * current > want) want = 2 * current;
  const std::size_t rem = want % kBufferGranule;
  if (rem == 0) return want;
  const std::size_t pad = kBufferGranule - rem;
  if (want > static_cast<std::size_t>(-1) - pad) return 0;
  return want + pad;
}

}  // namespace cuda
}  // namespace univl
