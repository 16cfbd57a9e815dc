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

// Combine on CUDA device `device` (-1: the calling thread's current device): copies the (n, d)
// host inputs (contiguous rows of args.a / args.b; any row stride, negative and zero included)
// into that device's reused buffers, runs the kernel on the device's own stream and copies the
// float32 result back into args.out (row pitch args.out_row_stride >= d, or n == 1). Calls on
// one device are serialised by its mutex; device memory is allocated only when a call needs
// more than any earlier one (csrc/cuda/buffer_policy.h). The calling thread's current device is
// unchanged afterwards. Returns an empty string on success, else the error message.
std::string combine_image_docs(const CombineArgs& args, int device = -1);

}  // namespace cuda
}  // namespace univl
