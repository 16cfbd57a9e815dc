// CUDA combine kernel: out[i] = (a[i] + b[i]) / ||a[i] + b[i]||, one warp per row, float32 and
// float16 inputs, float32 output, same defined results as the CPU kernel (zero row -> zeros,
// NaN/inf in a row -> NaN row). Sum of squares is accumulated in double, like the CPU kernel.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda/combine_cuda.h"

namespace univl {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // 256 threads

__device__ __forceinline__ double load(const float* p) { return static_cast<double>(*p); }
__device__ __forceinline__ double load(const __half* p) {
  return static_cast<double>(__half2float(*p));
}

template <class TA, class TB>
__global__ void combine_kernel(const TA* __restrict__ a, const TB* __restrict__ b,
                               float* __restrict__ out, int64_t n, int64_t d) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;  // whole warps exit together: the shuffles below stay converged
  const TA* ar = a + row * d;
  const TB* br = b + row * d;
  float* orow = out + row * d;

  double acc = 0.0;
  for (int64_t j = lane; j < d; j += kWarp) {
    const double s = load(ar + j) + load(br + j);
    acc += s * s;
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    acc += __shfl_xor_sync(0xffffffffu, acc, offset);

  if (!isfinite(acc)) {
    const float nan = __int_as_float(0x7fc00000);
    for (int64_t j = lane; j < d; j += kWarp) orow[j] = nan;
    return;
  }
  if (acc == 0.0) {
    for (int64_t j = lane; j < d; j += kWarp) orow[j] = 0.0f;
    return;
  }
  const double inv = 1.0 / sqrt(acc);
  for (int64_t j = lane; j < d; j += kWarp)
    orow[j] = static_cast<float>((load(ar + j) + load(br + j)) * inv);
}

size_t elem_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// Frees what it holds on every exit path.
struct DeviceBuffer {
  void* ptr = nullptr;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

std::string error_text(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

cudaError_t upload(const RowMatrix& m, int64_t n, int64_t d, DeviceBuffer& buf) {
  const size_t es = elem_size(m.dtype);
  const size_t row_bytes = static_cast<size_t>(d) * es;
  cudaError_t e = cudaMalloc(&buf.ptr, row_bytes * static_cast<size_t>(n));
  if (e != cudaSuccess) return e;
  if (m.row_stride == d || n == 1)
    return cudaMemcpy(buf.ptr, m.data, row_bytes * n, cudaMemcpyHostToDevice);
  if (m.row_stride >= d)
    return cudaMemcpy2D(buf.ptr, row_bytes, m.data, static_cast<size_t>(m.row_stride) * es,
                        row_bytes, n, cudaMemcpyHostToDevice);
  // Negative, zero (broadcast) or overlapping row strides: row by row.
  for (int64_t r = 0; r < n; ++r) {
    const char* src = static_cast<const char*>(m.data) + r * m.row_stride * static_cast<int64_t>(es);
    e = cudaMemcpy(static_cast<char*>(buf.ptr) + r * row_bytes, src, row_bytes,
                   cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <class TA, class TB>
void launch(const void* a, const void* b, float* out, int64_t n, int64_t d, cudaStream_t s) {
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  combine_kernel<TA, TB><<<static_cast<unsigned>(blocks), kWarp * kRowsPerBlock, 0, s>>>(
      static_cast<const TA*>(a), static_cast<const TB*>(b), out, n, d);
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // reset the runtime's last-error state so later calls start clean
    return 0;
  }
  return count;
}

int driver_version() noexcept {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

int runtime_version() noexcept {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

std::string combine_image_docs(const CombineArgs& x) {
  if (x.n <= 0 || x.d <= 0) return {};
  if (device_count() == 0) return "no CUDA device is available (driver missing or no GPU)";
  if (static_cast<int64_t>(x.n + kRowsPerBlock - 1) / kRowsPerBlock > 0x7fffffffLL)
    return "too many rows for one launch";

  DeviceBuffer da, db, dout;
  cudaError_t e;
  if ((e = upload(x.a, x.n, x.d, da)) != cudaSuccess) return error_text("copying a to the GPU", e);
  if ((e = upload(x.b, x.n, x.d, db)) != cudaSuccess) return error_text("copying b to the GPU", e);
  const size_t out_row_bytes = static_cast<size_t>(x.d) * sizeof(float);
  if ((e = cudaMalloc(&dout.ptr, out_row_bytes * x.n)) != cudaSuccess)
    return error_text("allocating the output", e);

  const bool a16 = x.a.dtype == DType::kFloat16;
  const bool b16 = x.b.dtype == DType::kFloat16;
  float* o = static_cast<float*>(dout.ptr);
  if (!a16 && !b16) launch<float, float>(da.ptr, db.ptr, o, x.n, x.d, 0);
  else if (a16 && b16) launch<__half, __half>(da.ptr, db.ptr, o, x.n, x.d, 0);
  else if (a16) launch<__half, float>(da.ptr, db.ptr, o, x.n, x.d, 0);
  else launch<float, __half>(da.ptr, db.ptr, o, x.n, x.d, 0);
  if ((e = cudaGetLastError()) != cudaSuccess) return error_text("launching the kernel", e);

  if (x.out_row_stride == x.d || x.n == 1)
    e = cudaMemcpy(x.out, dout.ptr, out_row_bytes * x.n, cudaMemcpyDeviceToHost);
  else
    e = cudaMemcpy2D(x.out, static_cast<size_t>(x.out_row_stride) * sizeof(float), dout.ptr,
                     out_row_bytes, out_row_bytes, x.n, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return error_text("running the kernel / copying the result back", e);
  return {};
}

}  // namespace cuda
}  // namespace univl
