// extern "C" entry points over the Huber CUDA core, for ctypes callers such as
// bench/gpu/harness.py. Pointers are device addresses (from CuPy, PyTorch,
// cudaMalloc ...), `stream` a cudaStream_t (null: the legacy default stream),
// `dtype` 0 = float16, 1 = bfloat16, 2 = float32, 3 = float64. Each call
// returns a cudaError_t value (0 = success; an unknown dtype is
// cudaErrorInvalidValue) and only enqueues work on the stream.
#include <cstddef>
#include <cstdint>

#include "huber_cuda.h"

namespace {

// Calls fn(T{}) for the dtype's element type.
template <typename Fn>
int WithDType(int dtype, Fn&& fn) {
  switch (dtype) {
    case 0: return static_cast<int>(fn(__half{}));
    case 1: return static_cast<int>(fn(__nv_bfloat16{}));
    case 2: return static_cast<int>(fn(float{}));
    case 3: return static_cast<int>(fn(double{}));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <typename T>
const T* In(const void* p) { return static_cast<const T*>(p); }

template <typename T>
T* Out(void* p) { return static_cast<T*>(p); }

}  // namespace

extern "C" {

int fastcustom_huber_abi_version(void) { return 1; }

const char* fastcustom_huber_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

size_t fastcustom_huber_per_sample_workspace_bytes(int64_t rows, int64_t depth) {
  return fastcustom::gpu::HuberPerSampleWorkspaceBytes(rows, depth);
}

// out[r] = mean_c h(y_true[r, c], y_pred[r, c]); out has the input dtype.
int fastcustom_huber_per_sample(int dtype, const void* y_true, const void* y_pred, int64_t rows,
                                int64_t depth, double threshold, void* workspace, void* out,
                                void* stream) {
  return WithDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    return fastcustom::gpu::HuberPerSample<T>(In<T>(y_true), In<T>(y_pred), rows, depth, threshold,
                                              workspace, Out<T>(out),
                                              static_cast<cudaStream_t>(stream));
  });
}

// grad_pred[r, c] = grad[r] / depth * clamp(y_pred - y_true, -threshold, threshold).
int fastcustom_huber_per_sample_grad(int dtype, const void* y_true, const void* y_pred,
                                     const void* grad, int64_t rows, int64_t depth, double threshold,
                                     void* grad_pred, void* stream) {
  return WithDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    return fastcustom::gpu::HuberPerSampleGrad<T>(In<T>(y_true), In<T>(y_pred), In<T>(grad), rows,
                                                  depth, threshold, Out<T>(grad_pred),
                                                  static_cast<cudaStream_t>(stream));
  });
}

size_t fastcustom_huber_weighted_total_workspace_bytes(int64_t rows, int64_t depth) {
  return fastcustom::gpu::HuberWeightedTotalWorkspaceBytes(rows, depth);
}

// *total = sum w * h, *count = sum w (float64 device scalars); weights_size
// is 0 (no weights), rows or rows * depth.
int fastcustom_huber_weighted_total(int dtype, const void* y_true, const void* y_pred,
                                    const void* weights, int64_t weights_size, int64_t rows,
                                    int64_t depth, double threshold, void* workspace, void* total,
                                    void* count, void* stream) {
  return WithDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    return fastcustom::gpu::HuberWeightedTotal<T>(
        In<T>(y_true), In<T>(y_pred), In<T>(weights), weights_size, rows, depth, threshold, workspace,
        Out<double>(total), Out<double>(count), static_cast<cudaStream_t>(stream));
  });
}

// The benchmark's bandwidth baseline: cudaMemcpyAsync device to device.
int fastcustom_huber_copy_device_to_device(void* dst, const void* src, size_t bytes, void* stream) {
  return static_cast<int>(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                          static_cast<cudaStream_t>(stream)));
}

}  // extern "C"
