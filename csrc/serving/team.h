// A small fixed team of threads for the native text tower: the caller plus `size - 1` workers
// run one function together (SPMD) and meet at barriers between its stages.
//
// Why not OpenMP: libgomp's team for a call made from a thread other than the process's first
// one ran a ViT-B-32 query 3.6x slower here (1.06 vs 3.81 ms, 2 threads), and a serving process
// calls from request / batch-worker threads. libgomp also keeps its workers spinning for
// milliseconds after a region, taking a core from the next stage (faiss has its own libgomp).
// Here the workers spin only inside a run (barriers) and for kIdleSpin after it, then sleep.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace univl {

class Team {
 public:
  explicit Team(int size);
  ~Team();
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  int size() const { return size_; }

  // Runs fn(thread_index) on every member (the caller is index 0) and returns when all are
  // done. Returns false without running anything when another call is using the team, or in
  // a child process forked after the team was made (the caller should then run alone).
  // fn must not throw.
  bool try_run(const std::function<void(int)>& fn);

  // Inside fn: waits until every member has reached the same barrier.
  void barrier();

 private:
  void worker(int index);

  const int size_;
  std::chrono::microseconds idle_spin_;
  const long owner_pid_;  // after a fork() the child has no workers: it runs alone
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one run at a time
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> epoch_{0};  // bumped to start a run
  std::atomic<int> finished_{0};    // workers done with the current run
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  // barrier
  std::atomic<int> arrived_{0};
  std::atomic<uint64_t> barrier_gen_{0};
};

}  // namespace univl
