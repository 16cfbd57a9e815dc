// Run-time kernel selection and the threaded driver for the CPU combine.
//
// Threads: a small pool of our own (not OpenMP: libgomp's team does not survive fork(), so a
// pre-forking server's workers would hang in their first combine, and its regions are slow when
// entered from threads other than the main one). The pool belongs to the process that made it:
// a child forked later makes its own on first use (the parent's workers do not exist there).
#include "cpu/combine.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>

namespace univl {
namespace {

struct Variant {
  const char* name;
  CombineRowsFn fn;
  bool supported;
};

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

bool cpu_has_avx512() {
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the AVX-512 register state (XCR0).
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
#endif

// Best last.
const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = [] {
    std::vector<Variant> out;
    out.push_back({"scalar", combine_rows_scalar(), true});
#if defined(__x86_64__) || defined(_M_X64)
    out.push_back({"avx2", combine_rows_avx2(), cpu_has_avx2()});
    out.push_back({"avx512", combine_rows_avx512(), cpu_has_avx512()});
#endif
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

// UNIVL_FAST_SIMD=scalar|avx2|avx512 caps the choice (for comparisons); default: the best this CPU runs.
const Variant* initial_variant() {
  const Variant* best = best_supported();
  if (const char* env = std::getenv("UNIVL_FAST_SIMD")) {
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

// Caller + (threads - 1) workers running numbered tasks of one job at a time.
class Pool {
 public:
  explicit Pool(int threads) : owner_pid_(getpid()) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_main(); });
  }
  // Never destroyed: the process-wide pool lives until exit (its idle workers sleep), and a
  // forked child's copy has no threads to stop.
  ~Pool() = delete;

  long owner_pid() const { return owner_pid_; }

  // Runs task(t) for every t in [0, tasks) on the caller and the workers; returns when all are
  // done. Returns false without running anything when another call is using the pool.
  bool try_run(int tasks, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> run(run_mu_, std::try_to_lock);
    if (!run.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &task;
      tasks_ = tasks;
      pending_.store(tasks);
      ++epoch_;
      cursor_.store(epoch_ << 32);  // (epoch, next task)
      published_.store(epoch_, std::memory_order_release);
    }
    wake_.notify_all();
    work(epoch_, tasks, task);
    int spins = 0;
    while (pending_.load(std::memory_order_acquire) > 0) {
      if (++spins < kCallerSpins) continue;
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return pending_.load() == 0; });
    }
    return true;
  }

 private:
  static constexpr int kCallerSpins = 20000;
  static constexpr auto kIdleSpin = std::chrono::microseconds(50);

  // Claims and runs tasks of run `epoch` until none is left. A claim succeeds only while that
  // run is current, so a late worker never runs a finished job.
  void work(uint64_t epoch, int tasks, const std::function<void(int)>& task) {
    for (;;) {
      uint64_t c = cursor_.load();
      if ((c >> 32) != epoch || static_cast<int>(c & 0xffffffffu) >= tasks) return;
      if (!cursor_.compare_exchange_weak(c, c + 1)) continue;
      task(static_cast<int>(c & 0xffffffffu));
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_.notify_all();
      }
    }
  }

  void worker_main() {
    uint64_t seen = 0;
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      while (published_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() - t0 < kIdleSpin) {
        std::this_thread::yield();
      }
      const std::function<void(int)>* job;
      int tasks;
      {
        std::unique_lock<std::mutex> lk(mu_);
        wake_.wait(lk, [&] { return epoch_ != seen; });
        seen = epoch_;
        job = job_;
        tasks = tasks_;
      }
      work(seen, tasks, *job);
    }
  }

  const long owner_pid_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;      // guards epoch_, job_, tasks_
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t epoch_ = 0;
  const std::function<void(int)>* job_ = nullptr;
  int tasks_ = 0;
  std::atomic<uint64_t> published_{0};
  std::atomic<uint64_t> cursor_{0};
  std::atomic<int> pending_{0};
};

// The pool of this process, made on first use (again in a forked child: the parent's workers
// are not there; the parent's pool object is left as it is).
Pool* process_pool() {
  static std::atomic<Pool*> pool{nullptr};
  Pool* p = pool.load(std::memory_order_acquire);
  if (p && p->owner_pid() == getpid()) return p;
  Pool* fresh = new Pool(cpu_num_threads());
  if (pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
  // Another thread installed one first: ours stays unused (its workers sleep; rare, bounded).
  return p;
}

}  // namespace

int cpu_num_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("UNIVL_FAST_COMBINE_THREADS")) {
      const int v = std::atoi(env);
      if (v >= 1 && v <= 1024) return v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return n;
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
  const std::function<void(int)> task = block;
  if (!process_pool()->try_run(threads, task)) {
    // Another thread's combine holds the pool: run on this thread alone.
    for (int t = 0; t < threads; ++t) block(t);
  }
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
