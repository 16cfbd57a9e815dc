// QueryBatcher: coalesces concurrent Python calls into batched calls of one Python function.
//
// Many threads call submit(items); each blocks (GIL released) while a worker std::thread
// gathers pending requests until max_batch items are waiting or max_wait_us has passed since the
// oldest one arrived (it waits only when there is concurrency to wait for: see worker_loop),
// then takes the GIL, calls fn(concatenated items) once and hands every caller its own slice of
// the result, in order. With num_workers > 1, several workers take
// batches from the one queue, so one batch can be formed and run while another is still in fn
// (fn must then be safe to call from several threads at once; it should release the GIL for its
// heavy work, as ONNX Runtime and FAISS do).
//
// Locking rule: the GIL is always taken before mu_, never while holding it. Python objects are
// created, copied and dropped only while the GIL is held.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace univl {

namespace py = pybind11;

class QueryBatcher {
 public:
  QueryBatcher(py::object fn, int64_t max_batch, int64_t max_wait_us, int64_t num_workers = 1);
  ~QueryBatcher();

  QueryBatcher(const QueryBatcher&) = delete;
  QueryBatcher& operator=(const QueryBatcher&) = delete;

  // Called with the GIL held. Blocks until this request's results are ready; re-raises the
  // exception fn raised for these items.
  py::list submit(const py::object& items);

  // Called with the GIL held (or from the destructor). Stops accepting requests, runs everything
  // already queued, then joins the worker. Safe to call more than once and from several threads.
  void close();

  py::dict stats() const;
  bool closed() const;
  int64_t max_batch() const { return max_batch_; }
  int64_t max_wait_us() const { return max_wait_us_; }
  int64_t num_workers() const { return num_workers_; }

  // Closes every live batcher; registered with Python's atexit so no worker is left waiting for
  // the GIL while the interpreter finalizes.
  static void close_all();

  // For the garbage collector (GIL held): fn often refers back to the batcher's owner (a bound
  // method), and the collector must see that reference to free such cycles.
  int traverse(visitproc visit, void* arg) {
    Py_VISIT(fn_.ptr());
    return 0;
  }
  void clear() { fn_ = py::none(); }

 private:
  using Clock = std::chrono::steady_clock;

  struct Request {
    py::object items;   // list; GIL only
    py::object result;  // list slice; GIL only
    py::object error;   // exception instance; GIL only
    size_t n = 0;
    Clock::time_point enqueued;
    bool done = false;  // guarded by mu_
  };
  using RequestPtr = std::shared_ptr<Request>;

  void worker_loop();
  // Runs fn over the batch (takes the GIL); on failure of a coalesced batch, re-runs each request
  // alone so an error reaches only the callers whose items caused it.
  void run_batch(std::vector<RequestPtr>& batch);
  bool run_once(std::vector<RequestPtr>& batch);  // GIL held; true on success
  void finish(std::vector<RequestPtr>& batch);    // GIL held; marks done and wakes callers
  void stop_and_join();
  bool on_worker_thread() const;

  py::object fn_;
  const int64_t max_batch_;
  const int64_t max_wait_us_;
  const int64_t num_workers_;

  mutable std::mutex mu_;
  std::condition_variable worker_cv_;
  std::condition_variable done_cv_;
  std::deque<RequestPtr> queue_;
  size_t queued_items_ = 0;
  bool closing_ = false;
  // Requests in the most recently started batch; starts at 2 ("assume company") so the first
  // batch still coalesces callers that arrive together.
  size_t last_requests_ = 2;
  int busy_workers_ = 0;      // workers inside run_batch

  std::mutex join_mu_;
  std::vector<std::thread> workers_;
  std::vector<std::thread::id> worker_ids_;  // written before the constructor returns only

  // Statistics (guarded by mu_).
  uint64_t batches_ = 0;        // fn calls
  uint64_t items_ = 0;          // items passed to fn
  uint64_t max_batch_seen_ = 0;
  uint64_t requests_ = 0;       // submit calls with at least one item
  uint64_t failed_batches_ = 0; // fn calls that raised or returned the wrong length
  uint64_t retried_requests_ = 0;
};

}  // namespace univl
