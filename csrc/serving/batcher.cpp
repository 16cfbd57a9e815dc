#include "serving/batcher.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <unordered_set>
#include <utility>

namespace univl {

namespace {

// Live batchers, for close_all() at interpreter exit. Entries are added/removed by the
// constructor/destructor, which run with the GIL held.
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::unordered_set<QueryBatcher*>& registry() {
  static auto* r = new std::unordered_set<QueryBatcher*>();  // leaked: outlives static dtors
  return *r;
}

// An exception instance of type exc_type with message msg (GIL held).
py::object make_exception(PyObject* exc_type, const std::string& msg) {
  return py::reinterpret_borrow<py::object>(exc_type)(msg);
}

// Interval at which a waiting caller wakes to let Python handle signals (Ctrl-C).
constexpr auto kSignalPoll = std::chrono::milliseconds(100);

// Raises univl_fast.errors.<name>(message, **kwargs) (GIL held).
[[noreturn]] void raise_library_error(const char* name, const std::string& message,
                                      const py::dict& kwargs) {
  py::object cls = py::module_::import("univl_fast.errors").attr(name);
  py::object exc = cls(message, **kwargs);
  PyErr_SetObject(cls.ptr(), exc.ptr());
  throw py::error_already_set();
}

std::string seconds_str(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", s);
  return buf;
}

// Upper bounds of the batch-size histogram buckets: 1, 2, 4, ... up to the first power of two
// >= max_batch (a last, unbounded bucket follows).
std::vector<uint64_t> bucket_bounds(int64_t max_batch) {
  std::vector<uint64_t> les{1};
  while (les.back() < static_cast<uint64_t>(max_batch)) les.push_back(les.back() * 2);
  return les;
}

size_t bucket_of(uint64_t size, const std::vector<uint64_t>& les) {
  for (size_t b = 0; b < les.size(); ++b)
    if (size <= les[b]) return b;
  return les.size();
}

// Runs f() with the GIL released (GIL held on entry and on return, also when f throws).
// Unlike py::gil_scoped_release, the GIL is re-taken outside a destructor: at interpreter exit
// CPython ends a daemon thread that asks for the GIL by unwinding it (pthread_exit), and that
// unwind must not pass through a noexcept destructor (std::terminate).
template <class F>
auto without_gil(F&& f) -> decltype(f()) {
  using R = decltype(f());
  std::exception_ptr error;
  PyThreadState* state = PyEval_SaveThread();
  if constexpr (std::is_void_v<R>) {
    try {
      f();
    } catch (...) {
      error = std::current_exception();
    }
    PyEval_RestoreThread(state);  // outside any handler: a forced unwind passes straight through
    if (error) std::rethrow_exception(error);
  } else {
    std::optional<R> result;
    try {
      result.emplace(f());
    } catch (...) {
      error = std::current_exception();
    }
    PyEval_RestoreThread(state);
    if (error) std::rethrow_exception(error);
    return std::move(*result);
  }
}

}  // namespace

QueryBatcher::QueryBatcher(py::object fn, int64_t max_batch, int64_t max_wait_us,
                           int64_t num_workers, std::optional<int64_t> max_queue)
    : fn_(std::move(fn)),
      max_batch_(max_batch),
      max_wait_us_(max_wait_us),
      num_workers_(num_workers),
      max_queue_(max_queue ? *max_queue : kDefaultQueueFactor * std::max<int64_t>(max_batch, 1)) {
  if (!PyCallable_Check(fn_.ptr())) throw py::type_error("QueryBatcher: fn must be callable");
  if (max_batch_ < 1)
    throw py::value_error("QueryBatcher: max_batch must be >= 1, got " + std::to_string(max_batch_));
  if (max_wait_us_ < 0)
    throw py::value_error("QueryBatcher: max_wait_us must be >= 0, got " +
                          std::to_string(max_wait_us_));
  if (num_workers_ < 1 || num_workers_ > 256)
    throw py::value_error("QueryBatcher: num_workers must be in 1..256, got " +
                          std::to_string(num_workers_));
  if (max_queue_ < 1)
    throw py::value_error("QueryBatcher: max_queue must be >= 1 (or None for " +
                          std::to_string(kDefaultQueueFactor) + " * max_batch), got " +
                          std::to_string(max_queue_));
  bucket_les_ = bucket_bounds(max_batch_);
  batch_size_counts_.assign(bucket_les_.size() + 1, 0);
  static const bool fork_handlers = [] {
    return pthread_atfork(&QueryBatcher::before_fork, &QueryBatcher::after_fork_parent,
                          &QueryBatcher::after_fork_child) == 0;
  }();
  if (!fork_handlers) throw std::runtime_error("QueryBatcher: pthread_atfork failed");
  {
    std::lock_guard<std::mutex> lk(registry_mutex());
    registry().insert(this);
  }
  start_workers();
}

void QueryBatcher::start_workers() {
  // Workers only read worker_ids_ inside fn, i.e. after taking a request from the queue under
  // mu_, which is enqueued after this returned: the writes below are visible to them.
  for (int64_t i = 0; i < num_workers_; ++i) {
    workers_.emplace_back([this] { worker_loop(); });
    worker_ids_.push_back(workers_.back().get_id());
  }
}

// ------------------------------------------------------------------ fork

void QueryBatcher::before_fork() {
  // Lock order: registry, then each batcher's mu_ (nothing holding mu_ waits for anything else,
  // so this cannot deadlock; the forking thread may hold the GIL: GIL before mu_ is allowed).
  registry_mutex().lock();
  for (QueryBatcher* b : registry()) b->mu_.lock();
}

void QueryBatcher::after_fork_parent() {
  for (QueryBatcher* b : registry()) b->mu_.unlock();
  registry_mutex().unlock();
}

void QueryBatcher::after_fork_child() {
  // The only thread here is the one that forked; it holds every lock taken in before_fork.
  for (QueryBatcher* b : registry()) b->reset_in_child();
  new (&registry_mutex()) std::mutex();
}

void QueryBatcher::reset_in_child() {
  // Fresh synchronisation objects: the old ones may record waiters (or, for join_mu_, an owner)
  // that exist only in the parent. Not destroyed first: destroying them is what is unsafe here.
  new (&mu_) std::mutex();
  new (&worker_cv_) std::condition_variable();
  new (&done_cv_) std::condition_variable();
  new (&join_mu_) std::mutex();
  // Queued requests belong to callers that exist only in the parent; their Python objects may
  // not be touched here (no GIL bookkeeping yet): leak them. Same for the worker threads'
  // std::thread objects (destroying a joinable one would terminate the process).
  new std::deque<RequestPtr>(std::move(queue_));
  queue_.clear();
  new std::vector<std::thread>(std::move(workers_));
  workers_.clear();
  worker_ids_.clear();
  queued_items_ = 0;
  queued_requests_ = 0;
  busy_workers_ = 0;
  last_requests_ = 2;
  restart_in_child_ = !closing_;
}

bool QueryBatcher::on_worker_thread() const {
  const auto me = std::this_thread::get_id();
  return std::find(worker_ids_.begin(), worker_ids_.end(), me) != worker_ids_.end();
}

QueryBatcher::~QueryBatcher() {
  {
    std::lock_guard<std::mutex> lk(registry_mutex());
    registry().erase(this);
  }
  if (on_worker_thread()) {
    // Unreachable in practice (run_batch holds a reference while fn runs); a thread cannot join
    // itself, so leave the workers detached rather than abort.
    {
      std::lock_guard<std::mutex> lk(mu_);
      closing_ = true;
    }
    worker_cv_.notify_all();
    for (auto& w : workers_)
      if (w.joinable()) w.detach();
    return;
  }
  close();
}

void QueryBatcher::stop_and_join() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    closing_ = true;
  }
  worker_cv_.notify_all();
  std::lock_guard<std::mutex> join_lk(join_mu_);
  for (auto& w : workers_)
    if (w.joinable()) w.join();
}

void QueryBatcher::close() {
  if (on_worker_thread()) {
    // Called from inside fn: stop accepting; the worker drains the queue and exits by itself.
    {
      std::lock_guard<std::mutex> lk(mu_);
      closing_ = true;
    }
    worker_cv_.notify_all();
    return;
  }
  if (PyGILState_Check()) {
    // The worker needs the GIL to run what is still queued.
    without_gil([&] { stop_and_join(); });
  } else {
    stop_and_join();
  }
}

void QueryBatcher::close_all() {
  // GIL held throughout the snapshot: no batcher can be destroyed meanwhile, and the strong
  // references keep them alive while close() releases the GIL.
  std::vector<py::object> alive;
  {
    std::lock_guard<std::mutex> lk(registry_mutex());
    for (QueryBatcher* b : registry())
      alive.push_back(py::cast(b, py::return_value_policy::reference));
  }
  for (auto& obj : alive) obj.cast<QueryBatcher*>()->close();
}

bool QueryBatcher::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closing_;
}

bool QueryBatcher::abandon_locked(Request& req) {
  if (req.state != State::kQueued) return false;
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->get() == &req) {
      queue_.erase(it);  // not the last reference: the caller holds one (no Python object dies)
      break;
    }
  }
  queued_items_ -= req.n;
  --queued_requests_;
  req.state = State::kDone;
  return true;
}

double QueryBatcher::retry_after_s_locked() const {
  // Time for the workers to work through what is queued now, from the recent batch time.
  const double per_batch = batch_seconds_ewma_ > 0 ? batch_seconds_ewma_ : 0.01;
  const double batches = 1.0 + static_cast<double>(queued_items_) / static_cast<double>(max_batch_);
  return std::clamp(per_batch * batches / static_cast<double>(num_workers_), 0.001, 60.0);
}

py::list QueryBatcher::submit(const py::object& items, std::optional<double> timeout_s) {
  if (on_worker_thread())
    throw std::runtime_error("QueryBatcher.submit called from inside the batch function "
                             "(it would wait for itself)");
  if (timeout_s && !(std::isfinite(*timeout_s) && *timeout_s > 0))
    throw py::value_error("QueryBatcher.submit: timeout must be None or a positive, finite "
                          "number of seconds, got " +
                          py::repr(py::float_(*timeout_s)).cast<std::string>());
  if (restart_in_child_) {
    // First submit in a process forked after this batcher started: its workers stayed behind
    // in the parent. The GIL serialises this with every other submit.
    restart_in_child_ = false;
    start_workers();
    std::lock_guard<std::mutex> lk(mu_);
    ++restarts_after_fork_;
  }
  PyObject* copied = PySequence_List(items.ptr());  // our own list: callers may mutate theirs
  if (!copied) throw py::error_already_set();

  // The caller's reference to its request is dropped only while this thread holds the GIL. At
  // interpreter exit CPython may end a daemon thread as it re-takes the GIL (by unwinding it);
  // the unwind must then not free Python objects, so the request is leaked instead.
  struct CallerRef {
    RequestPtr* ptr;
    bool gil_held = true;
    ~CallerRef() {
      if (gil_held) delete ptr;
    }
  } mine{new RequestPtr(std::make_shared<Request>())};
  Request& req = **mine.ptr;
  req.items = py::reinterpret_steal<py::object>(copied);
  req.n = static_cast<size_t>(PyList_GET_SIZE(copied));

  const auto start = Clock::now();
  // Beyond ~30 years a deadline is no deadline (and the time_point arithmetic would overflow).
  const bool bounded = timeout_s && *timeout_s < 1e9;
  const auto deadline =
      bounded ? start + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(*timeout_s))
              : Clock::time_point::max();

  enum class Admit { kClosed, kFull, kQueued, kEmpty };
  size_t depth = 0;
  double retry_after = 0;
  mine.gil_held = false;
  const Admit admit = without_gil([&] {
    std::lock_guard<std::mutex> lk(mu_);
    if (closing_) return Admit::kClosed;
    if (req.n == 0) return Admit::kEmpty;
    // A request larger than the whole bound still gets in when the queue is empty.
    if (queued_items_ > 0 && queued_items_ + req.n > static_cast<size_t>(max_queue_)) {
      ++rejected_requests_;
      depth = queued_items_;
      retry_after = retry_after_s_locked();
      return Admit::kFull;
    }
    req.enqueued = start;
    queued_items_ += req.n;
    ++queued_requests_;
    ++requests_;
    max_queued_items_ = std::max<uint64_t>(max_queued_items_, queued_items_);
    queue_.push_back(*mine.ptr);
    return Admit::kQueued;
  });
  mine.gil_held = true;
  switch (admit) {
    case Admit::kClosed:
      throw std::runtime_error("batcher is closed");
    case Admit::kEmpty:
      return py::list();
    case Admit::kFull: {
      py::dict kw;
      kw["limit"] = max_queue_;
      kw["retry_after_s"] = retry_after;
      raise_library_error("Overloaded",
                          "queue full: " + std::to_string(depth) + " items are waiting and " +
                              std::to_string(req.n) + " more would pass max_queue=" +
                              std::to_string(max_queue_) + "; retry in about " +
                              seconds_str(retry_after) + " s",
                          kw);
    }
    case Admit::kQueued:
      break;
  }
  worker_cv_.notify_one();

  for (;;) {
    enum class Wait { kDone, kExpired, kPoll };
    bool was_queued = false;
    mine.gil_held = false;
    const Wait w = without_gil([&] {
      std::unique_lock<std::mutex> lk(mu_);
      const auto now = Clock::now();
      const auto until = deadline - now > kSignalPoll ? now + kSignalPoll : deadline;
      if (done_cv_.wait_until(lk, until, [&] { return req.done; })) return Wait::kDone;
      if (Clock::now() < deadline) return Wait::kPoll;
      was_queued = abandon_locked(req);
      ++(was_queued ? expired_in_queue_ : expired_running_);
      return Wait::kExpired;
    });
    mine.gil_held = true;
    if (w == Wait::kDone) break;
    if (w == Wait::kExpired) {
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      py::dict kw;
      kw["timeout_s"] = *timeout_s;
      raise_library_error(
          "DeadlineExceeded",
          "deadline exceeded: timeout=" + seconds_str(*timeout_s) + " s passed after " +
              seconds_str(waited) + " s " +
              (was_queued ? "while the request waited in the queue (removed, not run)"
                          : "while its batch was running (its results are discarded)"),
          kw);
    }
    // Let Ctrl-C interrupt a long wait (a no-op off the main thread). A request still queued is
    // removed; a running one finishes and the worker drops its result.
    if (PyErr_CheckSignals() != 0) {
      {
        std::lock_guard<std::mutex> lk(mu_);  // GIL before mu_: allowed
        abandon_locked(req);
      }
      throw py::error_already_set();
    }
  }

  if (req.error) {
    py::object err = std::move(req.error);
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
    throw py::error_already_set();
  }
  return py::reinterpret_borrow<py::list>(req.result);
}

void QueryBatcher::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    worker_cv_.wait(lk, [&] { return closing_ || !queue_.empty(); });
    if (queue_.empty()) break;  // closing and drained

    // Wait for a full batch, at most max_wait_us after the oldest request arrived, but only when
    // there is concurrency to wait for: the previous batch was coalesced from several requests,
    // or another worker is running one. A lone caller (the previous batch was its own single
    // request) runs at once instead of paying max_wait_us per call. When closing, flush at once.
    // (Another worker may take the waiting requests meanwhile.)
    if (last_requests_ > 1 || busy_workers_ > 0) {
      const auto deadline = queue_.front()->enqueued + std::chrono::microseconds(max_wait_us_);
      worker_cv_.wait_until(lk, deadline, [&] {
        return closing_ || queued_items_ >= static_cast<size_t>(max_batch_);
      });
    }

    // Take whole requests, oldest first, up to max_batch items; a request larger than max_batch
    // runs alone.
    std::vector<RequestPtr> batch;
    size_t total = 0;
    const auto taken = Clock::now();
    while (!queue_.empty()) {
      const RequestPtr& next = queue_.front();
      if (!batch.empty() && total + next->n > static_cast<size_t>(max_batch_)) break;
      total += next->n;
      next->state = State::kRunning;
      queue_wait_s_sum_ += std::chrono::duration<double>(taken - next->enqueued).count();
      batch.push_back(next);
      queue_.pop_front();
      if (total >= static_cast<size_t>(max_batch_)) break;
    }
    queued_items_ -= total;
    queued_requests_ -= batch.size();
    started_requests_ += batch.size();
    if (batch.empty()) continue;  // another worker took them (or their callers gave up)
    if (!queue_.empty()) worker_cv_.notify_one();  // more waiting: let an idle worker start
    last_requests_ = batch.size();
    ++busy_workers_;

    lk.unlock();
    run_batch(batch);
    lk.lock();
    --busy_workers_;
    const double took = std::chrono::duration<double>(Clock::now() - taken).count();
    batch_seconds_ewma_ =
        batch_seconds_ewma_ > 0 ? 0.8 * batch_seconds_ewma_ + 0.2 * took : took;
  }
}

// Py_AddPendingCall callback: drops a reference on the main thread.
static int decref_pending(void* obj) {
  Py_DECREF(static_cast<PyObject*>(obj));
  return 0;
}

void QueryBatcher::run_batch(std::vector<RequestPtr>& batch) {
  py::gil_scoped_acquire gil;
  // Keep the Python batcher alive while this thread runs fn: its destructor joins this thread,
  // so it must never run here (fn, or the garbage collector run inside fn, could otherwise drop
  // the last reference).
  py::object self_ref = py::cast(this, py::return_value_policy::reference);
  if (!run_once(batch) && batch.size() > 1) {
    // Some items of the coalesced batch failed: run each request alone so the error reaches only
    // its own caller.
    {
      std::lock_guard<std::mutex> lk(mu_);
      retried_requests_ += batch.size();
    }
    for (auto& req : batch) {
      std::vector<RequestPtr> one{req};
      run_once(one);
    }
  }
  finish(batch);
  batch.clear();  // drop the Python objects while the GIL is held
  if (Py_REFCNT(self_ref.ptr()) == 1) {
    // Everyone else let go meanwhile: hand the last reference to the main thread.
    PyObject* last = self_ref.release().ptr();
    if (Py_AddPendingCall(&decref_pending, last) != 0) {
      // Pending-call queue full: leaking the batcher beats destroying it on its own thread.
    }
  }
}

bool QueryBatcher::run_once(std::vector<RequestPtr>& batch) {
  size_t total = 0;
  for (auto& req : batch) total += req->n;

  py::object error;
  try {
    py::list joined(total);
    size_t pos = 0;
    for (auto& req : batch) {
      for (size_t i = 0; i < req->n; ++i) {
        PyObject* item = PyList_GET_ITEM(req->items.ptr(), i);
        Py_INCREF(item);
        PyList_SET_ITEM(joined.ptr(), pos++, item);
      }
    }
    py::object fn = fn_;  // own reference: the collector may clear fn_ meanwhile
    if (fn.is_none())
      throw std::runtime_error("the batcher was cleared by the garbage collector");
    py::object returned = fn(joined);
    PyObject* as_list = PySequence_List(returned.ptr());
    if (!as_list) throw py::error_already_set();
    py::list results = py::reinterpret_steal<py::list>(as_list);
    const size_t got = static_cast<size_t>(PyList_GET_SIZE(results.ptr()));
    if (got != total) {
      error = make_exception(PyExc_ValueError,
                             "QueryBatcher: fn returned " + std::to_string(got) + " results for " +
                                 std::to_string(total) + " items (it must return one per item)");
    } else {
      size_t off = 0;
      for (auto& req : batch) {
        PyObject* slice = PyList_GetSlice(results.ptr(), static_cast<Py_ssize_t>(off),
                                          static_cast<Py_ssize_t>(off + req->n));
        if (!slice) throw py::error_already_set();
        req->result = py::reinterpret_steal<py::object>(slice);
        off += req->n;
      }
    }
  } catch (py::error_already_set& e) {
    error = e.value();
  } catch (const std::exception& e) {
    error = make_exception(PyExc_RuntimeError, std::string("QueryBatcher: ") + e.what());
  }

  {
    std::lock_guard<std::mutex> lk(mu_);
    ++batches_;
    items_ += total;
    max_batch_seen_ = std::max<uint64_t>(max_batch_seen_, total);
    ++batch_size_counts_[bucket_of(total, bucket_les_)];
    if (error) ++failed_batches_;
  }
  if (!error) return true;
  for (auto& req : batch) req->result = py::object();
  if (batch.size() == 1) batch[0]->error = std::move(error);
  return false;
}

void QueryBatcher::finish(std::vector<RequestPtr>& batch) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& req : batch) {
      req->done = true;
      req->state = State::kDone;
    }
  }
  done_cv_.notify_all();
}

py::dict QueryBatcher::stats() const {
  // Copied under mu_ (taken with the GIL held: the lock order allows it), converted after.
  uint64_t batches, items, max_seen, requests, failed, retried, queued, queued_req, max_queued,
      rejected, exp_queue, exp_running, started, restarts;
  double wait_sum, retry_after;
  bool closing;
  std::vector<uint64_t> counts;
  {
    std::lock_guard<std::mutex> lk(mu_);
    batches = batches_;
    items = items_;
    max_seen = max_batch_seen_;
    requests = requests_;
    failed = failed_batches_;
    retried = retried_requests_;
    queued = queued_items_;
    queued_req = queued_requests_;
    max_queued = max_queued_items_;
    rejected = rejected_requests_;
    exp_queue = expired_in_queue_;
    exp_running = expired_running_;
    started = started_requests_;
    restarts = restarts_after_fork_;
    wait_sum = queue_wait_s_sum_;
    retry_after = retry_after_s_locked();
    closing = closing_;
    counts = batch_size_counts_;
  }
  py::dict d;
  d["batches"] = batches;
  d["items"] = items;
  d["requests"] = requests;
  d["mean_batch_size"] = batches ? static_cast<double>(items) / static_cast<double>(batches) : 0.0;
  d["max_batch_size"] = max_seen;
  d["failed_batches"] = failed;
  d["retried_requests"] = retried;
  d["queued_items"] = queued;
  d["queued_requests"] = queued_req;
  d["max_queued_items"] = max_queued;
  d["rejected_requests"] = rejected;
  d["expired_in_queue"] = exp_queue;
  d["expired_running"] = exp_running;
  d["started_requests"] = started;
  d["queue_wait_s_sum"] = wait_sum;
  d["retry_after_s"] = retry_after;
  d["restarts_after_fork"] = restarts;
  // Cumulative (le, count) pairs, Prometheus style; the last bound is inf and counts every batch.
  py::list buckets;
  const auto& les = bucket_les_;
  uint64_t cumulative = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    cumulative += counts[b];
    py::object le = b < les.size() ? py::object(py::float_(static_cast<double>(les[b])))
                                   : py::object(py::float_(INFINITY));
    buckets.append(py::make_tuple(le, cumulative));
  }
  d["batch_size_buckets"] = buckets;
  d["closed"] = closing;
  d["max_batch"] = max_batch_;
  d["max_wait_us"] = max_wait_us_;
  d["num_workers"] = num_workers_;
  d["max_queue"] = max_queue_;
  return d;
}

}  // namespace univl
