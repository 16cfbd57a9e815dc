// Team: see team.h.
#include "serving/team.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include <unistd.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace univl {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

// How long an idle worker keeps polling for the next run before it sleeps (default below,
// UNIVL_FAST_TEAM_SPIN_US overrides): long enough to catch back-to-back calls, short enough
// not to hold a core away from the next stage of a request (index search, image tower).
constexpr int64_t kDefaultIdleSpinUs = 50;

std::chrono::microseconds idle_spin_from_env() {
  if (const char* env = std::getenv("UNIVL_FAST_TEAM_SPIN_US")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0 && v <= 1000000) return std::chrono::microseconds(v);
  }
  return std::chrono::microseconds(kDefaultIdleSpinUs);
}
// Busy-wait rounds before a waiting thread starts yielding its core (oversubscribed machine).
constexpr int kSpinsBeforeYield = 2000;

inline void spin_wait_step(int& spins) {
  if (++spins < kSpinsBeforeYield)
    cpu_relax();
  else
    std::this_thread::yield();
}

}  // namespace

Team::Team(int size)
    : size_(std::max(1, size)), idle_spin_(idle_spin_from_env()), owner_pid_(getpid()) {
  workers_.reserve(size_ - 1);
  for (int i = 1; i < size_; ++i) workers_.emplace_back(&Team::worker, this, i);
}

Team::~Team() {
  if (getpid() != owner_pid_) {
    // A forked child: the workers exist only in the parent. Their std::thread objects are
    // left alive (destroying a joinable std::thread would terminate the process).
    new std::vector<std::thread>(std::move(workers_));
    return;
  }
  {
    std::lock_guard<std::mutex> g(sleep_mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

bool Team::try_run(const std::function<void(int)>& fn) {
  if (getpid() != owner_pid_) return false;  // forked child: no workers here, run alone
  std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return false;
  if (size_ == 1) {
    fn(0);
    return true;
  }
  job_ = &fn;
  finished_.store(0);
  epoch_.fetch_add(1);  // seq_cst: ordered before the sleepers_ load below (no lost wake-up)
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> g(sleep_mutex_);
    wake_.notify_all();
  }
  fn(0);
  int spins = 0;
  while (finished_.load(std::memory_order_acquire) < size_ - 1) spin_wait_step(spins);
  job_ = nullptr;
  return true;
}

void Team::barrier() {
  const uint64_t gen = barrier_gen_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    barrier_gen_.fetch_add(1, std::memory_order_release);
    return;
  }
  int spins = 0;
  while (barrier_gen_.load(std::memory_order_acquire) == gen) spin_wait_step(spins);
}

void Team::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    int polls = 0;
    while (epoch_.load() == seen && !stop_.load()) {
      cpu_relax();
      if ((++polls & 63) != 0 || std::chrono::steady_clock::now() - t0 < idle_spin_) continue;
      std::unique_lock<std::mutex> lk(sleep_mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lk, [&] { return epoch_.load() != seen || stop_.load(); });
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = epoch_.load();
    (*job_)(index);
    finished_.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace univl
