// The GPU kernels of the FastCustom>Huber* ops (GOOGLE_CUDA builds): the functors
// (huber_functors.h) of HuberPerSample, HuberPerSampleGrad and HuberWeightedTotal,
// which run the TF-free CUDA core in cuda/huber_cuda.h on the op's stream with
// scratch from TF's allocator, and their registration for DEVICE_GPU (the mean
// ops have CPU kernels only). No device code lives here, so this file builds
// with nvcc (-x cu) or with the host compiler, given -DGOOGLE_CUDA=1,
// TensorFlow's compile flags and the CUDA include directory. Threshold is the
// host-side float64 scalar; weights are null (kNone), N or N * D entries.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cuda/huber_cuda.h"
#include "huber_functors.h"
#include "huber_op_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace fastcustom {
namespace {

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

template <typename T>
const typename CudaType<T>::type* Cuda(const T* data) {
  return reinterpret_cast<const typename CudaType<T>::type*>(data);
}

template <typename T>
typename CudaType<T>::type* Cuda(T* data) {
  return reinterpret_cast<typename CudaType<T>::type*>(data);
}

}  // namespace

namespace functor {

template <typename T>
struct HuberPerSample<GPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, double threshold, T* loss) const {
    Tensor workspace_holder;
    void* workspace = nullptr;
    TF_RETURN_IF_ERROR(Workspace(ctx, gpu::HuberPerSampleWorkspaceBytes(in.rows, in.depth),
                                 &workspace_holder, &workspace));
    return CudaStatus("HuberPerSample",
                      gpu::HuberPerSample(Cuda(y_true), Cuda(y_pred), in.rows, in.depth, threshold,
                                          workspace, Cuda(loss), Stream(ctx)));
  }
};

template <typename T>
struct HuberPerSampleGrad<GPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, const T* grad, double threshold, T* grad_pred) const {
    return CudaStatus("HuberPerSampleGrad",
                      gpu::HuberPerSampleGrad(Cuda(y_true), Cuda(y_pred), Cuda(grad), in.rows,
                                              in.depth, threshold, Cuda(grad_pred), Stream(ctx)));
  }
};

// The core takes the weights' count: 0, N or N * D.
template <typename T>
struct HuberWeightedTotal<GPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, WeightMode mode,
                          const T* y_true, const T* y_pred, const T* weights, double threshold,
                          double* total, double* count) const {
    const int64_t size = mode == WeightMode::kNone     ? 0
                         : mode == WeightMode::kPerRow ? in.rows
                                                       : in.rows * in.depth;
    Tensor workspace_holder;
    void* workspace = nullptr;
    TF_RETURN_IF_ERROR(Workspace(ctx, gpu::HuberWeightedTotalWorkspaceBytes(in.rows, in.depth),
                                 &workspace_holder, &workspace));
    return CudaStatus("HuberWeightedTotal",
                      gpu::HuberWeightedTotal(Cuda(y_true), Cuda(y_pred), Cuda(weights), size,
                                              in.rows, in.depth, threshold, workspace, total,
                                              count, Stream(ctx)));
  }
};

}  // namespace functor

namespace {

using ::tensorflow::DEVICE_GPU;

#define FASTCUSTOM_REGISTER_GPU_TYPE(T)                                                    \
  FASTCUSTOM_REGISTER_HUBER_KERNEL(HuberPerSample, DEVICE_GPU, GPUDevice, T);              \
  FASTCUSTOM_REGISTER_HUBER_KERNEL(HuberPerSampleGrad, DEVICE_GPU, GPUDevice, T);          \
  FASTCUSTOM_REGISTER_HUBER_KERNEL(HuberWeightedTotal, DEVICE_GPU, GPUDevice, T);

FASTCUSTOM_REGISTER_GPU_TYPE(Eigen::half)
FASTCUSTOM_REGISTER_GPU_TYPE(Eigen::bfloat16)
FASTCUSTOM_REGISTER_GPU_TYPE(float)
FASTCUSTOM_REGISTER_GPU_TYPE(double)
#undef FASTCUSTOM_REGISTER_GPU_TYPE

}  // namespace
}  // namespace fastcustom

#endif  // GOOGLE_CUDA
