// pybind11 class univl_fast._C.TextTower: the native int8 text tower (csrc/cpu/text_tower.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "serving/team.h"
#include "cpu/text_tower.h"
#include "native_bindings.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

using univl::LayerNormW;
using univl::QLinear;
using univl::TextTowerModel;
using univl::native_bindings::ArraySource;
using univl::native_bindings::InFlight;
using univl::native_bindings::kernels_for;

class PyTextTower {
 public:
  PyTextTower(py::dict arrays, int64_t vocab, int64_t width, int64_t heads, int64_t layers,
              int64_t hidden, int64_t context, int64_t embed_dim, const std::string& act,
              const std::string& pool, int64_t eos_id, double ln_eps, int threads,
              const std::string& isa) {
    if (vocab < 1 || width < 1 || heads < 1 || layers < 1 || hidden < 1 || context < 1 ||
        embed_dim < 1)
      throw py::value_error("TextTower: vocab, width, heads, layers, hidden, context and "
                            "embed_dim must all be >= 1");
    if (width % heads != 0)
      throw py::value_error("TextTower: width " + std::to_string(width) +
                            " is not divisible by heads " + std::to_string(heads));
    if (act != "gelu" && act != "quick_gelu")
      throw py::value_error("TextTower: act must be 'gelu' or 'quick_gelu', got '" + act + "'");
    if (pool != "argmax" && pool != "eos")
      throw py::value_error("TextTower: pool must be 'argmax' or 'eos', got '" + pool + "'");
    if (threads < 1 || threads > 256)
      throw py::value_error("TextTower: threads must be in 1..256, got " + std::to_string(threads));
    isa_ = isa == "auto" ? univl::text_tower_best_isa() : isa;
    kernels_ = kernels_for(isa_);
    threads_ = threads;
    if (threads > 1) team_ = std::make_shared<univl::Team>(threads);
    auto model = std::make_shared<TextTowerModel>();
    TextTowerModel& m = *model;
    m.vocab = vocab;
    m.width = width;
    m.heads = heads;
    m.hidden = hidden;
    m.context = context;
    m.embed_dim = embed_dim;
    m.act = act == "gelu" ? univl::TextAct::kGelu : univl::TextAct::kQuickGelu;
    m.pool = pool == "argmax" ? univl::TextPool::kArgmax : univl::TextPool::kEos;
    m.eos_id = eos_id;
    m.ln_eps = static_cast<float>(ln_eps);
    ArraySource src(std::move(arrays), "native text weights");
    m.token_embedding = src.halves("token_embedding", {vocab, width});
    m.positional = src.floats("positional_embedding", {context, width});
    m.blocks = src.blocks(layers, width, hidden);
    m.ln_final = src.layer_norm("ln_final", width);
    src.linear(m.proj, "proj", embed_dim, width, false);
    model_ = std::move(model);
  }

  // The same weights (shared, read-only) run with another thread count.
  PyTextTower with_threads(int threads) const {
    if (threads < 1 || threads > 256)
      throw py::value_error("TextTower: threads must be in 1..256, got " + std::to_string(threads));
    PyTextTower t(*this);
    t.threads_ = threads;
    t.team_ = threads > 1 ? std::make_shared<univl::Team>(threads) : nullptr;
    return t;
  }

  py::array_t<float> run(const py::object& ids_obj) {
    auto ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(ids_obj);
    if (!ids) throw py::type_error("TextTower.run: ids must be an integer array (batch, seq)");
    if (ids.ndim() != 2)
      throw py::value_error("TextTower.run: ids must be 2-D (batch, seq), got ndim=" +
                            std::to_string(ids.ndim()));
    const int64_t batch = ids.shape(0), seq = ids.shape(1);
    py::array_t<float> out({batch, model_->embed_dim});
    if (batch == 0) return out;
    // A private copy, taken while the GIL is held: the ids are validated and then read again
    // (embedding rows) with the GIL released, when another Python thread could change the
    // caller's array between the two (an out-of-bounds read).
    const std::vector<int64_t> own(ids.data(), ids.data() + batch * seq);
    float* o = out.mutable_data();
    std::string err;
    {
      py::gil_scoped_release release;
      // The team only serves a caller that is alone: with other calls in flight (a service
      // without the batcher) each runs on its own thread, so the cores are not oversubscribed
      // by a team whose barriers would then wait on preempted members.
      const InFlight call(*active_);
      try {
        univl::text_forward(*kernels_, *model_, own.data(), batch, seq, o,
                            call.alone() ? team_.get() : nullptr);
      } catch (const std::invalid_argument& e) {
        err = e.what();
      }
    }
    if (!err.empty()) throw py::value_error("TextTower.run: " + err);
    return out;
  }

  const std::string& isa() const { return isa_; }
  int in_flight() const { return active_->load(); }
  int threads() const { return threads_; }
  int64_t embedding_bytes() const {
    return static_cast<int64_t>(model_->token_embedding.size() * sizeof(uint16_t));
  }
  int64_t weight_bytes() const {
    int64_t s = 0;
    auto add = [&](const QLinear& q) { s += q.packed.size; };
    for (const auto& b : model_->blocks) {
      add(b.qkv);
      add(b.out);
      add(b.fc1);
      add(b.fc2);
    }
    add(model_->proj);
    return s;
  }

 private:
  std::shared_ptr<const TextTowerModel> model_;
  std::shared_ptr<univl::Team> team_;  // threads_ - 1 workers; nullptr when threads_ == 1
  // calls in flight on this tower and the towers sharing its weights (with_threads)
  std::shared_ptr<std::atomic<int>> active_ = std::make_shared<std::atomic<int>>(0);
  const univl::TextKernels* kernels_ = nullptr;
  std::string isa_;
  int threads_ = 1;
};

// Test hooks (tests/test_native_text.py): one kernel of one ISA build on caller data.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

FloatArray native_activation(const std::string& act, const FloatArray& x,
                             const std::string& isa) {
  if (act != "gelu" && act != "quick_gelu")
    throw py::value_error("_native_activation: act must be 'gelu' or 'quick_gelu', got '" + act +
                          "'");
  const univl::TextKernels* k = kernels_for(isa);
  FloatArray y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  std::copy(x.data(), x.data() + x.size(), y.mutable_data());
  k->activation(act == "gelu" ? univl::TextAct::kGelu : univl::TextAct::kQuickGelu,
                y.mutable_data(), static_cast<int64_t>(y.size()));
  return y;
}

constexpr float kUnwritten = std::numeric_limits<float>::quiet_NaN();  // outputs start so

// x (rows, k) float32 -> per-row uint8 quantization and the int8 linear layer (q (n, k) int8,
// scale (n,), bias (n,)): returns (y (rows, n), q_x (rows, k) uint8, scale_x, zero_x int32).
// out (rows, n): the layer adds into a copy of it (residual mode); else y starts as NaN, so an
// output the kernel does not write shows.
py::tuple native_linear(const FloatArray& x, const py::array_t<int8_t, py::array::c_style>& q,
                        const FloatArray& scale, const FloatArray& bias, const std::string& isa,
                        const std::optional<FloatArray>& out) {
  const univl::TextKernels* k = kernels_for(isa);
  if (x.ndim() != 2 || q.ndim() != 2 || x.shape(1) != q.shape(1) || scale.size() != q.shape(0) ||
      bias.size() != q.shape(0))
    throw py::value_error("_native_linear: need x (rows, k), q (n, k), scale (n,), bias (n,)");
  const int64_t rows = x.shape(0), kk = x.shape(1), n = q.shape(0);
  if (out && (out->ndim() != 2 || out->shape(0) != rows || out->shape(1) != n))
    throw py::value_error("_native_linear: out must be (rows, n)");
  QLinear w;
  w.pack(q.data(), n, kk, scale.data(), bias.data());
  py::array_t<float> y({rows, n});
  if (out) std::copy(out->data(), out->data() + rows * n, y.mutable_data());
  else std::fill(y.mutable_data(), y.mutable_data() + rows * n, kUnwritten);
  py::array_t<uint8_t> qx({rows, kk});
  py::array_t<float> sx(rows);
  py::array_t<int32_t> zx(rows);
  const univl::QRows a{qx.mutable_data(), sx.mutable_data(), zx.mutable_data(), kk};
  k->quant_rows(x.data(), 0, rows, kk, a);
  k->qgemm(w.view(), 0, n / 32, a, rows, {y.mutable_data(), n, out.has_value()});
  return py::make_tuple(y, qx, sx, zx);
}

// LayerNorm of every row of x (rows, d) with w, b (d,): y starts as NaN.
FloatArray native_layer_norm(const FloatArray& x, const FloatArray& w, const FloatArray& b,
                             double eps, const std::string& isa) {
  const univl::TextKernels* k = kernels_for(isa);
  if (x.ndim() != 2 || w.size() != x.shape(1) || b.size() != x.shape(1))
    throw py::value_error("_native_layer_norm: need x (rows, d), w (d,), b (d,)");
  const int64_t rows = x.shape(0), d = x.shape(1);
  FloatArray y({rows, d});
  std::fill(y.mutable_data(), y.mutable_data() + rows * d, kUnwritten);
  k->ln_rows(x.data(), 0, rows, d, w.data(), b.data(), static_cast<float>(eps), y.mutable_data());
  return y;
}

// Multi-head attention over packed rows: qkv (rows, 3d) = [q | k | v] per row, lens: rows of
// each sequence (sum = rows). Returns (rows, d), or (len(lens), d) with pooled_only (each
// sequence's last row the only query); starts as NaN.
FloatArray native_attention(const FloatArray& qkv, int64_t heads,
                            const std::vector<int64_t>& lens, bool causal, bool pooled_only,
                            const std::string& isa) {
  const univl::TextKernels* k = kernels_for(isa);
  if (qkv.ndim() != 2 || qkv.shape(1) % 3 != 0 || heads < 1 || (qkv.shape(1) / 3) % heads != 0)
    throw py::value_error("_native_attention: need qkv (rows, 3d) with d % heads == 0");
  const int64_t d = qkv.shape(1) / 3, batch = static_cast<int64_t>(lens.size());
  std::vector<int64_t> off(batch + 1, 0);
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    if (lens[b] < 1) throw py::value_error("_native_attention: every length must be >= 1");
    off[b + 1] = off[b] + lens[b];
    longest = std::max(longest, lens[b]);
  }
  if (off[batch] != qkv.shape(0))
    throw py::value_error("_native_attention: the lengths must add up to qkv's rows");
  const int64_t out_rows = pooled_only ? batch : off[batch];
  FloatArray out({out_rows, d});
  std::fill(out.mutable_data(), out.mutable_data() + out_rows * d, kUnwritten);
  std::vector<float> scratch(static_cast<size_t>((longest + 15) * (d / heads + 1)));
  k->attention(qkv.data(), d, heads, lens.data(), off.data(), causal, pooled_only, 0,
               batch * heads, out.mutable_data(), scratch.data());
  return out;
}

// Embedding rows: tok (vocab, d) float16 bits, pos (seq, d), ids (batch, seq) -> (batch * seq,
// d) = float(tok[id]) + pos[t]; starts as NaN.
FloatArray native_embed(const py::array_t<uint16_t, py::array::c_style>& tok, const FloatArray& pos,
                        const py::array_t<int64_t, py::array::c_style>& ids,
                        const std::string& isa) {
  const univl::TextKernels* k = kernels_for(isa);
  if (tok.ndim() != 2 || pos.ndim() != 2 || ids.ndim() != 2 || pos.shape(1) != tok.shape(1) ||
      ids.shape(1) > pos.shape(0))
    throw py::value_error("_native_embed: need tok (vocab, d), pos (>= seq, d), ids (batch, seq)");
  const int64_t d = tok.shape(1), batch = ids.shape(0), seq = ids.shape(1);
  for (int64_t i = 0; i < batch * seq; ++i)
    if (ids.data()[i] < 0 || ids.data()[i] >= tok.shape(0))
      throw py::value_error("_native_embed: an id is outside the table");
  std::vector<int64_t> len(batch, seq), off(batch + 1);
  for (int64_t b = 0; b <= batch; ++b) off[b] = b * seq;
  FloatArray x({batch * seq, d});
  std::fill(x.mutable_data(), x.mutable_data() + batch * seq * d, kUnwritten);
  k->embed(tok.data(), pos.data(), ids.data(), seq, len.data(), off.data(), d, 0, batch,
           x.mutable_data());
  return x;
}

// Benchmark hook (bench/bench_isa.py): the int8 GEMM of one ISA build alone, on one thread,
// random weights and activations, packed and quantized once: the best of `reps` calls, in
// seconds (short calls, so the best is one that kept its core on a shared machine).
double native_gemm_seconds(int64_t rows, int64_t k, int64_t n, const std::string& isa, int reps) {
  const univl::TextKernels* kt = kernels_for(isa);
  if (rows < 1 || reps < 1) throw py::value_error("_native_gemm_seconds: rows, reps >= 1");
  std::vector<int8_t> w(static_cast<size_t>(n * k));
  std::vector<float> x(static_cast<size_t>(rows * k)), scale(n, 0.01f), bias(n, 0.0f);
  uint32_t state = 12345;
  auto next = [&state]() { return state = state * 1664525u + 1013904223u; };
  for (auto& v : w) v = static_cast<int8_t>(static_cast<int>(next() >> 24) % 255 - 127);
  for (auto& v : x) v = static_cast<float>(next() >> 16) / 65536.0f - 0.5f;
  QLinear q;
  q.pack(w.data(), n, k, scale.data(), bias.data());  // validates n, k
  std::vector<uint8_t> qx(x.size());
  std::vector<float> sx(rows), y(static_cast<size_t>(rows * n));
  std::vector<int32_t> zx(rows);
  const univl::QRows a{qx.data(), sx.data(), zx.data(), k};
  kt->quant_rows(x.data(), 0, rows, k, a);
  double best = 1e30;
  py::gil_scoped_release release;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    kt->qgemm(q.view(), 0, n / 32, a, rows, {y.data(), n, false});
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

void bind_text_tower(py::module_& m) {
  m.def("_native_activation", &native_activation, "act"_a, "x"_a, "isa"_a = "generic",
        "Test hook: the text tower's activation ('gelu' | 'quick_gelu') of one ISA build on x.");
  m.def("_native_linear", &native_linear, "x"_a, "q"_a, "scale"_a, "bias"_a, "isa"_a = "generic",
        "out"_a = py::none(),
        "Test hook: per-row activation quantization + int8 linear layer of one ISA build.");
  m.def("_native_layer_norm", &native_layer_norm, "x"_a, "w"_a, "b"_a, "eps"_a,
        "isa"_a = "generic", "Test hook: the towers' LayerNorm of one ISA build, per row.");
  m.def("_native_attention", &native_attention, "qkv"_a, "heads"_a, "lens"_a, "causal"_a,
        "pooled_only"_a, "isa"_a = "generic",
        "Test hook: the towers' multi-head attention of one ISA build over packed rows.");
  m.def("_native_embed", &native_embed, "tok"_a, "pos"_a, "ids"_a, "isa"_a = "generic",
        "Test hook: the text tower's embedding rows (float16 table + positions), one ISA build.");
  m.def("_native_gemm_seconds", &native_gemm_seconds, "rows"_a, "k"_a, "n"_a, "isa"_a,
        "reps"_a = 200,
        "Benchmark hook: best seconds of one int8 GEMM (rows x k x n) of one ISA build, one "
        "thread.");
  m.def("text_tower_isas", &univl::text_tower_supported_isas,
        "Instruction-set builds of the native towers' kernels this CPU runs, best last "
        "('generic', 'avx2', 'avx512_vnni').");
  py::class_<PyTextTower>(m, "TextTower", R"doc(
TextTower(arrays, *, vocab, width, heads, layers, hidden, context, embed_dim, act, pool,
          eos_id, ln_eps, threads=1, isa="auto")

The native int8 CLIP text tower. arrays: the exporter's weights (dict of numpy arrays, see
univl_fast/export/native_text.py). run(ids int64 (batch, seq)) -> float32 (batch, embed_dim)
raw embeddings; the GIL is released while it runs.
)doc")
      .def(py::init<py::dict, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    const std::string&, const std::string&, int64_t, double, int,
                    const std::string&>(),
           "arrays"_a, py::kw_only(), "vocab"_a, "width"_a, "heads"_a, "layers"_a, "hidden"_a,
           "context"_a, "embed_dim"_a, "act"_a, "pool"_a, "eos_id"_a, "ln_eps"_a,
           "threads"_a = 1, "isa"_a = "auto")
      .def("run", &PyTextTower::run, "ids"_a)
      .def("with_threads", &PyTextTower::with_threads, "threads"_a,
           "A tower sharing these weights that runs with another thread count.")
      .def_property_readonly("isa", &PyTextTower::isa)
      .def_property_readonly("threads", &PyTextTower::threads)
      .def_property_readonly("in_flight", &PyTextTower::in_flight,
                             "Calls running now on this tower and those sharing its weights.")
      .def_property_readonly("weight_bytes", &PyTextTower::weight_bytes,
                             "Bytes of packed int8 weights.")
      .def_property_readonly("embedding_bytes", &PyTextTower::embedding_bytes,
                             "Bytes of the resident token embedding (float16).");
}
