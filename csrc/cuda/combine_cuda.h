// Host-side entry points of the CUDA kernels (csrc/cuda/combine.cu). Plain C++: the bindings
// include this without needing nvcc. Declared in every build; only defined when CUDA was compiled
// (UNIVL_WITH_CUDA).
#pragma once

#include <cstdint>
#include <string>

#include "cpu/combine.h"

namespace univl {
namespace cuda {

// Number of CUDA devices usable here; 0 when there is no driver or no GPU. Never throws.
int device_count() noexcept;

// Driver / runtime versions as CUDA encodes them (e.g. 13000), 0 when unknown.
int driver_version() noexcept;
int runtime_version() noexcept;

// Combine on the current CUDA device: copies the (n, d) host inputs (contiguous rows of
// args.a / args.b; row strides honoured) to the device, runs the kernel and copies the float32
// result back into args.out. Returns an empty string on success, else the error message.
std::string combine_image_docs(const CombineArgs& args);

}  // namespace cuda
}  // namespace univl
