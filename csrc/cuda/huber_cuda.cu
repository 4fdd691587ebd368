// The Huber kernels' CUDA core (see huber_cuda.h for the contract).
//
// Per-row strategy of HuberPerSample, chosen from the shape (and whether the
// inputs are 16-byte aligned) alone:
//   short aligned rows (depth a multiple of the 16-byte vector, < 64 vectors:
//       D=16 float is 4 vectors): G = 1, 2, ..., 32 lanes per row, each lane
//       owns one or two vectors of the row; a warp loads 4 sets of 32 / G
//       rows before it computes (PerSampleShortRowsKernel).
//   other rows up to kGroupMaxDepth: the same G lanes per row (a warp for
//       D >= 128 float), head/vector/tail loops (PerSampleGroupKernel).
//   longer rows: a block per row segment; when there are fewer rows than
//       kSegmentTargetBlocks, each row is split into segments of at least
//       kMinSegmentLength elements, each block writes its segment's sum to the
//       workspace and a second kernel adds a row's segments in order.
// A lane's partial is a double; the G lanes of a row meet in a fixed
// xor-shuffle tree, a block's threads in a fixed shuffle + shared-memory tree.
// Inside a row (piece) each lane reads scalars up to the first 16-byte
// boundary, then 16-byte vectors, then the scalar tail.
//
// HuberPerSampleGrad and HuberWeightedTotal walk the flat array in tiles of
// kBlock * kUnroll chunks of 16 bytes; a thread loads all its chunks of a tile
// before it computes, and finds an element's row as i / depth (one double
// multiply and a correction per chunk). HuberWeightedTotal is a two-stage
// reduction: block b of a grid of min(tiles, kMaxPartials) blocks takes tiles
// b, b + grid, ... and writes (sum w*h, sum w) to the workspace; one block then
// adds the partials in a fixed order. A chunk's values are summed in float
// (the accumulation type), everything after that in double; the chunking
// is the same whether the pointers allow 16-byte loads or not, so the bits of
// the totals do not depend on alignment either.
#include "huber_cuda.h"

#include <algorithm>

#include "../huber_math.h"

namespace fastcustom {
namespace gpu {
namespace {

constexpr int kWarp = 32;
constexpr int kBlock = 256;                    // threads of every main kernel
constexpr int kUnroll = 4;                     // 16-byte chunks per thread per tile
constexpr int kCombineBlock = 1024;            // the single block of a final combine
constexpr int kRowBatch = 4;                   // row sets per warp step, short rows
constexpr int64_t kGroupMaxDepth = 4096;        // longer rows get a block each
constexpr int64_t kMinSegmentLength = 8192;      // ... but no segment shorter than this
#ifndef FASTCUSTOM_CUDA_EMULATION
constexpr int64_t kMaxGridBlocks = 1 << 16;    // grid-stride kernels' grid cap
constexpr int64_t kSegmentTargetBlocks = 2048;  // split long rows to about this many blocks
constexpr int64_t kMaxPartials = 8192;         // first-stage blocks of the total
#else  // the CPU emulation (tests/cuda_emulation/): tiny grids, so that small
       // test shapes run every grid-stride loop and split rows into segments
constexpr int64_t kMaxGridBlocks = 3;
constexpr int64_t kSegmentTargetBlocks = 8;
constexpr int64_t kMaxPartials = 5;
#endif
constexpr int64_t kMinTile = int64_t{kBlock} * kUnroll * 2;  // double's tile

__host__ __device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// Element access: 16-byte raw chunks and per-type conversions to Acc.
// ---------------------------------------------------------------------------
struct Raw16 {
  uint32_t w[4];
};

__device__ __forceinline__ Raw16 LoadRaw16(const void* p) {
  const uint4 v = __ldg(static_cast<const uint4*>(p));
  return Raw16{{v.x, v.y, v.z, v.w}};
}

__device__ __forceinline__ void StoreRaw16(void* p, const Raw16& r) {
  *static_cast<uint4*>(p) = make_uint4(r.w[0], r.w[1], r.w[2], r.w[3]);
}

// Elem<T>: Acc (the evaluation type), kVec (elements per 16 bytes), scalar
// Load/Store, FromDouble (one rounding), and Get/Set of lane k of a Raw16
// (Set lanes in increasing k into a fresh Raw16). One specialization per storage
// type, the same members in the same order: parallel by design, each with its
// type's own intrinsics.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  using Acc = float;
  static constexpr int kVec = 4;
  static __device__ __forceinline__ Acc Load(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void Store(float* p, Acc v) { *p = v; }
  static __device__ __forceinline__ float FromDouble(double v) { return static_cast<float>(v); }
  static __device__ __forceinline__ Acc Get(const Raw16& r, int k) { return __uint_as_float(r.w[k]); }
  static __device__ __forceinline__ void Set(Raw16& r, int k, Acc v) { r.w[k] = __float_as_uint(v); }
};

template <>
struct Elem<double> {
  using Acc = double;
  static constexpr int kVec = 2;
  static __device__ __forceinline__ Acc Load(const double* p) { return __ldg(p); }
  static __device__ __forceinline__ void Store(double* p, Acc v) { *p = v; }
  static __device__ __forceinline__ double FromDouble(double v) { return v; }
  static __device__ __forceinline__ Acc Get(const Raw16& r, int k) {
    return __hiloint2double(static_cast<int>(r.w[2 * k + 1]), static_cast<int>(r.w[2 * k]));
  }
  static __device__ __forceinline__ void Set(Raw16& r, int k, Acc v) {
    r.w[2 * k] = static_cast<uint32_t>(__double2loint(v));
    r.w[2 * k + 1] = static_cast<uint32_t>(__double2hiint(v));
  }
};

// half and bfloat16: the same 16-bit plumbing around three conversions.
template <typename T, typename Convert>
struct Elem16 {
  using Acc = float;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ Acc Load(const T* p) {
    return Convert::ToFloat(__ldg(reinterpret_cast<const unsigned short*>(p)));
  }
  static __device__ __forceinline__ void Store(T* p, Acc v) {
    *reinterpret_cast<unsigned short*>(p) = Convert::FromFloat(v);
  }
  static __device__ __forceinline__ T FromDouble(double v) { return Convert::FromDouble(v); }
  static __device__ __forceinline__ Acc Get(const Raw16& r, int k) {
    return Convert::ToFloat(static_cast<unsigned short>(r.w[k / 2] >> (16 * (k % 2))));
  }
  static __device__ __forceinline__ void Set(Raw16& r, int k, Acc v) {
    const uint32_t bits = Convert::FromFloat(v);
    r.w[k / 2] = (k % 2) ? (r.w[k / 2] | (bits << 16)) : bits;
  }
};

#define FASTCUSTOM_DEVICE static __device__ __forceinline__
struct HalfConvert {
  FASTCUSTOM_DEVICE float ToFloat(unsigned short b) { return __half2float(__ushort_as_half(b)); }
  FASTCUSTOM_DEVICE unsigned short FromFloat(float v) { return __half_as_ushort(__float2half_rn(v)); }
  FASTCUSTOM_DEVICE __half FromDouble(double v) { return __double2half(v); }
};

struct BFloat16Convert {
  FASTCUSTOM_DEVICE float ToFloat(unsigned short b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
  FASTCUSTOM_DEVICE unsigned short FromFloat(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  FASTCUSTOM_DEVICE __nv_bfloat16 FromDouble(double v) { return __double2bfloat16(v); }
};
#undef FASTCUSTOM_DEVICE

template <>
struct Elem<__half> : Elem16<__half, HalfConvert> {};
template <>
struct Elem<__nv_bfloat16> : Elem16<__nv_bfloat16, BFloat16Convert> {};

// Always-fused a * b + c, so every code path rounds identically.
__device__ __forceinline__ float MulAdd(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double MulAdd(double a, double b, double c) { return __fma_rn(a, b, c); }

// ---------------------------------------------------------------------------
// Fixed-order reductions.
// ---------------------------------------------------------------------------
__device__ __forceinline__ double WarpSum(double v) {  // the sum lands in lane 0
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a block of kThreads; the result is valid in thread 0. `scratch`
// holds kThreads / 32 doubles and may be reused right after the call.
template <int kThreads>
__device__ __forceinline__ double BlockSum(double v, double* scratch) {
  static_assert(kThreads % kWarp == 0 && kThreads <= kWarp * kWarp, "block size");
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  v = WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) v = WarpSum(lane < kThreads / kWarp ? scratch[lane] : 0.0);
  __syncthreads();
  return v;
}

// Sum over aligned groups of G lanes of a warp; every lane of a group gets
// the same bits (a + b == b + a).
template <int G>
__device__ __forceinline__ double GroupSum(double v) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Division by the row length D without the IEEE division's slow-path call:
// q = a * RN(1/D), then one FMA residual step (Markstein), which gives the
// correctly rounded a / D; infinities and NaN pass through the first product.
struct Divisor {
  int64_t value;  // D
  double inv;     // RN(1 / D) in double
  float inv_f;    // RN(1 / float(D)) in float

  static Divisor Of(int64_t d) {
    return {d, 1.0 / static_cast<double>(d), 1.0f / static_cast<float>(d)};
  }
  __device__ __forceinline__ double Divide(double a) const {
    const double q = a * inv;
    return isfinite(q) ? __fma_rn(__fma_rn(-q, static_cast<double>(value), a), inv, q) : q;
  }
  __device__ __forceinline__ float Divide(float a) const {
    const float q = a * inv_f;
    return isfinite(q) ? __fmaf_rn(__fmaf_rn(-q, static_cast<float>(value), a), inv_f, q) : q;
  }
  // row = i / D and col = i % D: one double multiply, then exact integer
  // corrections (the estimate is off by at most one below 2^50).
  __device__ __forceinline__ void RowAndCol(int64_t i, int64_t* row, int64_t* col) const {
    int64_t r = static_cast<int64_t>(static_cast<double>(i) * inv);
    int64_t c = i - r * value;
    while (c < 0) { --r; c += value; }
    while (c >= value) { ++r; c -= value; }
    *row = r;
    *col = c;
  }
};

// out[k] = per_row[row(i0 + k)] (divided by depth when kDivideByDepth) for the
// first `valid` elements of the chunk at flat index i0; a chunk may cross rows.
template <typename T, bool kDivideByDepth>
__device__ __forceinline__ void PerRowValues(const T* per_row, int64_t i0, int valid, const Divisor& depth,
                                             typename Elem<T>::Acc (&out)[Elem<T>::kVec]) {
  using Acc = typename Elem<T>::Acc;
  auto value_of = [&](int64_t row) {
    const Acc v = Elem<T>::Load(per_row + row);
    return kDivideByDepth ? depth.Divide(v) : v;
  };
  int64_t row, col;
  depth.RowAndCol(i0, &row, &col);
  Acc value = value_of(row);
#pragma unroll
  for (int k = 0; k < Elem<T>::kVec; ++k) {
    if (k < valid) {
      if (col == depth.value) {
        ++row;
        col = 0;
        value = value_of(row);
      }
      out[k] = value;
      ++col;
    }
  }
}

// ---------------------------------------------------------------------------
// HuberPerSample
// ---------------------------------------------------------------------------
// Sum of h over one 16-byte chunk of each input, in Acc.
template <typename T>
__device__ __forceinline__ typename Elem<T>::Acc ChunkSum(const Raw16& t, const Raw16& p,
                                                          typename Elem<T>::Acc threshold) {
  using E = Elem<T>;
  using Acc = typename E::Acc;
  Acc s = HuberValue<Acc>(E::Get(t, 0), E::Get(p, 0), threshold);
#pragma unroll
  for (int k = 1; k < E::kVec; ++k) s += HuberValue<Acc>(E::Get(t, k), E::Get(p, k), threshold);
  return s;
}

// Sum of h over elements [0, len) of one row piece, as lane `lane` of
// kLanes cooperating threads sees it: a scalar head up to the first 16-byte
// boundary (when `vectorize`: both pointers equally aligned), whole 16-byte
// vectors lane, lane + kLanes, ... (loaded 4 at a time, each summed in Acc,
// then added in double in that order), the scalar tail.
template <typename T, int kLanes>
__device__ __forceinline__ double RangeSum(const T* y_true, const T* y_pred, int64_t len, int lane,
                                           typename Elem<T>::Acc threshold, bool vectorize) {
  using E = Elem<T>;
  using Acc = typename E::Acc;
  constexpr int V = E::kVec;
  constexpr int kBatch = 4;
  double sum = 0.0;
  int64_t scalar_from = 0;
  if (vectorize) {
    const int misaligned = static_cast<int>((reinterpret_cast<uintptr_t>(y_true) % 16) / sizeof(T));
    const int64_t head = Min64(len, (V - misaligned) % V);
    for (int64_t i = lane; i < head; i += kLanes) {
      sum += HuberValue<Acc>(E::Load(y_true + i), E::Load(y_pred + i), threshold);
    }
    const int64_t vectors = (len - head) / V;
    const T* vec_true = y_true + head;
    const T* vec_pred = y_pred + head;
    int64_t v = lane;
    for (; v + (kBatch - 1) * kLanes < vectors; v += kBatch * kLanes) {
      Raw16 t[kBatch], p[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {  // every load in flight before the math
        t[j] = LoadRaw16(vec_true + (v + j * kLanes) * V);
        p[j] = LoadRaw16(vec_pred + (v + j * kLanes) * V);
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) sum += static_cast<double>(ChunkSum<T>(t[j], p[j], threshold));
    }
    for (; v < vectors; v += kLanes) {
      const Raw16 t = LoadRaw16(vec_true + v * V), p = LoadRaw16(vec_pred + v * V);
      sum += static_cast<double>(ChunkSum<T>(t, p, threshold));
    }
    scalar_from = head + vectors * V;
  }
  for (int64_t i = scalar_from + lane; i < len; i += kLanes) {
    sum += HuberValue<Acc>(E::Load(y_true + i), E::Load(y_pred + i), threshold);
  }
  return sum;
}

// G lanes per row, 32 / G rows per warp per step, grid-stride over rows.
template <typename T, int G>
__global__ void __launch_bounds__(kBlock)
    PerSampleGroupKernel(const T* __restrict__ y_true, const T* __restrict__ y_pred, int64_t rows,
                         int64_t depth, Divisor mean_of, double threshold, bool vectorize,
                         T* __restrict__ out) {
  using Acc = typename Elem<T>::Acc;
  constexpr int kRowsPerWarp = kWarp / G;
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kBlock / kWarp);
  const Acc d = static_cast<Acc>(threshold);
  // `first` is uniform over the warp, so every lane reaches the shuffles.
  for (int64_t first = warp * kRowsPerWarp; first < rows; first += warps * kRowsPerWarp) {
    const int64_t row = first + lane / G;
    double sum = 0.0;
    if (row < rows) {
      sum = RangeSum<T, G>(y_true + row * depth, y_pred + row * depth, depth, lane % G, d, vectorize);
    }
    sum = GroupSum<G>(sum);
    if (row < rows && lane % G == 0) out[row] = Elem<T>::FromDouble(mean_of.Divide(sum));
  }
}

// Short aligned rows: depth = vecs * kVec with vecs in [G, kVecsPerLane * G)
// and 16-byte aligned inputs. Lane l of a G-lane group owns the row's
// vectors l and l + G; each step a warp takes kRowBatch sets of 32 / G rows
// and issues all their loads before any math. Same sum order as RangeSum.
template <typename T, int G, int kVecsPerLane>
__global__ void __launch_bounds__(kBlock)
    PerSampleShortRowsKernel(const T* __restrict__ y_true, const T* __restrict__ y_pred,
                             int64_t rows, int64_t depth, Divisor mean_of, double threshold,
                             T* __restrict__ out) {
  using E = Elem<T>;
  using Acc = typename E::Acc;
  constexpr int V = E::kVec;
  constexpr int kRowsPerWarp = kWarp / G;
  constexpr int kRowsPerStep = kRowsPerWarp * kRowBatch;
  const int lane = threadIdx.x % kWarp;
  const int group_lane = lane % G;
  const int64_t vecs = depth / V;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kBlock / kWarp);
  const Acc d = static_cast<Acc>(threshold);
  for (int64_t first = warp * kRowsPerStep; first < rows; first += warps * kRowsPerStep) {
    Raw16 t[kRowBatch][kVecsPerLane] = {}, p[kRowBatch][kVecsPerLane] = {};
#pragma unroll
    for (int j = 0; j < kRowBatch; ++j) {
      const int64_t row = first + j * kRowsPerWarp + lane / G;
#pragma unroll
      for (int m = 0; m < kVecsPerLane; ++m) {
        const int64_t offset = row * depth + (group_lane + m * G) * V;
        if (row < rows && group_lane + m * G < vecs) {
          t[j][m] = LoadRaw16(y_true + offset);
          p[j][m] = LoadRaw16(y_pred + offset);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kRowBatch; ++j) {
      const int64_t row = first + j * kRowsPerWarp + lane / G;
      double sum = 0.0;
#pragma unroll
      for (int m = 0; m < kVecsPerLane; ++m) {
        if (row < rows && group_lane + m * G < vecs) {
          sum += static_cast<double>(ChunkSum<T>(t[j][m], p[j][m], d));
        }
      }
      sum = GroupSum<G>(sum);
      if (row < rows && group_lane == 0) out[row] = E::FromDouble(mean_of.Divide(sum));
    }
  }
}

// A block per (row, segment) piece; with one segment per row it writes the
// mean, else the segment's sum to partials[piece].
template <typename T>
__global__ void __launch_bounds__(kBlock)
    PerSampleSegmentKernel(const T* __restrict__ y_true, const T* __restrict__ y_pred, int64_t rows,
                           int64_t depth, Divisor mean_of, int64_t segment_length, int64_t segments,
                           double threshold, bool vectorize, T* __restrict__ out,
                           double* __restrict__ partials) {
  using Acc = typename Elem<T>::Acc;
  __shared__ double scratch[kBlock / kWarp];
  const Acc d = static_cast<Acc>(threshold);
  const int64_t pieces = rows * segments;
  for (int64_t piece = blockIdx.x; piece < pieces; piece += gridDim.x) {
    const int64_t row = piece / segments;
    const int64_t begin = (piece - row * segments) * segment_length;
    const int64_t offset = row * depth + begin;
    double sum = RangeSum<T, kBlock>(y_true + offset, y_pred + offset,
                                     Min64(segment_length, depth - begin), threadIdx.x, d, vectorize);
    sum = BlockSum<kBlock>(sum, scratch);
    if (threadIdx.x == 0) {
      if (segments == 1) {
        out[row] = Elem<T>::FromDouble(mean_of.Divide(sum));
      } else {
        partials[piece] = sum;
      }
    }
  }
}

// out[row] = (sum of the row's segment partials, in order) / depth.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    CombineSegmentsKernel(const double* __restrict__ partials, int64_t rows, int64_t segments,
                          Divisor mean_of, T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; row < rows; row += stride) {
    double sum = 0.0;
    for (int64_t s = 0; s < segments; ++s) sum += partials[row * segments + s];
    out[row] = Elem<T>::FromDouble(mean_of.Divide(sum));
  }
}

// ---------------------------------------------------------------------------
// HuberPerSampleGrad: grad_pred[i] = grad[row] / depth * HuberGradPred(...)
// ---------------------------------------------------------------------------
template <typename T, bool kVectorized>
__global__ void __launch_bounds__(kBlock)
    PerSampleGradKernel(const T* __restrict__ y_true, const T* __restrict__ y_pred,
                        const T* __restrict__ grad, int64_t n, Divisor depth, double threshold,
                        T* __restrict__ grad_pred) {
  using E = Elem<T>;
  using Acc = typename E::Acc;
  constexpr int V = E::kVec;
  constexpr int64_t kTile = int64_t{kBlock} * kUnroll * V;
  const Acc d = static_cast<Acc>(threshold);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTile;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kTile; tile < n; tile += stride) {
    if (kVectorized && tile + kTile <= n) {
      Raw16 t[kUnroll], p[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {  // every load in flight before the math
        const int64_t i = tile + (int64_t{u} * kBlock + threadIdx.x) * V;
        t[u] = LoadRaw16(y_true + i);
        p[u] = LoadRaw16(y_pred + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = tile + (int64_t{u} * kBlock + threadIdx.x) * V;
        Acc scale[V];
        PerRowValues<T, true>(grad, i, V, depth, scale);
        Raw16 result;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          E::Set(result, k, scale[k] * HuberGradPred<Acc>(E::Get(t[u], k), E::Get(p[u], k), d));
        }
        StoreRaw16(grad_pred + i, result);
      }
    } else {  // the same chunks, element by element, bounds-checked
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = tile + (int64_t{u} * kBlock + threadIdx.x) * V;
        if (i >= n) break;
        const int valid = static_cast<int>(Min64(V, n - i));
        Acc scale[V];
        PerRowValues<T, true>(grad, i, valid, depth, scale);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (k < valid) {
            const Acc g = HuberGradPred<Acc>(E::Load(y_true + i + k), E::Load(y_pred + i + k), d);
            E::Store(grad_pred + i + k, scale[k] * g);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// HuberWeightedTotal
// ---------------------------------------------------------------------------
// Adds one chunk's (sum w*h, sum w), each first summed in Acc, to the doubles.
template <typename T, WeightMode kMode>
__device__ __forceinline__ void AddChunk(const typename Elem<T>::Acc (&t)[Elem<T>::kVec],
                                         const typename Elem<T>::Acc (&p)[Elem<T>::kVec],
                                         const typename Elem<T>::Acc (&w)[Elem<T>::kVec], int valid,
                                         typename Elem<T>::Acc threshold, double* total, double* count) {
  using Acc = typename Elem<T>::Acc;
  Acc weighted = 0, weight = 0;
#pragma unroll
  for (int k = 0; k < Elem<T>::kVec; ++k) {
    if (k < valid) {
      const Acc h = HuberValue<Acc>(t[k], p[k], threshold);
      if (kMode == WeightMode::kNone) {
        weighted += h;
        weight += Acc(1);
      } else {
        weighted = MulAdd(w[k], h, weighted);
        weight += w[k];
      }
    }
  }
  *total += static_cast<double>(weighted);
  *count += static_cast<double>(weight);
}

// Stage 1: block b sums tiles b, b + gridDim.x, ... into partials[2b], [2b+1].
template <typename T, WeightMode kMode, bool kVectorized>
__global__ void __launch_bounds__(kBlock)
    WeightedTotalPartialsKernel(const T* __restrict__ y_true, const T* __restrict__ y_pred,
                                const T* __restrict__ weights, int64_t n, Divisor depth,
                                double threshold, double* __restrict__ partials) {
  using E = Elem<T>;
  using Acc = typename E::Acc;
  constexpr int V = E::kVec;
  constexpr int64_t kTile = int64_t{kBlock} * kUnroll * V;
  __shared__ double scratch[kBlock / kWarp];
  const Acc d = static_cast<Acc>(threshold);
  double total = 0.0, count = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTile;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kTile; tile < n; tile += stride) {
    if (kVectorized && tile + kTile <= n) {
      Raw16 rt[kUnroll], rp[kUnroll], rw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {  // every load in flight before the math
        const int64_t i = tile + (int64_t{u} * kBlock + threadIdx.x) * V;
        rt[u] = LoadRaw16(y_true + i);
        rp[u] = LoadRaw16(y_pred + i);
        if (kMode == WeightMode::kPerElement) rw[u] = LoadRaw16(weights + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = tile + (int64_t{u} * kBlock + threadIdx.x) * V;
        Acc t[V], p[V], w[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          t[k] = E::Get(rt[u], k);
          p[k] = E::Get(rp[u], k);
          w[k] = kMode == WeightMode::kPerElement ? E::Get(rw[u], k) : Acc(1);
        }
        if (kMode == WeightMode::kPerRow) PerRowValues<T, false>(weights, i, V, depth, w);
        AddChunk<T, kMode>(t, p, w, V, d, &total, &count);
      }
    } else {  // the same chunks, element by element, bounds-checked
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = tile + (int64_t{u} * kBlock + threadIdx.x) * V;
        if (i >= n) break;
        const int valid = static_cast<int>(Min64(V, n - i));
        Acc t[V], p[V], w[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const bool in = k < valid;
          t[k] = in ? E::Load(y_true + i + k) : Acc(0);
          p[k] = in ? E::Load(y_pred + i + k) : Acc(0);
          w[k] = (in && kMode == WeightMode::kPerElement) ? E::Load(weights + i + k) : Acc(1);
        }
        if (kMode == WeightMode::kPerRow) PerRowValues<T, false>(weights, i, valid, depth, w);
        AddChunk<T, kMode>(t, p, w, valid, d, &total, &count);
      }
    }
  }
  total = BlockSum<kBlock>(total, scratch);
  count = BlockSum<kBlock>(count, scratch);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = total;
    partials[2 * blockIdx.x + 1] = count;
  }
}

// Stage 2: one block adds the partials (thread t: t, t + 1024, ...; then the
// block tree) and writes the two doubles.
__global__ void __launch_bounds__(kCombineBlock)
    CombineTotalsKernel(const double* __restrict__ partials, int64_t num_partials,
                        double* __restrict__ total, double* __restrict__ count) {
  __shared__ double scratch[kCombineBlock / kWarp];
  double t = 0.0, c = 0.0;
  for (int64_t b = threadIdx.x; b < num_partials; b += kCombineBlock) {
    t += partials[2 * b];
    c += partials[2 * b + 1];
  }
  t = BlockSum<kCombineBlock>(t, scratch);
  c = BlockSum<kCombineBlock>(c, scratch);
  if (threadIdx.x == 0) {
    *total = t;
    *count = c;
  }
}

// ---------------------------------------------------------------------------
// Host-side planning (shape only) and launches.
// ---------------------------------------------------------------------------
// Every launch goes through here: a kernel, its grid of `blocks` x `threads`
// (no dynamic shared memory) on `stream`, its arguments converted to its
// parameter types. Compiled by a host compiler with FASTCUSTOM_CUDA_EMULATION
// (tests/cuda_emulation/cuda_emulation.h), the same kernels run on the CPU instead.
template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), unsigned blocks, unsigned threads, cudaStream_t stream,
            Args... args) {
#ifndef FASTCUSTOM_CUDA_EMULATION
  kernel<<<blocks, threads, 0, stream>>>(static_cast<Params>(args)...);
#else
  cuda_emulation::Launch(blocks, threads, stream, kernel, static_cast<Params>(args)...);
#endif
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Null or aligned to its element type (anything else would fault on the device).
template <typename T>
bool ElementAligned(const T* p) { return reinterpret_cast<uintptr_t>(p) % alignof(T) == 0; }

bool SameAlignment(const void* a, const void* b) {
  return reinterpret_cast<uintptr_t>(a) % 16 == reinterpret_cast<uintptr_t>(b) % 16;
}

unsigned GridFor(int64_t work_items, int64_t per_block) {
  return static_cast<unsigned>(std::min(CeilDiv(work_items, per_block), kMaxGridBlocks));
}

// Lanes per row: the largest power of two <= min(32, the row's 16-byte vectors).
template <typename T>
int LanesPerRow(int64_t depth) {
  const int64_t vectors = depth / Elem<T>::kVec;
  int lanes = 1;
  while (lanes < kWarp && 2 * lanes <= vectors) lanes *= 2;
  return lanes;
}

struct SegmentPlan {
  int64_t segments;      // pieces per row
  int64_t segment_length;  // elements per piece (the last one may be shorter)
};

// Only for rows longer than kGroupMaxDepth.
SegmentPlan PlanSegments(int64_t rows, int64_t depth) {
  if (rows >= kSegmentTargetBlocks || depth < 2 * kMinSegmentLength) return {1, depth};
  const int64_t wanted = std::min(CeilDiv(kSegmentTargetBlocks, rows), depth / kMinSegmentLength);
  // Multiples of 16 elements keep each piece's start as aligned as its row's.
  const int64_t segment_length = CeilDiv(CeilDiv(depth, wanted), 16) * 16;
  return {CeilDiv(depth, segment_length), segment_length};
}

template <typename T, int G>
void LaunchShortRows(const T* y_true, const T* y_pred, int64_t rows, int64_t depth, double threshold, T* out,
                     cudaStream_t stream) {
  const unsigned grid = GridFor(rows, (kBlock / G) * kRowBatch);
  if constexpr (G > 1) {  // one lane per row only ever has one vector
    if (depth / Elem<T>::kVec > G) {
      Launch(PerSampleShortRowsKernel<T, G, 2>, grid, kBlock, stream, y_true, y_pred, rows, depth,
             Divisor::Of(depth), threshold, out);
      return;
    }
  }
  Launch(PerSampleShortRowsKernel<T, G, 1>, grid, kBlock, stream, y_true, y_pred, rows, depth,
         Divisor::Of(depth), threshold, out);
}

template <typename T, int G>
void LaunchGroup(const T* y_true, const T* y_pred, int64_t rows, int64_t depth, double threshold,
                 bool vectorize, T* out, cudaStream_t stream) {
  Launch(PerSampleGroupKernel<T, G>, GridFor(rows, kBlock / G), kBlock, stream, y_true, y_pred, rows,
         depth, Divisor::Of(depth), threshold, vectorize, out);
}

}  // namespace

size_t HuberPerSampleWorkspaceBytes(int64_t rows, int64_t depth) {
  if (rows <= 0 || depth <= kGroupMaxDepth) return 0;
  const SegmentPlan plan = PlanSegments(rows, depth);
  return plan.segments > 1 ? static_cast<size_t>(rows * plan.segments) * sizeof(double) : 0;
}

template <typename T>
cudaError_t HuberPerSample(const T* y_true, const T* y_pred, int64_t rows, int64_t depth,
                           double threshold, void* workspace, T* out, cudaStream_t stream) {
  if (rows < 0 || depth < 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (out == nullptr || (depth > 0 && (y_true == nullptr || y_pred == nullptr))) return cudaErrorInvalidValue;
  if (!ElementAligned(y_true) || !ElementAligned(y_pred) || !ElementAligned(out) ||
      !ElementAligned(static_cast<double*>(workspace))) {
    return cudaErrorInvalidValue;
  }
  const bool vectorize = SameAlignment(y_true, y_pred);
  constexpr int V = Elem<T>::kVec;
  if (Aligned16(y_true) && Aligned16(y_pred) && depth % V == 0 && depth > 0 && depth < 2 * kWarp * V) {
    switch (LanesPerRow<T>(depth)) {  // depth / V in [lanes, 2 * lanes)
      case 1: LaunchShortRows<T, 1>(y_true, y_pred, rows, depth, threshold, out, stream); break;
      case 2: LaunchShortRows<T, 2>(y_true, y_pred, rows, depth, threshold, out, stream); break;
      case 4: LaunchShortRows<T, 4>(y_true, y_pred, rows, depth, threshold, out, stream); break;
      case 8: LaunchShortRows<T, 8>(y_true, y_pred, rows, depth, threshold, out, stream); break;
      case 16: LaunchShortRows<T, 16>(y_true, y_pred, rows, depth, threshold, out, stream); break;
      default: LaunchShortRows<T, 32>(y_true, y_pred, rows, depth, threshold, out, stream); break;
    }
    return cudaGetLastError();
  }
  if (depth <= kGroupMaxDepth) {
    switch (LanesPerRow<T>(depth)) {
      case 1: LaunchGroup<T, 1>(y_true, y_pred, rows, depth, threshold, vectorize, out, stream); break;
      case 2: LaunchGroup<T, 2>(y_true, y_pred, rows, depth, threshold, vectorize, out, stream); break;
      case 4: LaunchGroup<T, 4>(y_true, y_pred, rows, depth, threshold, vectorize, out, stream); break;
      case 8: LaunchGroup<T, 8>(y_true, y_pred, rows, depth, threshold, vectorize, out, stream); break;
      case 16: LaunchGroup<T, 16>(y_true, y_pred, rows, depth, threshold, vectorize, out, stream); break;
      default: LaunchGroup<T, 32>(y_true, y_pred, rows, depth, threshold, vectorize, out, stream); break;
    }
    return cudaGetLastError();
  }
  const SegmentPlan plan = PlanSegments(rows, depth);
  double* partials = static_cast<double*>(workspace);
  if (plan.segments > 1 && partials == nullptr) return cudaErrorInvalidValue;
  Launch(PerSampleSegmentKernel<T>, GridFor(rows * plan.segments, 1), kBlock, stream, y_true, y_pred,
         rows, depth, Divisor::Of(depth), plan.segment_length, plan.segments, threshold, vectorize, out,
         partials);
  if (plan.segments > 1) {
    Launch(CombineSegmentsKernel<T>, GridFor(rows, kBlock), kBlock, stream, partials, rows,
           plan.segments, Divisor::Of(depth), out);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t HuberPerSampleGrad(const T* y_true, const T* y_pred, const T* grad, int64_t rows,
                               int64_t depth, double threshold, T* grad_pred, cudaStream_t stream) {
  if (rows < 0 || depth < 0) return cudaErrorInvalidValue;
  const int64_t n = rows * depth;
  if (n == 0) return cudaSuccess;
  if (y_true == nullptr || y_pred == nullptr || grad == nullptr || grad_pred == nullptr ||
      !ElementAligned(y_true) || !ElementAligned(y_pred) || !ElementAligned(grad) ||
      !ElementAligned(grad_pred)) {
    return cudaErrorInvalidValue;
  }
  const int64_t tile = int64_t{kBlock} * kUnroll * Elem<T>::kVec;
  const unsigned grid = GridFor(n, tile);
  if (Aligned16(y_true) && Aligned16(y_pred) && Aligned16(grad_pred)) {
    Launch(PerSampleGradKernel<T, true>, grid, kBlock, stream, y_true, y_pred, grad, n,
           Divisor::Of(depth), threshold, grad_pred);
  } else {
    Launch(PerSampleGradKernel<T, false>, grid, kBlock, stream, y_true, y_pred, grad, n,
           Divisor::Of(depth), threshold, grad_pred);
  }
  return cudaGetLastError();
}

size_t HuberWeightedTotalWorkspaceBytes(int64_t rows, int64_t depth) {
  if (rows <= 0 || depth <= 0) return 0;
  return static_cast<size_t>(std::min(CeilDiv(rows * depth, kMinTile), kMaxPartials)) * 2 * sizeof(double);
}

namespace {

template <typename T, WeightMode kMode>
void LaunchTotalPartials(const T* y_true, const T* y_pred, const T* weights, int64_t n, int64_t depth,
                         double threshold, unsigned grid, double* partials, cudaStream_t stream) {
  const bool vectorized = Aligned16(y_true) && Aligned16(y_pred) &&
                          (kMode != WeightMode::kPerElement || Aligned16(weights));
  if (vectorized) {
    Launch(WeightedTotalPartialsKernel<T, kMode, true>, grid, kBlock, stream, y_true, y_pred, weights,
           n, Divisor::Of(depth), threshold, partials);
  } else {
    Launch(WeightedTotalPartialsKernel<T, kMode, false>, grid, kBlock, stream, y_true, y_pred, weights,
           n, Divisor::Of(depth), threshold, partials);
  }
}

}  // namespace

template <typename T>
cudaError_t HuberWeightedTotal(const T* y_true, const T* y_pred, const T* weights,
                               int64_t weights_size, int64_t rows, int64_t depth, double threshold,
                               void* workspace, double* total, double* count, cudaStream_t stream) {
  if (rows < 0 || depth < 0 || total == nullptr || count == nullptr) return cudaErrorInvalidValue;
  const int64_t n = rows * depth;
  WeightMode mode;
  if (!GetWeightMode(weights_size, rows, depth, &mode)) return cudaErrorInvalidValue;
  double* partials = static_cast<double*>(workspace);
  int64_t num_partials = 0;
  if (n > 0) {
    if (y_true == nullptr || y_pred == nullptr || partials == nullptr ||
        (weights_size != 0 && weights == nullptr) || !ElementAligned(y_true) ||
        !ElementAligned(y_pred) || !ElementAligned(weights) || !ElementAligned(partials) ||
        !ElementAligned(total) || !ElementAligned(count)) {
      return cudaErrorInvalidValue;
    }
    const int64_t tile = int64_t{kBlock} * kUnroll * Elem<T>::kVec;
    num_partials = std::min(CeilDiv(n, tile), kMaxPartials);
    const unsigned grid = static_cast<unsigned>(num_partials);
    if (mode == WeightMode::kNone) {
      LaunchTotalPartials<T, WeightMode::kNone>(y_true, y_pred, weights, n, depth, threshold, grid, partials, stream);
    } else if (mode == WeightMode::kPerElement) {  // also the per-row case when depth == 1
      LaunchTotalPartials<T, WeightMode::kPerElement>(y_true, y_pred, weights, n, depth, threshold, grid, partials, stream);
    } else {
      LaunchTotalPartials<T, WeightMode::kPerRow>(y_true, y_pred, weights, n, depth, threshold, grid, partials, stream);
    }
  }
  Launch(CombineTotalsKernel, 1, kCombineBlock, stream, partials, num_partials, total, count);
  return cudaGetLastError();
}

#define FASTCUSTOM_INSTANTIATE_HUBER(T)                                                          \
  template cudaError_t HuberPerSample<T>(const T*, const T*, int64_t, int64_t, double, void*,   \
                                         T*, cudaStream_t);                                      \
  template cudaError_t HuberPerSampleGrad<T>(const T*, const T*, const T*, int64_t, int64_t,    \
                                             double, T*, cudaStream_t);                          \
  template cudaError_t HuberWeightedTotal<T>(const T*, const T*, const T*, int64_t, int64_t,    \
                                             int64_t, double, void*, double*, double*,           \
                                             cudaStream_t);

FASTCUSTOM_INSTANTIATE_HUBER(__half)
FASTCUSTOM_INSTANTIATE_HUBER(__nv_bfloat16)
FASTCUSTOM_INSTANTIATE_HUBER(float)
FASTCUSTOM_INSTANTIATE_HUBER(double)
#undef FASTCUSTOM_INSTANTIATE_HUBER

}  // namespace gpu
}  // namespace fastcustom
