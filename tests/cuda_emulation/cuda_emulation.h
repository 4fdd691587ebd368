// Runs the Huber CUDA core (csrc/cuda/huber_cuda.cu) on the CPU, for the tests
// on machines without a GPU. Force-included by a host compiler:
//
//   g++ -std=c++17 -DFASTCUSTOM_CUDA_EMULATION -include cuda_emulation.h
//       -x c++ huber_cuda.cu -x c++ huber_capi.cu -x none cuda_emulation.cc
//
// (tests/test_cuda_core_emulated.py builds it so and runs bench/gpu/harness.py's
// checks on it.)
//
// It covers the CUDA the core uses and nothing more: __global__ kernels
// launched through the core's Launch(), threadIdx/blockIdx/blockDim/gridDim,
// __syncthreads, full-warp __shfl_down_sync / __shfl_xor_sync, __ldg, static
// __shared__ arrays, and the bit-cast and fused-multiply-add intrinsics.
// Each block's threads run as fibers of one OS thread; blocks run one after
// another. What it checks, beyond the results the tests compare:
//   * every __ldg lies inside memory registered with
//     cuda_emulation_track() and is aligned to its size (else the launch
//     fails with cudaErrorIllegalAddress / cudaErrorMisalignedAddress, as it
//     would on a GPU, and the load is not performed);
//   * every barrier is reached: a shuffle some lanes of a warp never reach, or
//     a __syncthreads not every live thread reaches, fails the launch with
//     cudaErrorLaunchFailure;
//   * launch configurations a GPU would refuse (0 blocks, 0 or over 1024
//     threads) fail with cudaErrorInvalidConfiguration.
// What it cannot show: the GPU's memory model, speed, or the device
// compiler's own code generation (nvcc contracts a * b + c into FMAs the host
// compiler does not), so results are compared with tolerances, as on a GPU.
#ifndef FASTCUSTOM_TESTS_CUDA_EMULATION_H_
#define FASTCUSTOM_TESTS_CUDA_EMULATION_H_

// The CUDA headers first, with their own definitions of the keywords below.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

// Device-code keywords as plain C++.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ static  // one copy per kernel; blocks run one at a time
#undef __launch_bounds__
#define __launch_bounds__(...)

extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace cuda_emulation {

// Runs `body` for every thread of blocks x threads; returns the launch status
// (also what the next cudaGetLastError() returns).
cudaError_t RunGrid(unsigned blocks, unsigned threads, const std::function<void()>& body);

// The core's launches: kernel(args...) on every thread of the grid.
template <typename... Params, typename... Args>
void Launch(unsigned blocks, unsigned threads, cudaStream_t, void (*kernel)(Params...), Args... args) {
  RunGrid(blocks, threads, [&] { kernel(args...); });
}

bool LoadAllowed(const void* p, size_t bytes);  // false: the launch now fails
void SyncThreads();
// Lane `src_lane`'s `bits` of this warp's exchange (every lane must call it).
uint64_t WarpExchange(unsigned mask, uint64_t bits, int src_lane);
cudaError_t TakeLastError();
const char* ErrorString(cudaError_t code);

template <typename T>
T Shuffle(unsigned mask, T v, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = WarpExchange(mask, bits, src_lane);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace cuda_emulation

// Device intrinsics.
template <typename T>
T __ldg(const T* p) {
  return cuda_emulation::LoadAllowed(p, sizeof(T)) ? *p : T{};
}
inline void __syncthreads() { cuda_emulation::SyncThreads(); }
template <typename T>
T __shfl_down_sync(unsigned mask, T v, int delta) {  // lanes past the warp keep their own value
  const int lane = static_cast<int>(threadIdx.x % 32);
  return cuda_emulation::Shuffle(mask, v, lane + delta < 32 ? lane + delta : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return cuda_emulation::Shuffle(mask, v, static_cast<int>(threadIdx.x % 32) ^ lane_mask);
}

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline double __hiloint2double(int hi, int lo) {
  const uint64_t bits = (uint64_t{static_cast<uint32_t>(hi)} << 32) | static_cast<uint32_t>(lo);
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}
inline int __double2loint(double d) { uint64_t b; std::memcpy(&b, &d, 8); return static_cast<int>(static_cast<uint32_t>(b)); }
inline int __double2hiint(double d) { uint64_t b; std::memcpy(&b, &d, 8); return static_cast<int>(static_cast<uint32_t>(b >> 32)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
using std::isfinite;

// The runtime calls the core and its C API make.
#define cudaGetLastError() ::cuda_emulation::TakeLastError()
#define cudaGetErrorString(code) ::cuda_emulation::ErrorString(code)
#define cudaMemcpyAsync(dst, src, bytes, kind, stream) \
  (std::memcpy((dst), (src), (bytes)), cudaSuccess)

#endif  // FASTCUSTOM_TESTS_CUDA_EMULATION_H_
