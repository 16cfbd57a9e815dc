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
// Backpressure: at most max_queue items wait in the queue (items taken by a worker no longer
// count); a submit that would overflow it raises univl_fast.errors.Overloaded at once (a request
// larger than max_queue is admitted only into an empty queue, so it is never refused forever).
// Deadlines: submit(items, timeout_s) raises univl_fast.errors.DeadlineExceeded when its results
// are not ready in time; a request still queued then is removed (never run), one whose batch is
// already running is abandoned (its results are dropped when the batch ends).
//
// Fork safety: pthread_atfork handlers take every batcher's mutex before fork() (so the child
// gets consistent state), and in the child re-make the mutexes and condition variables, leak
// the parent's queued requests and worker std::thread objects (their threads and callers exist
// only in the parent) and mark the batcher for a restart: its first submit in the child starts
// fresh workers.
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
#include <optional>
#include <thread>
#include <vector>

namespace univl {

namespace py = pybind11;

class QueryBatcher {
 public:
  // max_queue: most items waiting in the queue; nullopt: kDefaultQueueFactor * max_batch.
  QueryBatcher(py::object fn, int64_t max_batch, int64_t max_wait_us, int64_t num_workers = 1,
               std::optional<int64_t> max_queue = std::nullopt);
  static constexpr int64_t kDefaultQueueFactor = 16;
  ~QueryBatcher();

  QueryBatcher(const QueryBatcher&) = delete;
  QueryBatcher& operator=(const QueryBatcher&) = delete;

  // Called with the GIL held. Blocks until this request's results are ready (at most timeout_s
  // seconds when given: then raises DeadlineExceeded); re-raises the exception fn raised for
  // these items; raises Overloaded at once when the queue is full.
  py::list submit(const py::object& items, std::optional<double> timeout_s = std::nullopt);

  // Called with the GIL held (or from the destructor). Stops accepting requests, runs everything
  // already queued, then joins the worker. Safe to call more than once and from several threads.
  void close();

  py::dict stats() const;
  bool closed() const;
  int64_t max_batch() const { return max_batch_; }
  int64_t max_wait_us() const { return max_wait_us_; }
  int64_t num_workers() const { return num_workers_; }
  int64_t max_queue() const { return max_queue_; }

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

  enum class State { kQueued, kRunning, kDone };
  struct Request {
    py::object items;   // list; GIL only
    py::object result;  // list slice; GIL only
    py::object error;   // exception instance; GIL only
    size_t n = 0;
    Clock::time_point enqueued;
    State state = State::kQueued;  // guarded by mu_
    bool done = false;             // guarded by mu_
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
  void start_workers();  // GIL held (or in the constructor)
  // Caller gives up on a request that is not done (mu_ held): out of the queue if still there.
  // Returns true if it was still queued.
  bool abandon_locked(Request& req);
  double retry_after_s_locked() const;

  // pthread_atfork handlers (see the header comment).
  static void before_fork();
  static void after_fork_parent();
  static void after_fork_child();
  void reset_in_child();

  py::object fn_;
  const int64_t max_batch_;
  const int64_t max_wait_us_;
  const int64_t num_workers_;
  const int64_t max_queue_;

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
  // Written in the constructor, and in a forked child by the first submit (GIL held, as are all
  // readers there).
  std::vector<std::thread::id> worker_ids_;
  bool restart_in_child_ = false;  // GIL held: set by the fork handler, cleared by submit

  // Statistics (guarded by mu_).
  uint64_t batches_ = 0;        // fn calls
  uint64_t items_ = 0;          // items passed to fn
  uint64_t max_batch_seen_ = 0;
  uint64_t requests_ = 0;       // submit calls with at least one item
  uint64_t failed_batches_ = 0; // fn calls that raised or returned the wrong length
  uint64_t retried_requests_ = 0;
  uint64_t queued_requests_ = 0;     // requests in queue_
  uint64_t max_queued_items_ = 0;    // largest queued_items_ ever seen (after an admission)
  uint64_t rejected_requests_ = 0;   // refused with Overloaded
  uint64_t expired_in_queue_ = 0;    // deadline passed while queued: removed, never run
  uint64_t expired_running_ = 0;     // deadline passed while its batch ran: result dropped
  uint64_t started_requests_ = 0;    // requests taken from the queue by a worker
  double queue_wait_s_sum_ = 0.0;    // their total time in the queue
  uint64_t restarts_after_fork_ = 0;
  double batch_seconds_ewma_ = 0.0;  // recent time of one batch (fn call incl. retries)
  // fn calls by size: bucket b counts sizes in (2^(b-1), 2^b]; the last bucket is > max_batch.
  std::vector<uint64_t> batch_size_counts_;
  std::vector<uint64_t> bucket_les_;  // their upper bounds (constant after construction)
};

}  // namespace univl
