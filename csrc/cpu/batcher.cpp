#include "cpu/batcher.h"

#include <algorithm>
#include <exception>
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
                           int64_t num_workers)
    : fn_(std::move(fn)),
      max_batch_(max_batch),
      max_wait_us_(max_wait_us),
      num_workers_(num_workers) {
  if (!PyCallable_Check(fn_.ptr())) throw py::type_error("QueryBatcher: fn must be callable");
  if (max_batch_ < 1)
    throw py::value_error("QueryBatcher: max_batch must be >= 1, got " + std::to_string(max_batch_));
  if (max_wait_us_ < 0)
    throw py::value_error("QueryBatcher: max_wait_us must be >= 0, got " +
                          std::to_string(max_wait_us_));
  if (num_workers_ < 1 || num_workers_ > 256)
    throw py::value_error("QueryBatcher: num_workers must be in 1..256, got " +
                          std::to_string(num_workers_));
  {
    std::lock_guard<std::mutex> lk(registry_mutex());
    registry().insert(this);
  }
  // Workers only read worker_ids_ inside fn, i.e. after taking a request from the queue under
  // mu_, which happens after this constructor returned: the writes below are visible to them.
  for (int64_t i = 0; i < num_workers_; ++i) {
    workers_.emplace_back([this] { worker_loop(); });
    worker_ids_.push_back(workers_.back().get_id());
  }
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

py::list QueryBatcher::submit(const py::object& items) {
  if (on_worker_thread())
    throw std::runtime_error("QueryBatcher.submit called from inside the batch function "
                             "(it would wait for itself)");
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

  mine.gil_held = false;
  const bool accepted = without_gil([&] {
    std::lock_guard<std::mutex> lk(mu_);
    if (closing_) return false;
    if (req.n > 0) {
      req.enqueued = Clock::now();
      queued_items_ += req.n;
      ++requests_;
      queue_.push_back(*mine.ptr);
    }
    return true;
  });
  mine.gil_held = true;
  if (!accepted) throw std::runtime_error("batcher is closed");
  if (req.n == 0) return py::list();
  worker_cv_.notify_one();

  for (;;) {
    mine.gil_held = false;
    const bool done = without_gil([&] {
      std::unique_lock<std::mutex> lk(mu_);
      return done_cv_.wait_for(lk, kSignalPoll, [&] { return req.done; });
    });
    mine.gil_held = true;
    if (done) break;
    // Let Ctrl-C interrupt a long wait (a no-op off the main thread). The abandoned request is
    // still run; the worker drops its result.
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
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
    while (!queue_.empty()) {
      const RequestPtr& next = queue_.front();
      if (!batch.empty() && total + next->n > static_cast<size_t>(max_batch_)) break;
      total += next->n;
      batch.push_back(next);
      queue_.pop_front();
      if (total >= static_cast<size_t>(max_batch_)) break;
    }
    queued_items_ -= total;
    if (batch.empty()) continue;  // another worker took them
    if (!queue_.empty()) worker_cv_.notify_one();  // more waiting: let an idle worker start
    last_requests_ = batch.size();
    ++busy_workers_;

    lk.unlock();
    run_batch(batch);
    lk.lock();
    --busy_workers_;
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
    for (auto& req : batch) req->done = true;
  }
  done_cv_.notify_all();
}

py::dict QueryBatcher::stats() const {
  uint64_t batches, items, max_seen, requests, failed, retried, queued;
  bool closing;
  {
    // Taking mu_ with the GIL held follows the lock order (GIL, then mu_).
    std::lock_guard<std::mutex> lk(mu_);
    batches = batches_;
    items = items_;
    max_seen = max_batch_seen_;
    requests = requests_;
    failed = failed_batches_;
    retried = retried_requests_;
    queued = queued_items_;
    closing = closing_;
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
  d["closed"] = closing;
  d["max_batch"] = max_batch_;
  d["max_wait_us"] = max_wait_us_;
  d["num_workers"] = num_workers_;
  return d;
}

}  // namespace univl
