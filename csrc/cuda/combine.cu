// CUDA combine kernel: out[i] = (a[i] + b[i]) / ||a[i] + b[i]||, one warp per row, float32 and
// float16 inputs, float32 output, same defined results as the CPU kernel (zero row -> zeros,
// NaN/inf in a row -> NaN row). Sum of squares is accumulated in double, like the CPU kernel.
//
// Host side: each device has one DevicePool (a non-blocking stream and the a / b / out device
// buffers, grown by buffer_policy.h's rule and reused by later calls) guarded by a mutex, so a
// call allocates device memory only when it needs more than any earlier call did. Every call
// selects its device with cudaSetDevice (the calling thread's current device is restored
// afterwards) and runs all its copies and the kernel on the pool's stream.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/buffer_policy.h"
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

// Row r of a is at a + r * a_stride (elements; the stride may be negative or zero), same for b;
// out is dense (row pitch d).
template <class TA, class TB>
__global__ void combine_kernel(const TA* __restrict__ a, int64_t a_stride,
                               const TB* __restrict__ b, int64_t b_stride,
                               float* __restrict__ out, int64_t n, int64_t d) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;  // whole warps exit together: the shuffles below stay converged
  const TA* ar = a + row * a_stride;
  const TB* br = b + row * b_stride;
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

std::string error_text(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

// A device allocation reused across calls; grows (never shrinks) by grown_capacity.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t capacity = 0;

  // Called with the pool's mutex held and its stream idle (every call ends synchronised), so
  // freeing the old allocation cannot race a copy or kernel still using it.
  cudaError_t reserve(size_t bytes) {
    if (bytes <= capacity) return cudaSuccess;
    const size_t want = grown_capacity(capacity, bytes);
    if (want == 0) return cudaErrorMemoryAllocation;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    capacity = 0;
    const cudaError_t e = cudaMalloc(&ptr, want);
    if (e != cudaSuccess) {
      ptr = nullptr;
      return e;
    }
    capacity = want;
    return cudaSuccess;
  }
};

// One per device. Deliberately never destroyed (see pool_for): freeing device memory from a
// static destructor at process exit races the CUDA runtime's own teardown.
struct DevicePool {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  DeviceBuffer a, b, out;
};

// The pool of `device` (0 <= device < device_count()), created on first use.
DevicePool& pool_for(int device) {
  static std::mutex registry_mu;
  static auto* pools = new std::vector<std::unique_ptr<DevicePool>>();
  std::lock_guard<std::mutex> lock(registry_mu);
  if (static_cast<size_t>(device) >= pools->size()) pools->resize(device + 1);
  auto& slot = (*pools)[device];
  if (!slot) slot = std::make_unique<DevicePool>();
  return *slot;
}

// Restores the calling thread's current device on every exit path.
class DeviceGuard {
 public:
  DeviceGuard() {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      previous_ = -1;
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  int previous() const { return previous_; }

 private:
  int previous_ = -1;
};

// Where an uploaded input lives on the device: row r at base + r * stride (elements).
struct DeviceRows {
  const void* base = nullptr;
  int64_t stride = 0;
};

// Queues the copy of host rows m (n x d) into buf on `s`, using as few copies as the layout
// allows: one for dense rows, one 2-D copy for any positive row stride >= d, one row for a zero
// stride (broadcast), one 2-D copy in memory order for a negative stride with |stride| >= d (the
// kernel then walks the rows backwards), and a copy per row only for overlapping rows.
cudaError_t upload(const RowMatrix& m, int64_t n, int64_t d, DeviceBuffer& buf, cudaStream_t s,
                   DeviceRows& rows) {
  const size_t es = elem_size(m.dtype);
  const size_t row_bytes = static_cast<size_t>(d) * es;
  const int64_t stride = n == 1 ? d : m.row_stride;
  const int64_t dense_rows = stride == 0 ? 1 : n;
  cudaError_t e = buf.reserve(row_bytes * static_cast<size_t>(dense_rows));
  if (e != cudaSuccess) return e;
  char* dst = static_cast<char*>(buf.ptr);
  const char* src = static_cast<const char*>(m.data);
  const auto h2d = cudaMemcpyHostToDevice;
  rows.base = dst;
  rows.stride = d;
  if (stride == d) return cudaMemcpyAsync(dst, src, row_bytes * n, h2d, s);
  if (stride == 0) {
    rows.stride = 0;
    return cudaMemcpyAsync(dst, src, row_bytes, h2d, s);
  }
  if (stride > d)
    return cudaMemcpy2DAsync(dst, row_bytes, src, static_cast<size_t>(stride) * es, row_bytes, n,
                             h2d, s);
  if (stride <= -d) {
    // Row n-1 comes first in memory: copy in memory order, then read row r from slot n-1-r.
    const char* first = src + (n - 1) * stride * static_cast<int64_t>(es);
    e = cudaMemcpy2DAsync(dst, row_bytes, first, static_cast<size_t>(-stride) * es, row_bytes, n,
                          h2d, s);
    rows.base = dst + (n - 1) * static_cast<int64_t>(row_bytes);
    rows.stride = -d;
    return e;
  }
  // Rows that overlap one another (|stride| < d, e.g. from as_strided): row by row.
  for (int64_t r = 0; r < n; ++r) {
    e = cudaMemcpyAsync(dst + r * row_bytes, src + r * stride * static_cast<int64_t>(es),
                        row_bytes, h2d, s);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <class TA, class TB>
void launch(const DeviceRows& a, const DeviceRows& b, float* out, int64_t n, int64_t d,
            cudaStream_t s) {
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  combine_kernel<TA, TB><<<static_cast<unsigned>(blocks), kWarp * kRowsPerBlock, 0, s>>>(
      static_cast<const TA*>(a.base), a.stride, static_cast<const TB*>(b.base), b.stride, out, n,
      d);
}

// The body of combine_image_docs, run with the pool locked and the device selected. On an
// error the caller still synchronises the stream, so the buffers are idle again afterwards.
std::string run_locked(const CombineArgs& x, DevicePool& p) {
  cudaError_t e;
  if (p.stream == nullptr &&
      (e = cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking)) != cudaSuccess) {
    p.stream = nullptr;
    return error_text("creating the stream", e);
  }
  DeviceRows ra, rb;
  if ((e = upload(x.a, x.n, x.d, p.a, p.stream, ra)) != cudaSuccess)
    return error_text("copying a to the GPU", e);
  if ((e = upload(x.b, x.n, x.d, p.b, p.stream, rb)) != cudaSuccess)
    return error_text("copying b to the GPU", e);
  const size_t out_row_bytes = static_cast<size_t>(x.d) * sizeof(float);
  if ((e = p.out.reserve(out_row_bytes * x.n)) != cudaSuccess)
    return error_text("allocating the output", e);

  const bool a16 = x.a.dtype == DType::kFloat16;
  const bool b16 = x.b.dtype == DType::kFloat16;
  float* o = static_cast<float*>(p.out.ptr);
  if (!a16 && !b16) launch<float, float>(ra, rb, o, x.n, x.d, p.stream);
  else if (a16 && b16) launch<__half, __half>(ra, rb, o, x.n, x.d, p.stream);
  else if (a16) launch<__half, float>(ra, rb, o, x.n, x.d, p.stream);
  else launch<float, __half>(ra, rb, o, x.n, x.d, p.stream);
  if ((e = cudaGetLastError()) != cudaSuccess) return error_text("launching the kernel", e);

  // The binding hands a positive output row pitch >= d (or a single row).
  if (x.out_row_stride == x.d || x.n == 1)
    e = cudaMemcpyAsync(x.out, o, out_row_bytes * x.n, cudaMemcpyDeviceToHost, p.stream);
  else
    e = cudaMemcpy2DAsync(x.out, static_cast<size_t>(x.out_row_stride) * sizeof(float), o,
                          out_row_bytes, out_row_bytes, x.n, cudaMemcpyDeviceToHost, p.stream);
  if (e != cudaSuccess) return error_text("copying the result back", e);
  if ((e = cudaStreamSynchronize(p.stream)) != cudaSuccess)
    return error_text("running the kernel / copying the result back", e);
  return {};
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

std::string combine_image_docs(const CombineArgs& x, int device) {
  if (x.n <= 0 || x.d <= 0) return {};
  const int count = device_count();
  if (count == 0) return "no CUDA device is available (driver missing or no GPU)";
  if (static_cast<int64_t>(x.n + kRowsPerBlock - 1) / kRowsPerBlock > 0x7fffffffLL)
    return "too many rows for one launch";

  DeviceGuard guard;
  if (device < 0) device = guard.previous() >= 0 ? guard.previous() : 0;
  if (device >= count)
    return "device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
           " CUDA device(s) visible)";
  DevicePool& p = pool_for(device);
  std::lock_guard<std::mutex> lock(p.mu);
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return error_text("selecting the device", e);
  std::string err = run_locked(x, p);
  if (!err.empty() && p.stream != nullptr) {
    cudaStreamSynchronize(p.stream);  // leave no queued work touching the shared buffers
    cudaGetLastError();
  }
  return err;
}

}  // namespace cuda
}  // namespace univl
