// The int8 GEMM peak of one core (bench/bench_isa.py compiles and runs it): register-only loops
// of the multiply-accumulate each native kernel build is made of, enough independent chains to
// hide latency, no memory traffic. Best of 2000 short runs (a time slice each), so other jobs
// on a shared machine cost little. Prints "name GMAC/s" per line; the AVX-512 line only where
// the CPU has AVX-512 VNNI.
//   avx2        vpmaddwd + vpaddd on ymm (16 int16 products summed into 8 int32 lanes): the
//               exact AVX2 int8 route (operands widened to int16)
//   avx512_vnni vpdpbusd on zmm (64 u8 x s8 products into 16 int32 lanes)
#include <chrono>
#include <cstdio>

namespace {

__attribute__((noinline)) void madd_avx2(long iters) {
  __asm__ volatile(
      "vpxor %%xmm14, %%xmm14, %%xmm14\n\t vpxor %%xmm15, %%xmm15, %%xmm15\n"
      "1:\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm0\n\t vpaddd %%ymm0, %%ymm8, %%ymm8\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm1\n\t vpaddd %%ymm1, %%ymm9, %%ymm9\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm2\n\t vpaddd %%ymm2, %%ymm10, %%ymm10\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm3\n\t vpaddd %%ymm3, %%ymm11, %%ymm11\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm4\n\t vpaddd %%ymm4, %%ymm12, %%ymm12\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm5\n\t vpaddd %%ymm5, %%ymm13, %%ymm13\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm6\n\t vpaddd %%ymm6, %%ymm8, %%ymm8\n\t"
      "vpmaddwd %%ymm14, %%ymm15, %%ymm7\n\t vpaddd %%ymm7, %%ymm9, %%ymm9\n\t"
      "dec %0\n\t jnz 1b\n\t vzeroupper\n"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

__attribute__((noinline)) void dpbusd_avx512(long iters) {
  __asm__ volatile(
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t vpxord %%zmm15, %%zmm15, %%zmm15\n"
      "1:\n\t"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm0\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm1\n\t"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm2\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm3\n\t"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm4\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm5\n\t"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm6\n\t vpdpbusd %%zmm14, %%zmm15, %%zmm7\n\t"
      "dec %0\n\t jnz 1b\n\t vzeroupper\n"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm14", "xmm15", "cc");
}

template <class F>
double best_seconds(F f, long iters) {
  double best = 1e9;
  for (int r = 0; r < 2000; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f(iters);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t < best) best = t;
  }
  return best;
}

}  // namespace

int main() {
  const long iters = 20000;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2"))
    std::printf("avx2 %.1f\n", iters * 8.0 * 16 / best_seconds(madd_avx2, iters) / 1e9);
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512f"))
    std::printf("avx512_vnni %.1f\n", iters * 8.0 * 64 / best_seconds(dpbusd_avx512, iters) / 1e9);
  return 0;
}
