// The CPU kernels of the FastCustom>Huber* ops: their functors (huber_functors.h),
// which run the TF-free CPU core (cpu/huber_cpu.h) with TensorFlow's intra-op
// thread pool as its parallel-for, and their registration for DEVICE_CPU (every
// op, every type its definition allows). The numerics, and the reasons for them,
// are the core's (cpu/huber_cpu_kernels.cc).
#define EIGEN_USE_THREADS  // HuberMeanGrad scales on the Eigen thread pool device

#include <algorithm>
#include <cstdint>

#include "cpu/huber_cpu.h"
#include "huber_functors.h"
#include "huber_op_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

namespace fastcustom {
namespace {

constexpr int64_t kCyclesPerElement = 2;  // the thread pool's cost model: when to split

// The op's intra-op thread pool as the core's parallel-for.
cpu::ParallelFor ThreadPool(tensorflow::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t blocks, int64_t elements_per_block, const cpu::BlockRange& block_range) {
    using Params = ::tensorflow::thread::ThreadPool::SchedulingParams;
    pool->ParallelFor(
        blocks, Params::Adaptive(std::max<int64_t>(1, elements_per_block) * kCyclesPerElement),
        block_range);
  };
}

// TensorFlow's element types and the core's: Eigen::half and Eigen::bfloat16 are
// the same 16 bits as cpu::Half and cpu::BFloat16.
template <typename T>
struct CoreType {
  using type = T;
};
template <>
struct CoreType<Eigen::half> {
  using type = cpu::Half;
};
template <>
struct CoreType<Eigen::bfloat16> {
  using type = cpu::BFloat16;
};
static_assert(sizeof(Eigen::half) == sizeof(cpu::Half), "half layout");
static_assert(sizeof(Eigen::bfloat16) == sizeof(cpu::BFloat16), "bfloat16 layout");

template <typename T>
const typename CoreType<T>::type* Core(const T* data) {
  return reinterpret_cast<const typename CoreType<T>::type*>(data);
}

template <typename T>
typename CoreType<T>::type* Core(T* data) {
  return reinterpret_cast<typename CoreType<T>::type*>(data);
}

}  // namespace

namespace functor {

using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

template <typename T>
struct HuberPerSample<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, double threshold, T* loss) const {
    cpu::HuberPerSample(ThreadPool(ctx), Core(y_true), Core(y_pred), in.rows, in.depth, threshold,
                        Core(loss));
    return absl::OkStatus();
  }
};

template <typename T>
struct HuberPerSampleGrad<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, const T* grad, double threshold, T* grad_pred) const {
    cpu::HuberPerSampleGrad(ThreadPool(ctx), Core(y_true), Core(y_pred), Core(grad), in.rows,
                            in.depth, threshold, Core(grad_pred));
    return absl::OkStatus();
  }
};

template <typename T>
struct HuberWeightedTotal<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, WeightMode mode,
                          const T* y_true, const T* y_pred, const T* weights, double threshold,
                          double* total, double* count) const {
    cpu::HuberWeightedTotal(ThreadPool(ctx), Core(y_true), Core(y_pred), Core(weights), mode,
                            in.rows, in.depth, threshold, total, count);
    return absl::OkStatus();
  }
};

template <typename T>
struct HuberMeanWithGrad<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const RowLayout& in, const T* y_true,
                          const T* y_pred, double threshold, T* mean, T* grad_pred) const {
    *mean = cpu::HuberMeanWithGrad(ThreadPool(ctx), y_true, y_pred, in.rows, in.depth, threshold,
                                   grad_pred);
    return absl::OkStatus();
  }
};

template <typename T>
struct HuberMeanGrad<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, const Tensor& stored, T grad,
                          Tensor* grad_pred) const {
    grad_pred->flat<T>().device(ctx->eigen_device<CPUDevice>()) = stored.flat<T>() * grad;
    return absl::OkStatus();
  }
};

}  // namespace functor

namespace {

using ::tensorflow::DEVICE_CPU;

#define FASTCUSTOM_REGISTER_CPU(OP, T) FASTCUSTOM_REGISTER_HUBER_KERNEL(OP, DEVICE_CPU, CPUDevice, T);
#define FASTCUSTOM_REGISTER_CPU_TYPE(T)         \
  FASTCUSTOM_REGISTER_CPU(HuberPerSample, T)     \
  FASTCUSTOM_REGISTER_CPU(HuberPerSampleGrad, T) \
  FASTCUSTOM_REGISTER_CPU(HuberWeightedTotal, T)

FASTCUSTOM_REGISTER_CPU_TYPE(Eigen::half)
FASTCUSTOM_REGISTER_CPU_TYPE(Eigen::bfloat16)
FASTCUSTOM_REGISTER_CPU_TYPE(float)
FASTCUSTOM_REGISTER_CPU_TYPE(double)
// The mean ops take float and double only (their definitions' T).
FASTCUSTOM_REGISTER_CPU(HuberMeanWithGrad, float)
FASTCUSTOM_REGISTER_CPU(HuberMeanWithGrad, double)
FASTCUSTOM_REGISTER_CPU(HuberMeanGrad, float)
FASTCUSTOM_REGISTER_CPU(HuberMeanGrad, double)

#undef FASTCUSTOM_REGISTER_CPU_TYPE
#undef FASTCUSTOM_REGISTER_CPU

}  // namespace
}  // namespace fastcustom
