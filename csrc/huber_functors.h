// The per-device work of the Huber ops, in tensorflow/core/kernels' functor
// shape: each op's OpKernel (huber_op_kernels.h, templated on the device) checks
// the inputs, allocates the outputs and calls Functor<Device, T>. The CPU
// functors (huber_kernels_cpu.cc) run the TF-free core in cpu/ on TensorFlow's
// thread pool; the GPU ones (huber_kernels_gpu.cu.cc, GOOGLE_CUDA builds) the
// CUDA core in cuda/ on the op's stream.
//
// y_true and y_pred have one shape [..., D] (rank >= 1), seen as N rows x D
// with 64-bit indexing; threshold is the float64 scalar (host memory); grad has
// shape [...]; weights are null (WeightMode::kNone), N or N*D values. `ctx` gives
// the CPU's thread pool, or the GPU's stream and scratch memory.
//   HuberPerSample:     (ctx, in, y_true, y_pred, threshold, loss [...]), N > 0
//   HuberPerSampleGrad: (ctx, in, y_true, y_pred, grad, threshold, grad_pred [..., D]), N*D > 0
//   HuberWeightedTotal: (ctx, in, mode, y_true, y_pred, weights, threshold, total, count),
//                       total and count: one float64 each, in the device's memory
//   HuberMeanWithGrad:  (ctx, in, y_true, y_pred, threshold, mean, grad_pred [..., D]),
//                       mean: one T in host memory
//   HuberMeanGrad:      (ctx, stored, grad, grad_pred): grad_pred = grad * stored (a scalar
//                       grad in host memory; grad_pred allocated, of stored's shape)
#ifndef FASTCUSTOM_HUBER_FUNCTORS_H_
#define FASTCUSTOM_HUBER_FUNCTORS_H_

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
// Specialized for CPUDevice in huber_kernels_cpu.cc (every op) and for GPUDevice
// in huber_kernels_gpu.cu.cc (the first three), next to the registrations that
// instantiate their OpKernels.
template <typename Device, typename T> struct HuberPerSample;
template <typename Device, typename T> struct HuberPerSampleGrad;
template <typename Device, typename T> struct HuberWeightedTotal;
template <typename Device, typename T> struct HuberMeanWithGrad;
template <typename Device, typename T> struct HuberMeanGrad;
}  // namespace functor
}  // namespace fastcustom

#endif  // FASTCUSTOM_HUBER_FUNCTORS_H_
