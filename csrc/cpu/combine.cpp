// Run-time kernel selection and the threaded driver for the CPU combine.
#include "cpu/combine.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#ifdef UNIVL_WITH_OPENMP
#include <omp.h>
#endif

namespace univl {
namespace {

struct Variant {
  const char* name;
  CombineRowsFn fn;
  bool supported;
};

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the AVX-512 register state (XCR0).
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

// Best last.
const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = [] {
    std::vector<Variant> out;
    out.push_back({"scalar", combine_rows_scalar(), true});
    if (combine_rows_avx2()) out.push_back({"avx2", combine_rows_avx2(), cpu_has_avx2()});
    if (combine_rows_avx512()) out.push_back({"avx512", combine_rows_avx512(), cpu_has_avx512()});
    return out;
  }();
  return v;
}

const Variant* best_supported() {
  const Variant* best = nullptr;
  for (const auto& v : variants())
    if (v.supported) best = &v;
  return best;
}

const Variant* find_variant(const std::string& name) {
  for (const auto& v : variants())
    if (name == v.name) return &v;
  return nullptr;
}

// UNIVL_SIMD=scalar|avx2|avx512 caps the choice (for comparisons); default: the best this CPU runs.
const Variant* initial_variant() {
  const Variant* best = best_supported();
  if (const char* env = std::getenv("UNIVL_SIMD")) {
    const Variant* want = find_variant(env);
    if (want && want->supported) return want;
  }
  return best;
}

std::atomic<const Variant*>& selected() {
  static std::atomic<const Variant*> s{initial_variant()};
  return s;
}

// Rows are split only when each thread gets enough work to pay for waking it.
constexpr int64_t kMinElementsPerThread = 1 << 15;
// Outputs at least this large are written with non-temporal stores (where a kernel has them).
constexpr int64_t kStreamMinBytes = int64_t{64} << 20;

}  // namespace

int cpu_num_threads() {
#ifdef UNIVL_WITH_OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return std::max(1u, std::thread::hardware_concurrency());
#endif
}

void combine_image_docs_cpu(const CombineArgs& in) {
  if (in.n <= 0) return;
  CombineArgs args = in;
  // An output much larger than the last-level cache is not read back soon: stream it past the
  // cache. Every row must start 16-byte aligned (numpy's large arrays are 16-byte aligned).
  const int64_t out_bytes = args.n * args.d * static_cast<int64_t>(sizeof(float));
  args.stream_stores = out_bytes >= kStreamMinBytes &&
                       reinterpret_cast<uintptr_t>(args.out) % 16 == 0 &&
                       (args.out_row_stride * static_cast<int64_t>(sizeof(float))) % 16 == 0;
  const CombineRowsFn fn = selected().load(std::memory_order_relaxed)->fn;
  const int64_t elements = args.n * std::max<int64_t>(args.d, 1);
  const int64_t by_work = std::max<int64_t>(1, elements / kMinElementsPerThread);
  const int threads = static_cast<int>(
      std::min<int64_t>({static_cast<int64_t>(cpu_num_threads()), args.n, by_work}));
  if (threads <= 1) {
    fn(args, 0, args.n);
    return;
  }
  // Contiguous, equal row blocks: each thread streams through its own part of the arrays.
  auto block = [&](int t) {
    const int64_t r0 = args.n * t / threads;
    const int64_t r1 = args.n * (t + 1) / threads;
    if (r0 < r1) fn(args, r0, r1);
  };
#ifdef UNIVL_WITH_OPENMP
#pragma omp parallel num_threads(threads)
  {
    // The runtime may grant fewer threads than asked for: cover every block regardless.
    const int team = omp_get_num_threads();
    for (int t = omp_get_thread_num(); t < threads; t += team) block(t);
  }
#else
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(block, t);
  block(0);
  for (auto& th : pool) th.join();
#endif
}

std::vector<std::string> combine_simd_compiled() {
  std::vector<std::string> out;
  for (const auto& v : variants()) out.emplace_back(v.name);
  return out;
}

std::vector<std::string> combine_simd_supported() {
  std::vector<std::string> out;
  for (const auto& v : variants())
    if (v.supported) out.emplace_back(v.name);
  return out;
}

std::string combine_simd_selected() { return selected().load()->name; }

bool combine_set_simd(const std::string& name) {
  const Variant* v = find_variant(name);
  if (!v || !v->supported) return false;
  selected().store(v);
  return true;
}

}  // namespace univl
