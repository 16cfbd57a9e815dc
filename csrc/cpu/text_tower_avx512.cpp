// Native text tower, AVX-512 VNNI build: the whole file is compiled for AVX-512 (F/BW/VL/DQ/
// VNNI), so the element-wise loops vectorise to 512-bit too. text_tower.cpp only hands it out
// after checking the CPU.
#if defined(__x86_64__) || defined(_M_X64)
// Standard headers first, under the module's baseline target; then everything after the
// pragma (our code and the intrinsics) is built for AVX-512.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/text_tower.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c", \
                   "prefer-vector-width=512")
#define UNIVL_TT_NS isa_avx512_vnni
#define UNIVL_TT_VNNI 1
#include "cpu/text_tower_impl.h"

namespace univl {
TextForwardFn text_forward_avx512_vnni() { return &isa_avx512_vnni::forward; }
}  // namespace univl
#else
#include "cpu/text_tower.h"
namespace univl {
TextForwardFn text_forward_avx512_vnni() { return nullptr; }
}  // namespace univl
#endif
