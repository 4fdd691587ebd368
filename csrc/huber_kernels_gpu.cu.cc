// TensorFlow GPU kernels for the FastCustom>Huber* ops (registered in
// huber_ops.cc): the shape checks the CPU kernels make (huber_kernels.h),
// then the TF-free CUDA core in
// cuda/huber_cuda.h on the op's stream. No device code lives here, so this
// file builds with nvcc (-x cu) or with the host compiler, given
// -DGOOGLE_CUDA=1, TensorFlow's compile flags and the CUDA include directory.
//
// Shapes: y_true and y_pred are [..., D], viewed as rows x depth = N x D;
// grad is [...] (= y_pred.shape[:-1]); weights are 1-D of size 0, N or N * D;
// threshold is a host-side float64 scalar.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cuda/huber_cuda.h"
#include "huber_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace fastcustom {
namespace {

using ::tensorflow::DEVICE_GPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

// TF's element types and the CUDA types the core is instantiated for:
// Eigen::half and Eigen::bfloat16 are the same 16 bits as __half and
// __nv_bfloat16.
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<Eigen::half> {
  using type = __half;
};
template <>
struct CudaType<Eigen::bfloat16> {
  using type = __nv_bfloat16;
};
static_assert(sizeof(Eigen::half) == sizeof(__half), "half layout");
static_assert(sizeof(Eigen::bfloat16) == sizeof(__nv_bfloat16), "bfloat16 layout");

template <typename T>
const typename CudaType<T>::type* DeviceData(const Tensor& t) {
  return reinterpret_cast<const typename CudaType<T>::type*>(t.flat<T>().data());
}

template <typename T>
typename CudaType<T>::type* DeviceData(Tensor* t) {
  return reinterpret_cast<typename CudaType<T>::type*>(t->flat<T>().data());
}

cudaStream_t Stream(OpKernelContext* ctx) { return ctx->eigen_device<Eigen::GpuDevice>().stream(); }

absl::Status CudaStatus(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(op, " CUDA launch failed: ", cudaGetErrorString(err)));
}

// A device scratch buffer of `bytes` (null when 0), alive as long as `holder`.
absl::Status Workspace(OpKernelContext* ctx, size_t bytes, Tensor* holder, void** data) {
  *data = nullptr;
  if (bytes == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT8,
                                        TensorShape({static_cast<int64_t>(bytes)}), holder));
  *data = holder->flat<int8_t>().data();
  return absl::OkStatus();
}

// loss[...] = mean over the last axis of h(y_true - y_pred).
template <typename T>
class HuberPerSampleGpuOp : public OpKernel {
 public:
  explicit HuberPerSampleGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    RowLayout in;
    Tensor* loss = nullptr;
    OP_REQUIRES_OK(ctx, StartPerSample(ctx, &in, &loss));
    if (in.rows == 0) return;
    Tensor workspace_holder;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, gpu::HuberPerSampleWorkspaceBytes(in.rows, in.depth),
                                  &workspace_holder, &workspace));
    OP_REQUIRES_OK(ctx, CudaStatus("HuberPerSample",
                                   gpu::HuberPerSample(DeviceData<T>(y_true), DeviceData<T>(y_pred),
                                                       in.rows, in.depth, Threshold(ctx), workspace,
                                                       DeviceData<T>(loss), Stream(ctx))));
  }
};

// grad_pred[..., c] = grad[...] / D * clamp(y_pred - y_true, -threshold, threshold).
template <typename T>
class HuberPerSampleGradGpuOp : public OpKernel {
 public:
  explicit HuberPerSampleGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    const Tensor& grad = ctx->input(3);
    RowLayout in;
    Tensor* grad_pred = nullptr;
    OP_REQUIRES_OK(ctx, StartPerSampleGrad(ctx, &in, &grad_pred));
    if (in.rows * in.depth == 0) return;
    OP_REQUIRES_OK(ctx, CudaStatus("HuberPerSampleGrad",
                                   gpu::HuberPerSampleGrad(DeviceData<T>(y_true), DeviceData<T>(y_pred),
                                                           DeviceData<T>(grad), in.rows, in.depth,
                                                           Threshold(ctx), DeviceData<T>(grad_pred),
                                                           Stream(ctx))));
  }
};

// (total, count) = (sum w * h, sum w), float64, w from 0, N or N * D weights.
template <typename T>
class HuberWeightedTotalGpuOp : public OpKernel {
 public:
  explicit HuberWeightedTotalGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    const Tensor& weights = ctx->input(3);
    RowLayout in;
    WeightMode mode;
    Tensor* total = nullptr;
    Tensor* count = nullptr;
    OP_REQUIRES_OK(ctx, StartWeightedTotal(ctx, &in, &mode, &total, &count));
    const int64_t size = weights.NumElements();
    Tensor workspace_holder;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, gpu::HuberWeightedTotalWorkspaceBytes(in.rows, in.depth),
                                  &workspace_holder, &workspace));
    OP_REQUIRES_OK(ctx, CudaStatus("HuberWeightedTotal",
                                   gpu::HuberWeightedTotal(
                                       DeviceData<T>(y_true), DeviceData<T>(y_pred),
                                       mode == WeightMode::kNone ? nullptr : DeviceData<T>(weights),
                                       size, in.rows, in.depth, Threshold(ctx), workspace,
                                       total->scalar<double>().data(),
                                       count->scalar<double>().data(), Stream(ctx))));
  }
};

#define FASTCUSTOM_REGISTER_HUBER_GPU(T)                                                  \
  REGISTER_KERNEL_BUILDER(Name("FastCustom>HuberPerSample")                               \
                              .Device(DEVICE_GPU)                                         \
                              .HostMemory("threshold")                                    \
                              .TypeConstraint<T>("T"),                                    \
                          HuberPerSampleGpuOp<T>);                                        \
  REGISTER_KERNEL_BUILDER(Name("FastCustom>HuberPerSampleGrad")                           \
                              .Device(DEVICE_GPU)                                         \
                              .HostMemory("threshold")                                    \
                              .TypeConstraint<T>("T"),                                    \
                          HuberPerSampleGradGpuOp<T>);                                    \
  REGISTER_KERNEL_BUILDER(Name("FastCustom>HuberWeightedTotal")                           \
                              .Device(DEVICE_GPU)                                         \
                              .HostMemory("threshold")                                    \
                              .TypeConstraint<T>("T"),                                    \
                          HuberWeightedTotalGpuOp<T>);

FASTCUSTOM_REGISTER_HUBER_GPU(Eigen::half)
FASTCUSTOM_REGISTER_HUBER_GPU(Eigen::bfloat16)
FASTCUSTOM_REGISTER_HUBER_GPU(float)
FASTCUSTOM_REGISTER_HUBER_GPU(double)
#undef FASTCUSTOM_REGISTER_HUBER_GPU

}  // namespace
}  // namespace fastcustom

#endif  // GOOGLE_CUDA
