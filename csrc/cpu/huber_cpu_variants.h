// The compiled variants of the CPU kernels. huber_cpu_kernels.cc is compiled
// once per variant (fastcustom/build_ops.py), each time into its own namespace
// fastcustom::cpu::<variant> with that variant's instruction set, and defines
// there the entry points declared below; huber_cpu.cc, compiled once, picks a
// variant and forwards huber_cpu.h's functions to it. A build has either
//
//   avx2 + avx512   portable x86-64 builds (-march=x86-64-v3 for every file;
//                   `avx512` adds the AVX-512 foundation, BW, CD, DQ and VL
//                   sets to its kernels only): FASTCUSTOM_CPU_AVX512_DISPATCH
//   native          -march=native builds: FASTCUSTOM_CPU_VARIANT=native
//   generic         portable builds for other architectures: =generic
#ifndef FASTCUSTOM_CPU_HUBER_CPU_VARIANTS_H_
#define FASTCUSTOM_CPU_HUBER_CPU_VARIANTS_H_

#include <cstdint>

#include "cpu/huber_cpu.h"

// huber_cpu.h's kernels, declared in the variant namespace `variant`.
#define FASTCUSTOM_CPU_DECLARE_VARIANT(variant)                                                   \
  namespace fastcustom {                                                                         \
  namespace cpu {                                                                                \
  namespace variant {                                                                            \
  template <typename T>                                                                          \
  void HuberPerSample(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,         \
                      int64_t rows, int64_t depth, double threshold, T* loss);                   \
  template <typename T>                                                                          \
  void HuberPerSampleGrad(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,     \
                          const T* grad, int64_t rows, int64_t depth, double threshold,          \
                          T* grad_pred);                                                         \
  template <typename T>                                                                          \
  void HuberWeightedTotal(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,     \
                          const T* weights, WeightMode mode, int64_t rows, int64_t depth,        \
                          double threshold, double* total, double* count);                       \
  template <typename T>                                                                          \
  T HuberMeanWithGrad(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,         \
                      int64_t rows, int64_t depth, double threshold, T* grad_pred);              \
  }                                                                                              \
  }                                                                                              \
  }

// The explicit instantiations of huber_cpu.h's kernels, in the namespace where the
// macro stands: the dispatching entry points (huber_cpu.cc) and each variant's kernels
// (huber_cpu_kernels.cc) are instantiated for the same types.
#define FASTCUSTOM_CPU_INSTANTIATE_KERNELS()                                                    \
  FASTCUSTOM_CPU_INSTANTIATE_FOR(Half)                                                          \
  FASTCUSTOM_CPU_INSTANTIATE_FOR(BFloat16)                                                      \
  FASTCUSTOM_CPU_INSTANTIATE_FOR(float)                                                         \
  FASTCUSTOM_CPU_INSTANTIATE_FOR(double)                                                        \
  template float HuberMeanWithGrad<float>(const ParallelFor&, const float*, const float*,       \
                                          int64_t, int64_t, double, float*);                    \
  template double HuberMeanWithGrad<double>(const ParallelFor&, const double*, const double*,   \
                                            int64_t, int64_t, double, double*);
#define FASTCUSTOM_CPU_INSTANTIATE_FOR(T)                                                       \
  template void HuberPerSample<T>(const ParallelFor&, const T*, const T*, int64_t, int64_t,     \
                                  double, T*);                                                  \
  template void HuberPerSampleGrad<T>(const ParallelFor&, const T*, const T*, const T*,         \
                                      int64_t, int64_t, double, T*);                            \
  template void HuberWeightedTotal<T>(const ParallelFor&, const T*, const T*, const T*,         \
                                      WeightMode, int64_t, int64_t, double, double*, double*);

// The AVX-512 variant's instruction sets (x86-64-v4), added to -march=x86-64-v3
// by `#pragma GCC target` after the standard headers, so that the standard
// library's inline functions keep the baseline's code (one copy, safe on every
// CPU) while still inlining into these kernels (an ISA subset, the same -march).
#define FASTCUSTOM_CPU_AVX512_TARGET "avx512f,avx512bw,avx512cd,avx512dq,avx512vl"

#endif  // FASTCUSTOM_CPU_HUBER_CPU_VARIANTS_H_
