// The CPU kernels of huber_cpu.h, compiled once per variant (huber_cpu_variants.h)
// into namespace fastcustom::cpu::FASTCUSTOM_CPU_VARIANT.
//
//   h and dh/dy_pred as stated in ../huber_math.h (t = threshold)
//   loss[r] = (1/D) sum_j h[r, j]
//   grad_pred[r, j] = grad[r] / D * clamp(y_pred - y_true, -threshold, threshold)[r, j]
//   total = sum w h,  count = sum w   (float64)
//   mean = total / (N D) and grad_pred = clamp(...) / (N D) in one pass (HuberMeanWithGrad)
//
// One summation order, whatever the thread count and instruction set. A chunk of
// n <= kChunk consecutive elements is summed by W = min(kLanes, bit_ceil(n)) lanes
// -- lane l adds elements l, l + kLanes, ... in turn, in Acc (float; double for
// double inputs), moving its float sum into a double every kFlush elements --
// whose double values are then added pairwise in halves (lane i += lane i + w for
// w = W/2, ..., 1) and rounded once to Acc. A row of D <= kChunk elements is one
// chunk (rows of D <= kLanes are reduced many at a time by vector shuffles, in
// that same order); longer rows, and the flat totals, add their chunk sums in
// double in increasing order. The parallel blocks depend only on the shape; each
// writes its own outputs or partial sums, and partial sums are added in block
// order by one thread. kLanes is fixed (one 512-bit vector's worth) and the
// compiler may not reassociate (no -ffast-math, -ffp-contract=off): the AVX2
// variant computes the same operations in the same order on half-width vectors.
//
// A float chunk or row sum that is not finite (an inf or NaN input, or a value
// or sum beyond float's range) is recomputed in double, from the inputs and the
// double threshold, so overflow in float never changes the answer (the rule of
// fastcustom.reference.huber); finite sums, the common case, cost one check.
// Gradients likewise: a float y_pred - y_true that overflows is recomputed in double
// when the threshold is beyond float's range (below it, the clamp gives +-t exactly).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu/huber_cpu.h"
#include "cpu/huber_cpu_variants.h"
#include "huber_math.h"

#if !defined(FASTCUSTOM_CPU_VARIANT)
#error "compile with -DFASTCUSTOM_CPU_VARIANT=<avx2|avx512|native|generic> (fastcustom/build_ops.py)"
#endif

FASTCUSTOM_CPU_DECLARE_VARIANT(FASTCUSTOM_CPU_VARIANT)

// Everything below (not the standard headers above) gets the variant's
// instruction sets. In C++ the pragma does not define __AVX512F__ & co. for the
// preprocessor: FASTCUSTOM_CPU_AVX512 says what it added.
#if defined(FASTCUSTOM_CPU_AVX512)
#define FASTCUSTOM_CPU_PRAGMA(text) _Pragma(#text)
#define FASTCUSTOM_CPU_TARGET(isa) FASTCUSTOM_CPU_PRAGMA(GCC target(isa))
FASTCUSTOM_CPU_TARGET(FASTCUSTOM_CPU_AVX512_TARGET)
#endif

namespace fastcustom {
namespace cpu {
namespace FASTCUSTOM_CPU_VARIANT {
namespace {

constexpr int64_t kChunk = 4096;         // elements summed in Acc before going to double
constexpr int64_t kBlock = 16 * kChunk;  // elements in one unit of parallel work

template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename A>
constexpr int kLanes = 64 / sizeof(A);  // the chunk sums' lanes: one 512-bit vector

// The machine's own vectors (256-bit without AVX-512, where 512-bit shuffles are
// emulated). may_alias: a buffer of A is read and written as vectors in place.
#if defined(FASTCUSTOM_CPU_AVX512) || defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
typedef float FloatVec __attribute__((vector_size(kVectorBytes), may_alias));
typedef double DoubleVec __attribute__((vector_size(kVectorBytes), may_alias));
template <typename A>
using Vec = std::conditional_t<std::is_same_v<A, double>, DoubleVec, FloatVec>;
template <typename A>
constexpr int kVecLanes = kVectorBytes / sizeof(A);

// ----------------------------------------------------------------------------
// Element types: Half and BFloat16 to and from float, as Eigen converts them
// (the TF kernels' results are the bits Eigen::half and Eigen::bfloat16 gave).
// ----------------------------------------------------------------------------
#if defined(__F16C__)
float ToFloat(Half h) { return _cvtsh_ss(h.bits); }
Half ToHalf(float f) { return Half{static_cast<uint16_t>(_cvtss_sh(f, 0))}; }
#else
// Eigen's conversions without F16C: the same IEEE rounding, every NaN as 0x7e00 | sign.
float ToFloat(Half h) {
  constexpr uint32_t kShiftedExponent = 0x7c00u << 13;
  uint32_t bits = (h.bits & 0x7fffu) << 13;
  const uint32_t exponent = kShiftedExponent & bits;
  bits += (127 - 15) << 23;
  if (exponent == kShiftedExponent) {  // inf or NaN
    bits += (128 - 16) << 23;
  } else if (exponent == 0) {  // zero or subnormal: renormalized
    bits += 1 << 23;
    float magic, value;
    const uint32_t magic_bits = 113u << 23;
    std::memcpy(&magic, &magic_bits, 4);
    std::memcpy(&value, &bits, 4);
    value -= magic;
    std::memcpy(&bits, &value, 4);
  }
  bits |= static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

Half ToHalf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint16_t out;
  if (bits >= (127u + 16) << 23) {  // inf or NaN (or beyond half's range: inf)
    out = bits > (255u << 23) ? 0x7e00 : 0x7c00;
  } else if (bits < 113u << 23) {  // subnormal or zero: aligned by a float add
    const uint32_t magic_bits = ((127u - 15) + (23 - 10) + 1) << 23;
    float magic, value;
    std::memcpy(&magic, &magic_bits, 4);
    std::memcpy(&value, &bits, 4);
    value += magic;
    std::memcpy(&bits, &value, 4);
    out = static_cast<uint16_t>(bits - magic_bits);
  } else {
    const uint32_t mantissa_odd = (bits >> 13) & 1;
    bits += 0xc8000fffu;
    bits += mantissa_odd;
    out = static_cast<uint16_t>(bits >> 13);
  }
  return Half{static_cast<uint16_t>(out | (sign >> 16))};
}
#endif

float ToFloat(BFloat16 b) {
  const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

BFloat16 ToBFloat16(float f) {
  if (std::isnan(f)) return BFloat16{static_cast<uint16_t>(std::signbit(f) ? 0xffc0 : 0x7fc0)};
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1);  // round to nearest even
  return BFloat16{static_cast<uint16_t>(bits >> 16)};
}

template <typename T>
constexpr bool kIs16Bit = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

// x as To: 16-bit values through float (a double rounded to float first, as
// Eigen's constructors do), float and double as static_cast.
template <typename To, typename From>
To Cast(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (kIs16Bit<From>) {
    return static_cast<To>(ToFloat(x));
  } else if constexpr (std::is_same_v<To, Half>) {
    return ToHalf(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, BFloat16>) {
    return ToBFloat16(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

template <typename T>
double ToDouble(T x) {
  return static_cast<double>(Cast<Acc<T>>(x));
}

// The n values at `src` as A (`src` itself when T is A), and back.
template <typename A, typename T>
const A* Widen(const T* src, int64_t n, A* buf) {
  if constexpr (std::is_same_v<A, T>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = Cast<A>(src[i]);
    return buf;
  }
}

template <typename T, typename A>
void Narrow(const A* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Cast<T>(src[i]);
}

#if defined(__F16C__)
// vcvtph2ps / vcvtps2ph, eight at a time: the same conversions as ToFloat / ToHalf.
template <>
const float* Widen<float, Half>(const Half* src, int64_t n, float* buf) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) buf[i] = ToFloat(src[i]);
  return buf;
}

template <>
void Narrow<Half, float>(const float* src, int64_t n, Half* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = ToHalf(src[i]);
}
#endif

// Room for kChunk widened elements of each input; none when T is Acc<T>.
template <typename T, bool kSame = std::is_same_v<T, Acc<T>>>
struct Tile {
  alignas(64) Acc<T> y_true[kChunk];
  alignas(64) Acc<T> y_pred[kChunk];
  alignas(64) Acc<T> other[kChunk];  // weights or results
};

template <typename T>
struct Tile<T, true> {
  T* y_true = nullptr;
  T* y_pred = nullptr;
  T* other = nullptr;
};

// ----------------------------------------------------------------------------
// Sums over one chunk (n <= kChunk), in the order described at the top.
// ----------------------------------------------------------------------------
int64_t BitCeil(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The lanes summing a chunk of n elements: kLanes, or bit_ceil(n) for short chunks.
template <typename A>
int LaneCount(int64_t n) {
  return static_cast<int>(std::min<int64_t>(kLanes<A>, BitCeil(n)));
}

// lane[0] + ... + lane[width - 1] (width a power of two), added pairwise in halves.
template <typename A>
A HalvingSum(A* lane, int width) {
  for (int half = width / 2; half > 0; half /= 2) {
    for (int l = 0; l < half; ++l) lane[l] += lane[l + half];
  }
  return lane[0];
}

// Float lanes add at most kFlush values each before their sums move into double
// lanes, so a chunk's float rounding stays near (kFlush + 3) 2^-24 of its sum of
// |values| at any length; double inputs add in double lanes throughout. A chunk is
// summed in segments of kSegment elements, each segment's lanes then added to the
// double lanes, which are added pairwise in halves and rounded once to A.
constexpr int64_t kFlush = 8;
template <typename A>
constexpr int64_t kSegment = std::is_same_v<A, double> ? kChunk : kFlush * kLanes<A>;

template <typename A>
void AddLanes(const A* part, double* whole) {
  for (int l = 0; l < kLanes<A>; ++l) whole[l] += static_cast<double>(part[l]);
}

// The sum of h over one chunk; with kGrad, grad[i] = scale * dh/dy_pred[i] written in the
// same pass (HuberMeanWithGrad).
template <typename A, bool kGrad = false>
A ChunkSum(const A* t, const A* p, int64_t n, A threshold, A scale = A(0), A* grad = nullptr) {
  constexpr int kL = kLanes<A>;
  double whole[kL] = {};
  for (int64_t j = 0; j < n;) {
    const int64_t end = std::min(n, j + kSegment<A>);
    A lane[kL] = {};
    for (; j + kL <= end; j += kL) {
      for (int l = 0; l < kL; ++l) {
        lane[l] += HuberValue(t[j + l], p[j + l], threshold);
        if constexpr (kGrad) grad[j + l] = scale * HuberGradPred(t[j + l], p[j + l], threshold);
      }
    }
    for (int l = 0; j < end; ++l, ++j) {
      lane[l] += HuberValue(t[j], p[j], threshold);
      if constexpr (kGrad) grad[j] = scale * HuberGradPred(t[j], p[j], threshold);
    }
    AddLanes(lane, whole);
  }
  return static_cast<A>(HalvingSum(whole, LaneCount<A>(n)));
}

// (sum w h, sum w) over one chunk.
template <typename A>
std::pair<A, A> WeightedChunkSum(const A* t, const A* p, const A* w, int64_t n, A threshold) {
  constexpr int kL = kLanes<A>;
  double whole_total[kL] = {};
  double whole_count[kL] = {};
  for (int64_t j = 0; j < n;) {
    const int64_t end = std::min(n, j + kSegment<A>);
    A total[kL] = {};
    A count[kL] = {};
    for (; j + kL <= end; j += kL) {
      for (int l = 0; l < kL; ++l) {
        total[l] += w[j + l] * HuberValue(t[j + l], p[j + l], threshold);
        count[l] += w[j + l];
      }
    }
    for (int l = 0; j < end; ++l, ++j) {
      total[l] += w[j] * HuberValue(t[j], p[j], threshold);
      count[l] += w[j];
    }
    AddLanes(total, whole_total);
    AddLanes(count, whole_count);
  }
  const int width = LaneCount<A>(n);
  return {static_cast<A>(HalvingSum(whole_total, width)),
          static_cast<A>(HalvingSum(whole_count, width))};
}

// The same sums in double, in order: for chunks whose float sum is not finite.
template <typename T>
double ChunkSumInDouble(const T* t, const T* p, int64_t n, double threshold) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += HuberValue(ToDouble(t[i]), ToDouble(p[i]), threshold);
  return sum;
}

template <typename T>
std::pair<double, double> WeightedChunkSumInDouble(const T* t, const T* p, const T* w,
                                                   int64_t n, double threshold) {
  double total = 0.0, count = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    total += ToDouble(w[i]) * HuberValue(ToDouble(t[i]), ToDouble(p[i]), threshold);
    count += ToDouble(w[i]);
  }
  return {total, count};
}

// Whether x[0..n) are all finite: x - x is 0 unless x is inf or NaN, and NaN
// survives the adds (in vectors: a scalar loop here cost 5% of HuberPerSample).
template <typename A>
bool AllFinite(const A* x, int64_t n) {
  Vec<A> nan_if_not = {};
  int64_t i = 0;
  for (; i + kVecLanes<A> <= n; i += kVecLanes<A>) {
    const Vec<A> v = *reinterpret_cast<const Vec<A>*>(x + i);
    nan_if_not += v - v;
  }
  A rest = A(0);
  for (; i < n; ++i) rest += x[i] - x[i];
  for (int l = 0; l < kVecLanes<A>; ++l) rest += nan_if_not[l];
  return rest == A(0);
}

// A float sum as double, or (when it is not finite) `recompute()` in double.
template <typename A, typename Fn>
double FiniteOrInDouble(A sum, const Fn& recompute) {
  if constexpr (std::is_same_v<A, double>) {
    return sum;
  } else {
    return std::isfinite(sum) ? static_cast<double>(sum) : recompute();
  }
}

// ----------------------------------------------------------------------------
// Rows of D <= kLanes elements: the same halving sums, many rows at a time.
// Each row is padded with zeros to P = bit_ceil(D) lanes; one step adds the
// low and high halves of every P-lane segment of two vectors, so after
// log2(P) steps each lane holds the sum of one row, rows in order. A row wider
// than the machine's vector (P = 2 vectors) starts with its two halves added
// lane by lane. The tree is P's, not the vector's: the same bits at any width.
// ----------------------------------------------------------------------------

// Source lane (of a: 0..kL-1, of b: kL..2kL-1) of output lane k for segments of kS lanes.
template <int kL, int kS, bool kHigh>
constexpr int HalfLane(int k) {
  const int from_b = k >= kL / 2 ? kL : 0;
  const int q = k % (kL / 2);
  return from_b + (q / (kS / 2)) * kS + q % (kS / 2) + (kHigh ? kS / 2 : 0);
}

template <int kS, bool kHigh, typename V, int... k>
inline V Halves(V a, V b, std::integer_sequence<int, k...>) {
  return __builtin_shufflevector(a, b, HalfLane<sizeof...(k), kS, kHigh>(k)...);
}

// v[0..count) hold rows of kS lanes; halve until every lane is one row's sum.
template <typename A, int kS>
inline void HalveRows(Vec<A>* v, int count) {
  static_assert(kS <= 2 * kVecLanes<A>, "a row spans at most two vectors");
  if constexpr (kS == 2 * kVecLanes<A>) {
    for (int j = 0; j < count / 2; ++j) v[j] = v[2 * j] + v[2 * j + 1];
    HalveRows<A, kS / 2>(v, count / 2);
  } else if constexpr (kS > 1) {
    constexpr auto lanes = std::make_integer_sequence<int, kVecLanes<A>>();
    for (int j = 0; j < count / 2; ++j) {
      v[j] = Halves<kS, false>(v[2 * j], v[2 * j + 1], lanes) +
             Halves<kS, true>(v[2 * j], v[2 * j + 1], lanes);
    }
    HalveRows<A, kS / 2>(v, count / 2);
  }
}

// h of n rows of depth <= kP, each padded with zeros to kP values.
template <typename A, int kP>
inline void PaddedRowValues(const A* t, const A* p, int64_t n, int64_t depth, A threshold, A* h) {
  if (depth == kP) {
    for (int64_t i = 0; i < n * kP; ++i) h[i] = HuberValue(t[i], p[i], threshold);
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < kP; ++j) {
      const int64_t i = r * depth + j;
      h[r * kP + j] = j < depth ? HuberValue(t[i], p[i], threshold) : A(0);
    }
  }
}

// sums[r] = sum_j h[r, j] for `rows` rows of depth <= kLanes; kP = bit_ceil(depth).
template <typename A, int kP>
void SmallRowSums(const A* t, const A* p, int64_t rows, int64_t depth, A threshold, A* sums) {
  constexpr int kL = kLanes<A>;
  constexpr int64_t kBatchRows = kL * kL / kP;  // kL vectors of rows
  alignas(64) A h[kL * kL];
  for (int64_t r = 0; r < rows; r += kBatchRows) {
    const int64_t n = std::min(kBatchRows, rows - r);
    PaddedRowValues<A, kP>(t + r * depth, p + r * depth, n, depth, threshold, h);
    if (n == kBatchRows) {
      Vec<A>* v = reinterpret_cast<Vec<A>*>(h);
      HalveRows<A, kP>(v, kL * kL / kVecLanes<A>);
      std::memcpy(sums + r, v, kBatchRows * sizeof(A));
    } else {
      for (int64_t i = 0; i < n; ++i) sums[r + i] = HalvingSum(h + i * kP, kP);
    }
  }
}

template <typename A>
void SmallRowSums(const A* t, const A* p, int64_t rows, int64_t depth, A threshold, A* sums) {
  switch (BitCeil(depth)) {
    case 1: return SmallRowSums<A, 1>(t, p, rows, depth, threshold, sums);
    case 2: return SmallRowSums<A, 2>(t, p, rows, depth, threshold, sums);
    case 4: return SmallRowSums<A, 4>(t, p, rows, depth, threshold, sums);
    case 8: return SmallRowSums<A, 8>(t, p, rows, depth, threshold, sums);
    default:
      if constexpr (kLanes<A> == 16) return SmallRowSums<A, 16>(t, p, rows, depth, threshold, sums);
  }
}

// ----------------------------------------------------------------------------
// Parallel blocks
// ----------------------------------------------------------------------------
int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs block_fn(b) for every b in [0, blocks), each about `elements` elements.
template <typename Fn>
void ForEachBlock(const ParallelFor& parallel_for, int64_t blocks, int64_t elements,
                  const Fn& block_fn) {
  parallel_for(blocks, elements, [&block_fn](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) block_fn(b);
  });
}

// Calls rows_fn(r, n, sums): sums[i] = sum_j h[r + i, j] (Acc, or double when a float
// sum was not finite and its row was recomputed), for consecutive runs of the rows in
// [r0, r1), in order; 0 < D <= kChunk.
template <typename T, typename RowsFn>
void ShortRowSums(const T* t, const T* p, int64_t r0, int64_t r1, int64_t depth,
                  Acc<T> threshold, double threshold64, const RowsFn& rows_fn) {
  using A = Acc<T>;
  Tile<T> tile;
  alignas(64) A sums[kChunk];
  double row_sums[kChunk];
  const bool small = depth <= kLanes<A>;
  const int64_t tile_rows = kChunk / (small ? BitCeil(depth) : depth);
  for (int64_t r = r0; r < r1; r += tile_rows) {
    const int64_t rows = std::min(tile_rows, r1 - r);
    const A* tt = Widen(t + r * depth, rows * depth, tile.y_true);
    const A* pp = Widen(p + r * depth, rows * depth, tile.y_pred);
    if (small) {
      SmallRowSums(tt, pp, rows, depth, threshold, sums);
    } else {
      for (int64_t i = 0; i < rows; ++i) {
        sums[i] = ChunkSum(tt + i * depth, pp + i * depth, depth, threshold);
      }
    }
    if (AllFinite(sums, rows)) {
      rows_fn(r, rows, static_cast<const A*>(sums));
      continue;
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t offset = (r + i) * depth;
      row_sums[i] = FiniteOrInDouble(sums[i], [&] {
        return ChunkSumInDouble(t + offset, p + offset, depth, threshold64);
      });
    }
    rows_fn(r, rows, static_cast<const double*>(row_sums));
  }
}

// sum_j h[r, j] for every row, D > kChunk: chunk sums in parallel, then rows in order.
template <typename T>
std::vector<double> LongRowSums(const ParallelFor& parallel_for, const T* t, const T* p,
                                int64_t rows, int64_t depth, Acc<T> threshold,
                                double threshold64) {
  const int64_t chunks_per_row = CeilDiv(depth, kChunk);
  const int64_t chunks = rows * chunks_per_row;
  const int64_t chunks_per_block = kBlock / kChunk;
  std::vector<double> chunk_sums(chunks);
  ForEachBlock(parallel_for, CeilDiv(chunks, chunks_per_block), kBlock, [&](int64_t b) {
    Tile<T> tile;
    const int64_t end = std::min(chunks, (b + 1) * chunks_per_block);
    for (int64_t c = b * chunks_per_block; c < end; ++c) {
      const int64_t row = c / chunks_per_row;
      const int64_t j = (c % chunks_per_row) * kChunk;
      const int64_t n = std::min(kChunk, depth - j);
      const int64_t offset = row * depth + j;
      chunk_sums[c] = FiniteOrInDouble(
          ChunkSum(Widen(t + offset, n, tile.y_true), Widen(p + offset, n, tile.y_pred), n,
                   threshold),
          [&] { return ChunkSumInDouble(t + offset, p + offset, n, threshold64); });
    }
  });
  std::vector<double> row_sums(rows, 0.0);
  for (int64_t c = 0; c < chunks; ++c) row_sums[c / chunks_per_row] += chunk_sums[c];
  return row_sums;
}

// A float y_pred - y_true beyond float's range clamps to +-t, exact unless t is beyond
// float's range too (t > FLT_MAX as a double): only then are the n gradients
// scale * clamp(y_pred - y_true) whose float difference overflowed recomputed in double.
template <typename A>
void RecomputeOverflowedGrad(const A* t, const A* p, int64_t n, double scale,
                             double threshold64, A* grad) {
  if constexpr (std::is_same_v<A, float>) {
    if (!(threshold64 > std::numeric_limits<float>::max())) return;
    for (int64_t j = 0; j < n; ++j) {
      if (std::isinf(p[j] - t[j]) && std::isfinite(p[j]) && std::isfinite(t[j])) {
        const double e = static_cast<double>(p[j]) - static_cast<double>(t[j]);
        grad[j] = static_cast<float>(scale * std::clamp(e, -threshold64, threshold64));
      }
    }
  }
}

// res[i] = grad[row] / D * HuberGradPred(t[i], p[i]) for the n elements from flat
// index e0, one row segment at a time, for every D.
template <typename T>
void GradChunk(const Acc<T>* t, const Acc<T>* p, const T* g, int64_t e0, int64_t n,
               int64_t depth, Acc<T> threshold, double threshold64, Acc<T>* res) {
  const double d = static_cast<double>(depth);
  int64_t row = e0 / depth;
  for (int64_t i = 0, end; i < n; i = end, ++row) {
    end = std::min(n, (row + 1) * depth - e0);
    const double scale64 = ToDouble(g[row]) / d;
    const auto scale = static_cast<Acc<T>>(scale64);
    for (int64_t j = i; j < end; ++j) res[j] = scale * HuberGradPred(t[j], p[j], threshold);
    RecomputeOverflowedGrad(t + i, p + i, end - i, scale64, threshold64, res + i);
  }
}

// Partial sums (total, count) of parallel blocks, added in block order.
using Partials = std::vector<std::pair<double, double>>;

std::pair<double, double> SumInOrder(const Partials& partials) {
  double total = 0.0, count = 0.0;
  for (const auto& [block_total, block_count] : partials) {
    total += block_total;
    count += block_count;
  }
  return {total, count};
}

// Unweighted (w == nullptr: count = size) or per-element totals over the flat inputs.
template <typename T>
std::pair<double, double> FlatTotals(const ParallelFor& parallel_for, const T* t, const T* p,
                                     const T* w, int64_t size, Acc<T> threshold,
                                     double threshold64) {
  Partials partials(CeilDiv(size, kBlock));
  ForEachBlock(parallel_for, partials.size(), kBlock, [&](int64_t b) {
    Tile<T> tile;
    double block_total = 0.0, block_count = 0.0;
    const int64_t block_end = std::min(size, (b + 1) * kBlock);
    for (int64_t e0 = b * kBlock; e0 < block_end; e0 += kChunk) {
      const int64_t n = std::min(kChunk, block_end - e0);
      const Acc<T>* tt = Widen(t + e0, n, tile.y_true);
      const Acc<T>* pp = Widen(p + e0, n, tile.y_pred);
      if (w == nullptr) {
        block_total += FiniteOrInDouble(ChunkSum(tt, pp, n, threshold), [&] {
          return ChunkSumInDouble(t + e0, p + e0, n, threshold64);
        });
      } else {
        const auto [chunk_total, chunk_count] =
            WeightedChunkSum(tt, pp, Widen(w + e0, n, tile.other), n, threshold);
        if (std::isfinite(chunk_total) && std::isfinite(chunk_count)) {
          block_total += static_cast<double>(chunk_total);
          block_count += static_cast<double>(chunk_count);
        } else {
          const auto [total64, count64] = WeightedChunkSumInDouble(t + e0, p + e0, w + e0, n,
                                                                   threshold64);
          block_total += total64;
          block_count += count64;
        }
      }
    }
    partials[b] = {block_total, block_count};
  });
  const auto [total, count] = SumInOrder(partials);
  return {total, w == nullptr ? static_cast<double>(size) : count};
}

// Totals with one weight per row: sum_r w[r] sum_j h[r, j], D * sum_r w[r].
template <typename T>
std::pair<double, double> PerRowTotals(const ParallelFor& parallel_for, const T* t, const T* p,
                                       const T* w, int64_t rows, int64_t depth, Acc<T> threshold,
                                       double threshold64) {
  if (depth == 0) return {0.0, 0.0};
  double total = 0.0, count = 0.0;
  if (depth > kChunk) {
    const std::vector<double> sums =
        LongRowSums(parallel_for, t, p, rows, depth, threshold, threshold64);
    for (int64_t r = 0; r < rows; ++r) {
      total += ToDouble(w[r]) * sums[r];
      count += ToDouble(w[r]);
    }
  } else {
    const int64_t rows_per_block = std::max<int64_t>(1, kBlock / depth);
    Partials partials(CeilDiv(rows, rows_per_block));
    ForEachBlock(parallel_for, partials.size(), rows_per_block * depth, [&](int64_t b) {
      const int64_t r0 = b * rows_per_block, r1 = std::min(rows, r0 + rows_per_block);
      double block_total = 0.0, block_count = 0.0;
      ShortRowSums(t, p, r0, r1, depth, threshold, threshold64, [&](int64_t r, int64_t n,
                                                            const auto* sums) {
        for (int64_t i = 0; i < n; ++i) {
          block_total += ToDouble(w[r + i]) * static_cast<double>(sums[i]);
          block_count += ToDouble(w[r + i]);
        }
      });
      partials[b] = {block_total, block_count};
    });
    std::tie(total, count) = SumInOrder(partials);
  }
  return {total, count * static_cast<double>(depth)};
}

}  // namespace

// ----------------------------------------------------------------------------
// The entry points (huber_cpu.h)
// ----------------------------------------------------------------------------
template <typename T>
void HuberPerSample(const ParallelFor& parallel_for, const T* t, const T* p, int64_t rows,
                    int64_t depth, double threshold64, T* out) {
  if (rows == 0) return;
  if (depth == 0) {  // a mean over nothing: 0/0
    std::fill(out, out + rows, Cast<T>(std::numeric_limits<float>::quiet_NaN()));
    return;
  }
  const auto threshold = static_cast<Acc<T>>(threshold64);
  if (depth > kChunk) {
    const std::vector<double> sums =
        LongRowSums(parallel_for, t, p, rows, depth, threshold, threshold64);
    const double d = static_cast<double>(depth);
    for (int64_t r = 0; r < rows; ++r) out[r] = Cast<T>(sums[r] / d);
    return;
  }
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / depth);
  ForEachBlock(parallel_for, CeilDiv(rows, rows_per_block), rows_per_block * depth,
               [&](int64_t b) {
    const int64_t r0 = b * rows_per_block, r1 = std::min(rows, r0 + rows_per_block);
    ShortRowSums(t, p, r0, r1, depth, threshold, threshold64,
                 [out, depth](int64_t r, int64_t n, const auto* sums) {
                   // In the sums' type: float's quotient is correctly rounded, as
                   // is double's rounded to float (53 >= 2 * 24 + 2): same bits.
                   using S = std::remove_cv_t<std::remove_pointer_t<decltype(sums)>>;
                   const auto d = static_cast<S>(depth);  // exact: D <= kChunk
                   for (int64_t i = 0; i < n; ++i) out[r + i] = Cast<T>(sums[i] / d);
                 });
  });
}

template <typename T>
void HuberPerSampleGrad(const ParallelFor& parallel_for, const T* t, const T* p, const T* g,
                        int64_t rows, int64_t depth, double threshold64, T* out) {
  const int64_t size = rows * depth;
  if (size == 0) return;
  const auto threshold = static_cast<Acc<T>>(threshold64);
  ForEachBlock(parallel_for, CeilDiv(size, kBlock), kBlock, [&](int64_t b) {
    Tile<T> tile;
    const int64_t block_end = std::min(size, (b + 1) * kBlock);
    for (int64_t e0 = b * kBlock; e0 < block_end; e0 += kChunk) {
      const int64_t n = std::min(kChunk, block_end - e0);
      const Acc<T>* tt = Widen(t + e0, n, tile.y_true);
      const Acc<T>* pp = Widen(p + e0, n, tile.y_pred);
      Acc<T>* res = tile.other;
      if constexpr (std::is_same_v<T, Acc<T>>) res = out + e0;
      GradChunk(tt, pp, g, e0, n, depth, threshold, threshold64, res);
      if constexpr (!std::is_same_v<T, Acc<T>>) Narrow(res, n, out + e0);
    }
  });
}

template <typename T>
void HuberWeightedTotal(const ParallelFor& parallel_for, const T* t, const T* p, const T* w,
                        WeightMode mode, int64_t rows, int64_t depth, double threshold64,
                        double* total, double* count) {
  const auto threshold = static_cast<Acc<T>>(threshold64);
  std::tie(*total, *count) =
      mode == WeightMode::kPerRow
          ? PerRowTotals(parallel_for, t, p, w, rows, depth, threshold, threshold64)
          : FlatTotals(parallel_for, t, p, mode == WeightMode::kNone ? nullptr : w, rows * depth,
                       threshold, threshold64);
}

// The chunks and their order are HuberWeightedTotal's (no weights), so
// mean = total / count to the bit.
template <typename T>
T HuberMeanWithGrad(const ParallelFor& parallel_for, const T* t, const T* p, int64_t rows,
                    int64_t depth, double threshold64, T* g) {
  static_assert(std::is_same_v<T, Acc<T>>, "float and double only: no widening");
  const int64_t size = rows * depth;
  if (size == 0) {  // Keras's divide_no_nan over no sample; per-sample means of nothing: NaN
    return rows == 0 ? T(0) : std::numeric_limits<T>::quiet_NaN();
  }
  const auto threshold = static_cast<T>(threshold64);
  const auto scale = static_cast<T>(1.0 / static_cast<double>(size));
  Partials partials(CeilDiv(size, kBlock));
  ForEachBlock(parallel_for, partials.size(), kBlock, [&](int64_t b) {
    double block_total = 0.0;
    const int64_t block_end = std::min(size, (b + 1) * kBlock);
    for (int64_t e0 = b * kBlock; e0 < block_end; e0 += kChunk) {
      const int64_t n = std::min(kChunk, block_end - e0);
      block_total += FiniteOrInDouble(
          ChunkSum<T, true>(t + e0, p + e0, n, threshold, scale, g + e0),
          [&] { return ChunkSumInDouble(t + e0, p + e0, n, threshold64); });
      RecomputeOverflowedGrad(t + e0, p + e0, n, 1.0 / static_cast<double>(size), threshold64,
                              g + e0);
    }
    partials[b] = {block_total, 0.0};
  });
  return static_cast<T>(SumInOrder(partials).first / static_cast<double>(size));
}

FASTCUSTOM_CPU_INSTANTIATE_KERNELS()

}  // namespace FASTCUSTOM_CPU_VARIANT
}  // namespace cpu
}  // namespace fastcustom
