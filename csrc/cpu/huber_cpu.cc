// huber_cpu.h's functions: the one dispatch point of the CPU kernels, choosing
// among the variants this build compiled (huber_cpu_variants.h). This file is
// compiled with the build's baseline flags only, so choosing never executes an
// instruction the CPU lacks; the AVX-512 variant runs only where the CPU (and the
// OS, which must save the AVX-512 registers) supports every set it was compiled for.
#include "cpu/huber_cpu.h"

#include <cstdlib>
#include <cstring>

#include "cpu/huber_cpu_variants.h"

#if defined(FASTCUSTOM_CPU_AVX512_DISPATCH)
FASTCUSTOM_CPU_DECLARE_VARIANT(avx2)
FASTCUSTOM_CPU_DECLARE_VARIANT(avx512)
#elif defined(FASTCUSTOM_CPU_VARIANT)
FASTCUSTOM_CPU_DECLARE_VARIANT(FASTCUSTOM_CPU_VARIANT)
#else
#error "compile with -DFASTCUSTOM_CPU_AVX512_DISPATCH or -DFASTCUSTOM_CPU_VARIANT=<name> (fastcustom/build_ops.py)"
#endif

namespace fastcustom {
namespace cpu {
namespace {

#define FASTCUSTOM_CPU_STRING(name) FASTCUSTOM_CPU_STRING_OF(name)
#define FASTCUSTOM_CPU_STRING_OF(name) #name

#if defined(FASTCUSTOM_CPU_AVX512_DISPATCH)
// Whether the AVX-512 variant runs: chosen once. FASTCUSTOM_CPU_ISA=avx2 asks for
// the AVX2 variant on any CPU (for tests and comparisons); any other value, or
// none, takes AVX-512 where the CPU has it.
bool UseAvx512() {
  static const bool use = [] {
    const char* asked = std::getenv("FASTCUSTOM_CPU_ISA");
    if (asked != nullptr && std::strcmp(asked, "avx2") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return use;
}
#define FASTCUSTOM_CPU_CHOSEN(fn) (UseAvx512() ? avx512::fn : avx2::fn)
#else
#define FASTCUSTOM_CPU_CHOSEN(fn) FASTCUSTOM_CPU_VARIANT::fn
#endif

}  // namespace

const char* KernelIsa() {
#if defined(FASTCUSTOM_CPU_AVX512_DISPATCH)
  return UseAvx512() ? "avx512" : "avx2";
#else
  return FASTCUSTOM_CPU_STRING(FASTCUSTOM_CPU_VARIANT);
#endif
}

template <typename T>
void HuberPerSample(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                    int64_t rows, int64_t depth, double threshold, T* loss) {
  FASTCUSTOM_CPU_CHOSEN(HuberPerSample<T>)(parallel_for, y_true, y_pred, rows, depth, threshold,
                                           loss);
}

template <typename T>
void HuberPerSampleGrad(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                        const T* grad, int64_t rows, int64_t depth, double threshold,
                        T* grad_pred) {
  FASTCUSTOM_CPU_CHOSEN(HuberPerSampleGrad<T>)(parallel_for, y_true, y_pred, grad, rows, depth,
                                               threshold, grad_pred);
}

template <typename T>
void HuberWeightedTotal(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                        const T* weights, WeightMode mode, int64_t rows, int64_t depth,
                        double threshold, double* total, double* count) {
  FASTCUSTOM_CPU_CHOSEN(HuberWeightedTotal<T>)(parallel_for, y_true, y_pred, weights, mode, rows,
                                               depth, threshold, total, count);
}

template <typename T>
T HuberMeanWithGrad(const ParallelFor& parallel_for, const T* y_true, const T* y_pred,
                    int64_t rows, int64_t depth, double threshold, T* grad_pred) {
  return FASTCUSTOM_CPU_CHOSEN(HuberMeanWithGrad<T>)(parallel_for, y_true, y_pred, rows, depth,
                                                     threshold, grad_pred);
}

FASTCUSTOM_CPU_INSTANTIATE_KERNELS()

}  // namespace cpu
}  // namespace fastcustom

// For the loader (`fastcustom info`) and the ctypes tests: which variant runs.
extern "C" const char* fastcustom_huber_cpu_kernel_isa() { return fastcustom::cpu::KernelIsa(); }
