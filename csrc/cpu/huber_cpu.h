// The Huber kernels' CPU core: plain C++ over raw pointers and a parallel-for
// callback, with no TensorFlow in sight. The TF CPU kernels
// (../huber_kernels_cpu.cc, on TensorFlow's thread pool) and the ctypes library
// of the tests and benchmarks (huber_cpu_capi.cc, on std::threads) are thin
// callers of this.
//
// Inputs y_true and y_pred are contiguous row-major [rows, depth] arrays (any
// [..., D] tensor viewed as rows x depth = N x D). With h and dh/dy_pred as
// stated in ../huber_math.h (t = threshold):
//
//   HuberPerSample:     loss[r]         = (1/D) sum_j h[r, j]          (D == 0: NaN)
//   HuberPerSampleGrad: grad_pred[r, j] = grad[r] / D * dh/dy_pred[r, j]
//   HuberWeightedTotal: total = sum w h, count = sum w                 (doubles)
//   HuberMeanWithGrad:  returns mean = (1/(N D)) sum h (0 when N == 0, NaN when D == 0),
//                       grad_pred[r, j] = dh/dy_pred[r, j] / (N D), in one pass
//
// where the weights are none (every w = 1), one per row or one per element
// (WeightMode, ../huber_math.h). Half, bfloat16 and float inputs are evaluated
// in float, double in double; the summation order (huber_cpu_kernels.cc) depends
// only on the shape, never on the threads or the instruction set: every
// variant of the kernels, on any number of threads, gives the same bits. (A NaN
// result is NaN in every variant, but its sign and payload may differ between
// variants: where two NaNs meet, x86 keeps the first operand's, and the compiler
// orders the operands of a commutative add as it likes.)
#ifndef FASTCUSTOM_CPU_HUBER_CPU_H_
#define FASTCUSTOM_CPU_HUBER_CPU_H_

#include <cstdint>
#include <functional>

#include "huber_math.h"

namespace fastcustom {
namespace cpu {

// 16-bit floats as stored: the bits of Eigen::half / numpy.float16 (IEEE
// binary16) and of Eigen::bfloat16, converted to and from float as Eigen does
// (round to nearest even; a NaN stays a NaN).
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// How the core runs its parallel blocks: a ParallelFor calls
// block_range(begin, end) over disjoint ranges that together cover [0, blocks),
// on any threads and in any order, and returns when all have run.
// `elements_per_block` is the elements one block reads: a scheduler's hint.
// Each block writes only its own outputs or partial sums, so the results do
// not depend on how the blocks are split or run.
using BlockRange = std::function<void(int64_t begin, int64_t end)>;
using ParallelFor =
    std::function<void(int64_t blocks, int64_t elements_per_block, const BlockRange& block_range)>;

// T: Half, BFloat16, float or double. loss: [rows]; grad: [rows]; grad_pred:
// [rows, depth]; weights: null (kNone), rows or rows * depth values.
template <typename T>
void HuberPerSample(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                    int64_t rows, int64_t depth, double threshold, T* loss);

template <typename T>
void HuberPerSampleGrad(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                        const T* grad, int64_t rows, int64_t depth, double threshold,
                        T* grad_pred);

template <typename T>
void HuberWeightedTotal(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                        const T* weights, WeightMode mode, int64_t rows, int64_t depth,
                        double threshold, double* total, double* count);

// T: float or double.
template <typename T>
T HuberMeanWithGrad(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                    int64_t rows, int64_t depth, double threshold, T* grad_pred);

// Which compiled variant of the kernels runs: "avx512" or "avx2" in a portable
// x86-64 build (chosen once, at the first call: AVX-512 where the CPU has
// avx512f/bw/cd/dq/vl, unless FASTCUSTOM_CPU_ISA=avx2 asks for the other),
// "native" in a build for the machine that compiled it, "generic" elsewhere.
const char* KernelIsa();

}  // namespace cpu
}  // namespace fastcustom

#endif  // FASTCUSTOM_CPU_HUBER_CPU_H_
