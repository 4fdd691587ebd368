// The Huber math shared by every fastcustom kernel (CPU, CUDA): nothing here
// knows about TensorFlow, threads or memory layout. The formula, stated once for
// csrc/ (the other files refer to it):
//
//   e = y_true - y_pred,  t = threshold,  q = min(|e|, t)
//   h(e) = e^2 / 2              if |e| <= t
//        = t |e| - t^2 / 2      otherwise
//        = q (|e| - q / 2)      (how it is computed)
//   dh/dy_pred = -dh/de = clamp(y_pred - y_true, -t, t)
//
// q (|e| - q/2) is the same value, to the bit, as (e/2) e below the threshold and
// t (|e| - t/2) above it, with no t^2 or e^2 that overflows when h does not (a
// threshold above ~1.8e19 in float made t |e| - t^2/2 an inf - inf = NaN), and no
// branch: the min is a select, so the loops vectorize (a branch per element
// mispredicts on mixed data). Where h itself overflows Acc it is
// +inf; the CPU kernels then recompute that row or chunk in double
// (fastcustom.reference's rule: one rounding at the end).
//
// Acc is the accumulation type: float for half, bfloat16 and float inputs,
// double for double. NaN propagates: |e| < t is false for NaN, so q = t and
// h = t (NaN - t/2) = NaN; the clamp keeps NaN too (it never compares it into
// a bound).
//
// Also the weights' modes of HuberWeightedTotal, shared by the TF kernels and
// the CUDA core (which includes this header without TensorFlow).
#ifndef FASTCUSTOM_HUBER_MATH_H_
#define FASTCUSTOM_HUBER_MATH_H_

#include <cstdint>

#if defined(__CUDACC__)
#define FASTCUSTOM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTCUSTOM_HOST_DEVICE inline
#endif

namespace fastcustom {

template <typename Acc>
FASTCUSTOM_HOST_DEVICE Acc HuberValue(Acc y_true, Acc y_pred, Acc threshold) {
  const Acc e = y_true - y_pred;
  const Acc a = e < Acc(0) ? -e : e;
  const Acc q = a < threshold ? a : threshold;
  return q * (a - Acc(0.5) * q);
}

// d h / d y_pred.
template <typename Acc>
FASTCUSTOM_HOST_DEVICE Acc HuberGradPred(Acc y_true, Acc y_pred, Acc threshold) {
  const Acc e = y_pred - y_true;
  return e > threshold ? threshold : (e < -threshold ? -threshold : e);
}

// How HuberWeightedTotal's weights of `size` entries apply to N = rows rows of
// D = depth: N*D entries one per element (checked first: also N when D == 1), N
// one per row, 0 none (every weight 1); false for any other count.
enum class WeightMode { kNone, kPerRow, kPerElement };

inline bool GetWeightMode(int64_t size, int64_t rows, int64_t depth, WeightMode* mode) {
  *mode = size == rows * depth ? WeightMode::kPerElement
          : size == rows       ? WeightMode::kPerRow
                               : WeightMode::kNone;
  return size == rows * depth || size == rows || size == 0;
}

}  // namespace fastcustom

#endif  // FASTCUSTOM_HUBER_MATH_H_
