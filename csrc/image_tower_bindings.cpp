// pybind11 class univl_fast._C.ImageTower: the native int8 image tower (csrc/cpu/image_tower.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/image_tower.h"
#include "serving/team.h"
#include "cpu/tower_driver.h"
#include "native_bindings.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

using univl::ImageTowerModel;
using univl::QLinear;
using univl::native_bindings::ArraySource;
using univl::native_bindings::InFlight;
using univl::native_bindings::kernels_for;

void check_threads(int threads) {
  if (threads < 1 || threads > 256)
    throw py::value_error("ImageTower: threads must be in 1..256, got " + std::to_string(threads));
}

class PyImageTower {
 public:
  PyImageTower(py::dict arrays, int64_t width, int64_t heads, int64_t layers, int64_t hidden,
               int64_t embed_dim, int64_t patch, int64_t image_size, const std::string& act,
               double ln_eps, int threads, const std::string& isa) {
    if (width < 1 || heads < 1 || layers < 1 || hidden < 1 || embed_dim < 1 || patch < 1 ||
        image_size < 1)
      throw py::value_error("ImageTower: width, heads, layers, hidden, embed_dim, patch and "
                            "image_size must all be >= 1");
    if (width % heads != 0)
      throw py::value_error("ImageTower: width " + std::to_string(width) +
                            " is not divisible by heads " + std::to_string(heads));
    if (image_size % patch != 0)
      throw py::value_error("ImageTower: image_size " + std::to_string(image_size) +
                            " is not a multiple of patch " + std::to_string(patch));
    if (act != "gelu" && act != "quick_gelu")
      throw py::value_error("ImageTower: act must be 'gelu' or 'quick_gelu', got '" + act + "'");
    check_threads(threads);
    isa_ = isa == "auto" ? univl::text_tower_best_isa() : isa;
    kernels_ = kernels_for(isa_, "ImageTower");
    threads_ = threads;
    if (threads > 1) team_ = std::make_shared<univl::Team>(threads);
    auto model = std::make_shared<ImageTowerModel>();
    ImageTowerModel& m = *model;
    m.width = width;
    m.heads = heads;
    m.hidden = hidden;
    m.embed_dim = embed_dim;
    m.patch = patch;
    m.grid = image_size / patch;
    m.act = act == "gelu" ? univl::TextAct::kGelu : univl::TextAct::kQuickGelu;
    m.ln_eps = static_cast<float>(ln_eps);
    const int64_t t = m.tokens(), np = t - 1;
    ArraySource src(std::move(arrays), "native image weights");
    src.linear(m.patch_embed, "patch_embed", width, 3 * patch * patch, false);
    const std::vector<float> cls = src.floats("class_embedding", {width});
    const std::vector<float> pos = src.floats("positional_embedding", {t, width});
    // class token last (image_tower.h): rows 0..np-1 = positions 1..np, row np = class + pos 0
    m.class_pos.resize(t * width);
    std::memcpy(m.class_pos.data(), pos.data() + width, sizeof(float) * np * width);
    for (int64_t j = 0; j < width; ++j) m.class_pos[np * width + j] = cls[j] + pos[j];
    m.ln_pre = src.layer_norm("ln_pre", width);
    m.blocks = src.blocks(layers, width, hidden);
    m.ln_post = src.layer_norm("ln_post", width);
    src.linear(m.proj, "proj", embed_dim, width, false);
    model_ = std::move(model);
  }

  // The same weights (shared, read-only) run with another thread count.
  PyImageTower with_threads(int threads) const {
    check_threads(threads);
    PyImageTower t(*this);
    t.threads_ = threads;
    t.team_ = threads > 1 ? std::make_shared<univl::Team>(threads) : nullptr;
    return t;
  }

  py::array_t<float> run(const py::object& pixels_obj) {
    const int64_t s = model_->image_size();
    const std::string want = "(n, 3, " + std::to_string(s) + ", " + std::to_string(s) + ")";
    py::array any = py::array::ensure(pixels_obj);
    if (!any)
      throw py::type_error("ImageTower.run: pixels must be a float32 array " + want);
    if (!any.dtype().equal(py::dtype::of<float>()))
      throw py::type_error("ImageTower.run: pixels must be float32, got " +
                           py::str(any.dtype()).cast<std::string>());
    std::string got;
    for (py::ssize_t i = 0; i < any.ndim(); ++i)
      got += (i ? ", " : "") + std::to_string(any.shape(i));
    if (any.ndim() != 4 || any.shape(1) != 3 || any.shape(2) != s || any.shape(3) != s)
      throw py::value_error("ImageTower.run: pixels must have shape " + want + ", got (" + got +
                            ")");
    // C-contiguous float32 (a copy only for a strided view); read with the GIL released, kept
    // alive by this reference.
    auto px = py::array_t<float, py::array::c_style>::ensure(any);
    const int64_t batch = px.shape(0);
    py::array_t<float> out({batch, model_->embed_dim});
    if (batch == 0) return out;
    float* o = out.mutable_data();
    const float* in = px.data();
    {
      py::gil_scoped_release release;
      const InFlight call(*active_);  // see TextTower.run: the team serves a lone caller
      univl::image_forward(*kernels_, *model_, in, batch, o, call.alone() ? team_.get() : nullptr);
    }
    return out;
  }

  const std::string& isa() const { return isa_; }
  int in_flight() const { return active_->load(); }
  int threads() const { return threads_; }
  int64_t image_size() const { return model_->image_size(); }
  int64_t weight_bytes() const {
    int64_t n = model_->patch_embed.packed.size + model_->proj.packed.size;
    for (const auto& b : model_->blocks)
      n += b.qkv.packed.size + b.out.packed.size + b.fc1.packed.size + b.fc2.packed.size;
    return n;
  }

 private:
  std::shared_ptr<const ImageTowerModel> model_;
  std::shared_ptr<univl::Team> team_;  // threads_ - 1 workers; nullptr when threads_ == 1
  std::shared_ptr<std::atomic<int>> active_ = std::make_shared<std::atomic<int>>(0);
  const univl::TextKernels* kernels_ = nullptr;
  std::string isa_;
  int threads_ = 1;
};

}  // namespace

void bind_image_tower(py::module_& m) {
  py::class_<PyImageTower>(m, "ImageTower", R"doc(
ImageTower(arrays, *, width, heads, layers, hidden, embed_dim, patch, image_size, act, ln_eps,
           threads=1, isa="auto")

The native int8 CLIP ViT image tower. arrays: the exporter's weights (dict of numpy arrays, see
univl_fast/export/native_image.py). run(pixels float32 (n, 3, S, S), preprocessed) -> float32
(n, embed_dim) raw embeddings; the GIL is released while it runs. Same kernels (isa) as
TextTower.
)doc")
      .def(py::init<py::dict, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    const std::string&, double, int, const std::string&>(),
           "arrays"_a, py::kw_only(), "width"_a, "heads"_a, "layers"_a, "hidden"_a,
           "embed_dim"_a, "patch"_a, "image_size"_a, "act"_a, "ln_eps"_a, "threads"_a = 1,
           "isa"_a = "auto")
      .def("run", &PyImageTower::run, "pixels"_a)
      .def("with_threads", &PyImageTower::with_threads, "threads"_a,
           "A tower sharing these weights that runs with another thread count.")
      .def_property_readonly("isa", &PyImageTower::isa)
      .def_property_readonly("threads", &PyImageTower::threads)
      .def_property_readonly("image_size", &PyImageTower::image_size)
      .def_property_readonly("in_flight", &PyImageTower::in_flight,
                             "Calls running now on this tower and those sharing its weights.")
      .def_property_readonly("weight_bytes", &PyImageTower::weight_bytes,
                             "Bytes of packed int8 weights.");
  // Diagnostics (bench/profile_towers.py): per-stage timing of both native towers' forward.
  m.def(
      "tower_profile_enable", [](bool on) { univl::tower_profile::enable(on); }, "on"_a,
      "Start (clearing earlier totals) or stop timing the native towers' stages.");
  m.def(
      "tower_profile_read",
      []() {
        namespace tp = univl::tower_profile;
        const tp::Totals t = tp::read();
        py::dict stages;
        for (int i = 0; i < tp::kCount; ++i)
          stages[tp::name(i)] = py::make_tuple(t.work[i], t.wait[i], t.macs[i]);
        return py::make_tuple(t.calls, stages);
      },
      "(calls, {stage: (work_s, wait_s, macs)}) gathered since tower_profile_enable(True); "
      "times are the calling thread's (team member 0).");
}
