// The Huber kernels' CUDA core: plain CUDA over raw device pointers and a
// stream, with no TensorFlow in sight. The TF GPU op (huber_kernels_gpu.cu.cc)
// and the ctypes benchmark harness (huber_capi.cu) are thin callers of this.
//
// Inputs y_true and y_pred are contiguous row-major [rows, depth] arrays
// (any [..., D] tensor viewed as rows x depth = N x D). With
//   h(e) = fastcustom::HuberValue(y_true, y_pred, threshold)     (huber_math.h)
// the three entry points compute
//   HuberPerSample:      out[r]          = (1/D) sum_c h[r, c]     (D == 0: NaN)
//   HuberPerSampleGrad:  grad_pred[r, c] = grad[r] / D * HuberGradPred(...)
//   HuberWeightedTotal:  total = sum w * h, count = sum w           (doubles)
// where the weights have 0 (all 1), rows (one per row, counted D times) or
// rows * depth (one per element) entries.
//
// Half, bfloat16 and float inputs are evaluated in float, double in double;
// every partial sum beyond one 16-byte vector is carried in double. Results
// are deterministic: no atomics, and every reduction order depends only on
// the shape (and, for HuberPerSample's head/tail peeling, on the inputs'
// address modulo 16, which is 0 for every framework allocation).
//
// Each function only enqueues work on `stream` and returns the launch status;
// cudaErrorInvalidValue for negative sizes, a null or misaligned pointer
// (every pointer must be aligned to its element type) or a bad weights size.
#ifndef FASTCUSTOM_CUDA_HUBER_CUDA_H_
#define FASTCUSTOM_CUDA_HUBER_CUDA_H_

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace fastcustom {
namespace gpu {

// Bytes of device scratch HuberPerSample needs for this shape: 0 unless a few
// very long rows are each split over several blocks (then one double per
// row segment).
size_t HuberPerSampleWorkspaceBytes(int64_t rows, int64_t depth);

// out: [rows]. `workspace` may be null when the size above is 0.
template <typename T>
cudaError_t HuberPerSample(const T* y_true, const T* y_pred, int64_t rows,
                           int64_t depth, double threshold, void* workspace, T* out,
                           cudaStream_t stream);

// grad: [rows], grad_pred: [rows, depth].
template <typename T>
cudaError_t HuberPerSampleGrad(const T* y_true, const T* y_pred, const T* grad,
                               int64_t rows, int64_t depth, double threshold,
                               T* grad_pred, cudaStream_t stream);

// Bytes of device scratch HuberWeightedTotal needs: two doubles per block of
// the first reduction stage (at most 128 KiB).
size_t HuberWeightedTotalWorkspaceBytes(int64_t rows, int64_t depth);

// weights: nullptr/0 entries, `rows` entries or `rows * depth` entries (any
// other size returns cudaErrorInvalidValue). total and count are device
// pointers to one double each (they may be adjacent: total_count, +1).
template <typename T>
cudaError_t HuberWeightedTotal(const T* y_true, const T* y_pred,
                               const T* weights, int64_t weights_size,
                               int64_t rows, int64_t depth, double threshold,
                               void* workspace, double* total, double* count,
                               cudaStream_t stream);

}  // namespace gpu
}  // namespace fastcustom

#endif  // FASTCUSTOM_CUDA_HUBER_CUDA_H_
