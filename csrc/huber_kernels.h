// The per-device work of the Huber ops, in tensorflow/core/kernels' functor
// shape: one OpKernel per op, templated on the device (huber_kernels_cpu.cc,
// which checks the inputs and allocates the outputs), calls Functor<Device, T>.
// The CPU functors are defined in huber_kernels_cpu.cc; the GPU ones (GOOGLE_CUDA
// builds) are declared here and defined and instantiated in huber_kernels_gpu.cu.cc.
//
// y_true and y_pred have one shape [..., D] (rank >= 1), seen as N rows x D
// with 64-bit indexing; threshold is the float64 scalar (host memory); grad has
// shape [...]; weights are null (WeightMode::kNone), N or N*D values. `ctx` gives
// the CPU's thread pool, or the GPU's stream and scratch memory.
//   HuberPerSample:     (ctx, in, y_true, y_pred, threshold, loss [...]), N > 0
//   HuberPerSampleGrad: (ctx, in, y_true, y_pred, grad, threshold, grad_pred [..., D]), N*D > 0
//   HuberWeightedTotal: (ctx, in, mode, y_true, y_pred, weights, threshold, total, count),
//                       total and count: one float64 each, in the device's memory
#ifndef FASTCUSTOM_HUBER_KERNELS_H_
#define FASTCUSTOM_HUBER_KERNELS_H_

#include <cstdint>

#include "huber_math.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace fastcustom {

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

struct RowLayout {
  int64_t rows = 0;                   // N: the product of all but the last dimension
  int64_t depth = 0;                  // D: the last dimension
  tensorflow::TensorShape row_shape;  // y_pred.shape[:-1]
};

namespace functor {
template <typename Device, typename T> struct HuberPerSample;
template <typename Device, typename T> struct HuberPerSampleGrad;
template <typename Device, typename T> struct HuberWeightedTotal;

#if GOOGLE_CUDA
using tensorflow::OpKernelContext;
template <typename T>
struct HuberPerSample<GPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, double threshold, T* loss) const;
};
template <typename T>
struct HuberPerSampleGrad<GPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, const T* grad, double threshold, T* grad_pred) const;
};
template <typename T>
struct HuberWeightedTotal<GPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, WeightMode mode,
                          const T* y_true, const T* y_pred, const T* weights, double threshold,
                          double* total, double* count) const;
};
#endif  // GOOGLE_CUDA
}  // namespace functor

}  // namespace fastcustom

#endif  // FASTCUSTOM_HUBER_KERNELS_H_
