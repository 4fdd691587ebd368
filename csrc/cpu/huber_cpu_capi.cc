// extern "C" entry points over the Huber CPU core, for ctypes callers (the
// tests and benchmarks that need no TensorFlow: bench/cpu/core.py). Pointers
// are host addresses of contiguous arrays, `dtype` 0 = float16, 1 = bfloat16
// (its 16 bits, as uint16), 2 = float32, 3 = float64, and `threads` the
// std::threads the parallel blocks are split over (1: the calling thread only).
// Each call returns 0, or 1 for an argument the core does not take (an unknown
// dtype, a negative size or thread count, weights of another size, float16 or
// bfloat16 for the mean). The core itself is in huber_cpu.h.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu/huber_cpu.h"

namespace {

using fastcustom::WeightMode;
namespace cpu = fastcustom::cpu;

constexpr int kBadArgument = 1;

// Splits [0, blocks) into `threads` contiguous ranges, one per std::thread (the
// first on the calling thread).
cpu::ParallelFor OnThreads(int threads) {
  return [threads](int64_t blocks, int64_t, const cpu::BlockRange& block_range) {
    const int64_t parts = std::min<int64_t>(threads, blocks);
    std::vector<std::thread> workers;
    for (int64_t i = 1; i < parts; ++i) {
      workers.emplace_back(block_range, blocks * i / parts, blocks * (i + 1) / parts);
    }
    if (parts > 0) block_range(0, blocks / parts);
    for (std::thread& worker : workers) worker.join();
  };
}

// Calls fn(T{}) for the dtype's element type (`floats_only`: float32, float64).
template <typename Fn>
int WithDType(int dtype, bool floats_only, Fn&& fn) {
  switch (dtype) {
    case 0: return floats_only ? kBadArgument : (fn(cpu::Half{}), 0);
    case 1: return floats_only ? kBadArgument : (fn(cpu::BFloat16{}), 0);
    case 2: return fn(float{}), 0;
    case 3: return fn(double{}), 0;
    default: return kBadArgument;
  }
}

template <typename T>
const T* In(const void* p) { return static_cast<const T*>(p); }

template <typename T>
T* Out(void* p) { return static_cast<T*>(p); }

bool BadSizes(int64_t rows, int64_t depth, int threads) {
  return rows < 0 || depth < 0 || threads < 1;
}

}  // namespace

extern "C" {

// loss[r] = mean_j h(y_true[r, j], y_pred[r, j]); loss has the input dtype.
int fastcustom_huber_cpu_per_sample(int dtype, const void* y_true, const void* y_pred,
                                    int64_t rows, int64_t depth, double threshold, void* loss,
                                    int threads) {
  if (BadSizes(rows, depth, threads)) return kBadArgument;
  return WithDType(dtype, false, [&](auto tag) {
    using T = decltype(tag);
    cpu::HuberPerSample<T>(OnThreads(threads), In<T>(y_true), In<T>(y_pred), rows, depth,
                           threshold, Out<T>(loss));
  });
}

// grad_pred[r, j] = grad[r] / depth * clamp(y_pred - y_true, -threshold, threshold).
int fastcustom_huber_cpu_per_sample_grad(int dtype, const void* y_true, const void* y_pred,
                                         const void* grad, int64_t rows, int64_t depth,
                                         double threshold, void* grad_pred, int threads) {
  if (BadSizes(rows, depth, threads)) return kBadArgument;
  return WithDType(dtype, false, [&](auto tag) {
    using T = decltype(tag);
    cpu::HuberPerSampleGrad<T>(OnThreads(threads), In<T>(y_true), In<T>(y_pred), In<T>(grad),
                               rows, depth, threshold, Out<T>(grad_pred));
  });
}

// total_count[0] = sum w * h, total_count[1] = sum w; weights_size is 0 (no
// weights), rows or rows * depth.
int fastcustom_huber_cpu_weighted_total(int dtype, const void* y_true, const void* y_pred,
                                        const void* weights, int64_t weights_size, int64_t rows,
                                        int64_t depth, double threshold, double* total_count,
                                        int threads) {
  WeightMode mode;
  if (BadSizes(rows, depth, threads) || !fastcustom::GetWeightMode(weights_size, rows, depth, &mode)) {
    return kBadArgument;
  }
  return WithDType(dtype, false, [&](auto tag) {
    using T = decltype(tag);
    cpu::HuberWeightedTotal<T>(OnThreads(threads), In<T>(y_true), In<T>(y_pred), In<T>(weights),
                               mode, rows, depth, threshold, total_count, total_count + 1);
  });
}

// *mean = mean h over every element, grad_pred = its gradient w.r.t. y_pred (float32/64).
int fastcustom_huber_cpu_mean_with_grad(int dtype, const void* y_true, const void* y_pred,
                                        int64_t rows, int64_t depth, double threshold, void* mean,
                                        void* grad_pred, int threads) {
  if (BadSizes(rows, depth, threads)) return kBadArgument;
  return WithDType(dtype, true, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      *Out<T>(mean) = cpu::HuberMeanWithGrad<T>(OnThreads(threads), In<T>(y_true), In<T>(y_pred),
                                                rows, depth, threshold, Out<T>(grad_pred));
    }
  });
}

}  // extern "C"
