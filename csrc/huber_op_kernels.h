// The OpKernels of the FastCustom>Huber* ops (huber_op_definitions.cc), one per op,
// templated on the device: each checks its inputs, allocates its outputs and
// calls its functor (huber_functors.h) for the device. Registered for the CPU by
// huber_kernels_cpu.cc and for the GPU by huber_kernels_gpu.cu.cc, each with
// FASTCUSTOM_REGISTER_HUBER_KERNEL.
#ifndef FASTCUSTOM_HUBER_OP_KERNELS_H_
#define FASTCUSTOM_HUBER_OP_KERNELS_H_

#include <cstdint>

#include "huber_functors.h"
#include "huber_math.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace fastcustom {
namespace op_kernels {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

inline double Threshold(OpKernelContext* ctx) { return ctx->input(2).scalar<double>()(); }

template <typename T>
const T* Input(OpKernelContext* ctx, int index) {
  return ctx->input(index).flat<T>().data();
}

// Every op's OpKernel: y_true and y_pred (inputs 0, 1) of one shape of rank >= 1 and
// threshold (2) a scalar, seen as the RowLayout `in`; then ComputeRows.
struct HuberKernel : OpKernel {
  using OpKernel::OpKernel;
  virtual void ComputeRows(OpKernelContext* ctx, const RowLayout& in) = 0;
  void Compute(OpKernelContext* ctx) final {
    const TensorShape& shape = ctx->input(1).shape();
    OP_REQUIRES(ctx, ctx->input(0).shape() == shape && shape.dims() >= 1,
                InvalidArgument(
                    "y_true and y_pred must have the same shape of rank >= 1, got y_true shape ",
                    ctx->input(0).shape().DebugString(), " and y_pred shape ", shape.DebugString()));
    OP_REQUIRES(ctx, ctx->input(2).dims() == 0,
                InvalidArgument("threshold must be a scalar, got shape ",
                                ctx->input(2).shape().DebugString()));
    RowLayout in;
    in.depth = shape.dim_size(shape.dims() - 1);
    in.row_shape = shape;
    in.row_shape.RemoveLastDims(1);
    in.rows = in.row_shape.num_elements();
    ComputeRows(ctx, in);
  }
};

template <typename Device, typename T>
struct HuberPerSampleOp : HuberKernel {
  using HuberKernel::HuberKernel;
  void ComputeRows(OpKernelContext* ctx, const RowLayout& in) override {
    Tensor* loss = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in.row_shape, &loss));
    if (in.rows == 0) return;
    OP_REQUIRES_OK(ctx, functor::HuberPerSample<Device, T>()(ctx, in, Input<T>(ctx, 0),
                                                             Input<T>(ctx, 1), Threshold(ctx),
                                                             loss->flat<T>().data()));
  }
};

template <typename Device, typename T>
struct HuberPerSampleGradOp : HuberKernel {
  using HuberKernel::HuberKernel;
  void ComputeRows(OpKernelContext* ctx, const RowLayout& in) override {
    const Tensor& grad = ctx->input(3);
    OP_REQUIRES(ctx, grad.shape() == in.row_shape,
                InvalidArgument("grad must have shape y_pred.shape[:-1] = ",
                                in.row_shape.DebugString(), ", got ", grad.shape().DebugString()));
    Tensor* grad_pred = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(1).shape(), &grad_pred));
    if (in.rows * in.depth == 0) return;
    OP_REQUIRES_OK(ctx, functor::HuberPerSampleGrad<Device, T>()(
                            ctx, in, Input<T>(ctx, 0), Input<T>(ctx, 1), Input<T>(ctx, 3),
                            Threshold(ctx), grad_pred->flat<T>().data()));
  }
};

template <typename Device, typename T>
struct HuberWeightedTotalOp : HuberKernel {
  using HuberKernel::HuberKernel;
  void ComputeRows(OpKernelContext* ctx, const RowLayout& in) override {
    const Tensor& weights = ctx->input(3);
    WeightMode mode = WeightMode::kNone;
    OP_REQUIRES(ctx, weights.dims() == 1 &&
                         GetWeightMode(weights.NumElements(), in.rows, in.depth, &mode),
                InvalidArgument("weights must be 1-D with 0, N = ", in.rows, " or N*D = ",
                                in.rows * in.depth, " entries, got shape ",
                                weights.shape().DebugString()));
    Tensor* total = nullptr;
    Tensor* count = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &total));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &count));
    OP_REQUIRES_OK(ctx, functor::HuberWeightedTotal<Device, T>()(
                            ctx, in, mode, Input<T>(ctx, 0), Input<T>(ctx, 1),
                            mode == WeightMode::kNone ? nullptr : Input<T>(ctx, 3), Threshold(ctx),
                            total->scalar<double>().data(), count->scalar<double>().data()));
  }
};

// The mean over every element and its gradient, one pass; the mean is in host memory.
template <typename Device, typename T>
struct HuberMeanWithGradOp : HuberKernel {
  using HuberKernel::HuberKernel;
  void ComputeRows(OpKernelContext* ctx, const RowLayout& in) override {
    Tensor* mean = nullptr;
    Tensor* grad_pred = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &grad_pred));
    OP_REQUIRES_OK(ctx, functor::HuberMeanWithGrad<Device, T>()(
                            ctx, in, Input<T>(ctx, 0), Input<T>(ctx, 1), Threshold(ctx),
                            mean->scalar<T>().data(), grad_pred->flat<T>().data()));
  }
};

// grad * stored; `stored` itself (no copy, no pass) when grad is 1, as it is for a loss
// that is differentiated directly. y_true, y_pred and threshold are not read.
template <typename Device, typename T>
struct HuberMeanGradOp : HuberKernel {
  using HuberKernel::HuberKernel;
  void ComputeRows(OpKernelContext* ctx, const RowLayout& in) override {
    OP_REQUIRES(ctx, ctx->input(3).shape() == ctx->input(1).shape() && ctx->input(4).dims() == 0,
                InvalidArgument("stored must have y_pred's shape ", ctx->input(1).shape().DebugString(),
                                " and grad must be a scalar, got ", ctx->input(3).shape().DebugString(),
                                " and ", ctx->input(4).shape().DebugString()));
    const Tensor& stored = ctx->input(3);
    const T grad = ctx->input(4).scalar<T>()();
    if (grad == T(1)) {
      ctx->set_output(0, stored);
      return;
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({3}, 0, stored.shape(), &out));
    OP_REQUIRES_OK(ctx, functor::HuberMeanGrad<Device, T>()(ctx, stored, grad, out));
  }
};

}  // namespace op_kernels
}  // namespace fastcustom

// Registers FastCustom>OP's OpKernel (OP##Op above) for DEVICE, DeviceType and T; the
// threshold stays in host memory on every device.
#define FASTCUSTOM_REGISTER_HUBER_KERNEL(OP, DEVICE, DeviceType, T)                         \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("FastCustom>" #OP).Device(DEVICE).HostMemory("threshold").TypeConstraint<T>("T"), \
      ::fastcustom::op_kernels::OP##Op<DeviceType, T>)

#endif  // FASTCUSTOM_HUBER_OP_KERNELS_H_
