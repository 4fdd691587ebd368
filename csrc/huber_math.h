// The Huber math shared by every fastcustom kernel (CPU, CUDA): nothing here
// knows about TensorFlow, threads or memory layout.
//
//   e = y_true - y_pred
//   h(e) = 0.5 e^2                   if |e| <= delta
//        = delta |e| - 0.5 delta^2   otherwise
//   dh/dy_pred = -dh/de = clamp(y_pred - y_true, -delta, delta)
//
// computed as (0.5 e) e and delta (|e| - 0.5 delta): the same values, without
// the delta^2 (or e^2) that overflows when the result does not (delta above
// ~1.8e19 in float made delta |e| - 0.5 delta^2 an inf - inf = NaN). Where the
// result itself overflows Acc it is +inf; the CPU kernels then recompute that
// row or chunk in double (fastcustom.reference's rule: one rounding at the end).
//
// Acc is the accumulation type: float for half, bfloat16 and float inputs,
// double for double. NaN propagates: every comparison with NaN is false, so a
// NaN error takes the linear branch, whose value is NaN; the clamp below keeps
// NaN too (it never compares it into a bound).
#ifndef FASTCUSTOM_HUBER_MATH_H_
#define FASTCUSTOM_HUBER_MATH_H_

#if defined(__CUDACC__)
#define FASTCUSTOM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTCUSTOM_HOST_DEVICE inline
#endif

namespace fastcustom {

template <typename Acc>
FASTCUSTOM_HOST_DEVICE Acc HuberValue(Acc y_true, Acc y_pred, Acc delta) {
  const Acc e = y_true - y_pred;
  const Acc a = e < Acc(0) ? -e : e;
  return a <= delta ? (Acc(0.5) * e) * e : delta * (a - Acc(0.5) * delta);
}

// d h / d y_pred.
template <typename Acc>
FASTCUSTOM_HOST_DEVICE Acc HuberGradPred(Acc y_true, Acc y_pred, Acc delta) {
  const Acc e = y_pred - y_true;
  return e > delta ? delta : (e < -delta ? -delta : e);
}

}  // namespace fastcustom

#endif  // FASTCUSTOM_HUBER_MATH_H_
