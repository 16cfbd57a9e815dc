// What the native towers' pybind11 classes share (csrc/text_tower_bindings.cpp,
// csrc/image_tower_bindings.cpp): the kernel lookup, the in-flight count and the reader of the
// exporter's weight arrays. Baseline target only (included by the binding files).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/text_tower.h"

namespace univl {
namespace native_bindings {

namespace py = pybind11;

// who: the class named in the error ("TextTower", "ImageTower")
inline const TextKernels* kernels_for(const std::string& isa,
                                      const std::string& who = "TextTower") {
  const TextKernels* k = text_kernels_for(isa);
  if (!k) {
    std::string have;
    for (const auto& s : text_tower_supported_isas()) have += (have.empty() ? "" : ", ") + s;
    throw py::value_error(who + ": isa '" + isa + "' is not available on this CPU (have: " +
                          have + ")");
  }
  return k;
}

// Counts a call in flight for as long as it lives, whatever ends the call (an exception
// included): a count left behind would keep the tower off its team for good.
class InFlight {
 public:
  explicit InFlight(std::atomic<int>& n) : n_(n), alone_(n.fetch_add(1) == 0) {}
  ~InFlight() { n_.fetch_sub(1); }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
  bool alone() const { return alone_; }

 private:
  std::atomic<int>& n_;
  const bool alone_;
};

// The arrays the exporter writes (univl_fast/export/native_text.py, native_image.py); every
// lookup names the key. what: how errors name the file ("native text weights").
class ArraySource {
 public:
  ArraySource(py::dict arrays, std::string what)
      : arrays_(std::move(arrays)), what_(std::move(what)) {}

  // dtype: what the array must hold (default: T's own); T: how its elements are read
  template <typename T>
  py::array_t<T, py::array::c_style> get(const std::string& key, std::vector<int64_t> shape,
                                         const py::dtype& dtype = py::dtype::of<T>()) {
    if (!arrays_.contains(key)) throw py::key_error(what_ + ": missing '" + key + "'");
    py::array raw = py::reinterpret_borrow<py::array>(arrays_[key.c_str()]);
    if (!raw.dtype().equal(dtype))
      throw py::type_error(what_ + ": '" + key + "' has dtype " +
                           py::str(raw.dtype()).cast<std::string>() + ", expected " +
                           py::str(dtype).cast<std::string>());
    auto arr = py::array_t<T, py::array::c_style>::ensure(
        dtype.equal(py::dtype::of<T>()) ? raw : raw.attr("view")(py::dtype::of<T>()));
    bool ok = arr && arr.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = arr.shape(i) == shape[i];
    if (!ok) {
      std::string want;
      for (auto s : shape) want += (want.empty() ? "" : ", ") + std::to_string(s);
      std::string got;
      for (py::ssize_t i = 0; i < raw.ndim(); ++i)
        got += (i ? ", " : "") + std::to_string(raw.shape(i));
      throw py::value_error(what_ + ": '" + key + "' has shape (" + got +
                            "), expected (" + want + ")");
    }
    return arr;
  }

  std::vector<float> floats(const std::string& key, std::vector<int64_t> shape) {
    auto a = get<float>(key, shape);
    return std::vector<float>(a.data(), a.data() + a.size());
  }

  // float16 array -> its raw bits
  std::vector<uint16_t> halves(const std::string& key, std::vector<int64_t> shape) {
    auto a = get<uint16_t>(key, shape, py::dtype("float16"));
    return std::vector<uint16_t>(a.data(), a.data() + a.size());
  }

  LayerNormW layer_norm(const std::string& key, int64_t d) {
    return LayerNormW{floats(key + ".w", {d}), floats(key + ".b", {d})};
  }

  void linear(QLinear& out, const std::string& key, int64_t n, int64_t k, bool has_bias) {
    auto q = get<int8_t>(key + ".q", {n, k});
    auto s = get<float>(key + ".s", {n});
    std::vector<float> b;
    if (has_bias) b = floats(key + ".b", {n});
    try {
      out.pack(q.data(), n, k, s.data(), has_bias ? b.data() : nullptr);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(what_ + ": '" + key + "': " + e.what());
    }
  }

  // the transformer blocks "b{i}.": ln_1, ln_2, qkv, out, fc1, fc2 (the exporters' layout)
  std::vector<TextBlockW> blocks(int64_t layers, int64_t width, int64_t hidden) {
    std::vector<TextBlockW> out(layers);
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "b" + std::to_string(l) + ".";
      auto& b = out[l];
      b.ln_1 = layer_norm(p + "ln_1", width);
      b.ln_2 = layer_norm(p + "ln_2", width);
      linear(b.qkv, p + "qkv", 3 * width, width, true);
      linear(b.out, p + "out", width, width, true);
      linear(b.fc1, p + "fc1", hidden, width, true);
      linear(b.fc2, p + "fc2", width, hidden, true);
    }
    return out;
  }

 private:
  py::dict arrays_;
  std::string what_;
};

}  // namespace native_bindings
}  // namespace univl
