// CUDA fake-quantization kernels (see cuda_kernels.h): the semantics of the CPU reference
// (kernels/reference/fake_quant_reference.cc) and of the drivers (runtime/fake_quant_driver.cc) on device
// pointers.
//
// Layout: a contiguous [outer, channels, inner] float32 array; element i uses parameter (i / inner) % channels;
// per-tensor quantization is channels == 1 (then the whole tensor is one row).
//
// Exactness: every float operation of the reference is spelled out as an IEEE round-to-nearest intrinsic
// (__fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn), which are never contracted into FMA and never replaced by
// approximate division, whatever --fmad / -prec-div say (the build passes --fmad=false anyway). Subnormals
// must be kept (nvcc's default -ftz=false; -use_fast_math would flush them and break parity).
// Rounding: kHalfToEven is rintf (round-to-nearest-even, like std::nearbyint under FE_TONEAREST);
// kHalfAwayFromZero is roundf (like std::round). fminf/fmaxf return the non-NaN operand, as std::fmin/fmax do,
// and NaN inputs are then overridden exactly where the reference does. Float outputs are therefore
// bit-identical to the reference, except possibly the sign of a zero output for x = +-0 with a scale of +-0
// (fmax(+0, -0) may pick either zero on either side).
//
// Reductions: abs_max_channels is exact (max is order-independent; a NaN anywhere in a channel gives the
// canonical NaN 0x7fc00000). The grad_scale / grad_zero_point sums add the float products g * c in double,
// in an order that differs from the CPU, so they match the reference up to double rounding only.
//
// Launches use the current device and the caller's stream; nothing is allocated and nothing synchronises.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "pyslim/cuda_kernels.h"

namespace pyslim {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
// A channel row of at least this many elements is reduced by a warp walking the row; shorter rows (in
// practice per-channel along the last axis, inner == 1) are reduced down the columns of [outer, channels*inner].
constexpr int64_t kRowReductionMinInner = 32;
// Each warp of the row reduction handles at least this many elements per atomic.
constexpr int64_t kMinRowChunk = 256;
// Each thread of the column reduction walks at least this many rows before its block flushes.
constexpr int64_t kMinRowsPerSlice = 16;
constexpr unsigned kCanonicalNanBits = 0x7fc00000u;  // above +Inf (0x7f800000) as an unsigned integer

// ---------------------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------------------

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("pyslim CUDA ") + what + ": " + cudaGetErrorString(err));
  }
}

// Launch errors (bad configuration, no device, no kernel image for this architecture) surface here;
// errors during execution surface at the caller's next synchronisation.
void check_launch(const char* what) { check(cudaGetLastError(), what); }

cudaStream_t as_stream(intptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of kThreads that fill the current device once (2048 resident threads per SM on sm_80/sm_90).
int64_t resident_blocks() {
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // the launch that follows reports the real problem
    sms = 16;
  }
  return static_cast<int64_t>(sms) * (2048 / kThreads);
}

// The layout as the kernels walk it: per-tensor is one row of numel elements (as in the CPU driver).
struct Shape {
  int64_t numel;
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

Shape shape_of(const ChannelLayout& layout) {
  Shape s{layout.numel(), layout.outer, layout.channels, layout.inner};
  if (s.channels == 1) {
    s.outer = 1;
    s.inner = s.numel;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Device math: the reference's float operations, in its order
// ---------------------------------------------------------------------------------------------------------

__device__ __forceinline__ float round_value(float v, RoundMode mode) {
  return mode == RoundMode::kHalfToEven ? rintf(v) : roundf(v);
}

// paddle_inverse of kernels.h.
__device__ __forceinline__ float paddle_inverse_rn(float s) {
  return s <= 1e-30f ? __fdiv_rn(1.0f, __fadd_rn(s, 1e-6f)) : __fdiv_rn(1.0f, s);
}

__device__ __forceinline__ float symmetric_value(float v, float s, float fbin, RoundMode round) {
  const float m = __fmul_rn(fbin, paddle_inverse_rn(s));
  const float clipped = fminf(fmaxf(v, -s), s);
  const float q = round_value(__fmul_rn(clipped, m), round);
  return isnan(v) ? v : __fdiv_rn(__fmul_rn(q, s), fbin);
}

__device__ __forceinline__ bool symmetric_keep(float v, float s, GradMask mask) {
  bool keep = true;
  if (mask == GradMask::kInclusive) keep = fabsf(v) <= s;
  if (mask == GradMask::kStrict) keep = fabsf(v) < s;
  return keep;
}

__device__ __forceinline__ float symmetric_grad_x(float v, float g, float s, GradMask mask) {
  return symmetric_keep(v, s, mask) ? g : 0.0f;
}

// The LSQ/PACT scale-gradient coefficient c of kernels.h.
__device__ __forceinline__ float symmetric_scale_coefficient(float v, float s, float fbin, RoundMode round) {
  if (v > s) return 1.0f;
  if (v < -s) return -1.0f;
  if (isnan(v)) return 0.0f;
  const float m = __fmul_rn(fbin, paddle_inverse_rn(s));
  const float u = __fmul_rn(v, m);
  return __fdiv_rn(__fsub_rn(round_value(u, round), u), fbin);
}

__device__ __forceinline__ float affine_value(float v, float s, int32_t zero_point, float lo, float hi,
                                              RoundMode round) {
  const float zp = static_cast<float>(zero_point);
  const float inv = __fdiv_rn(1.0f, s);
  const float q = __fadd_rn(round_value(__fmul_rn(v, inv), round), zp);
  const float c = fminf(fmaxf(q, lo), hi);
  return isnan(v) ? v : __fmul_rn(__fsub_rn(c, zp), s);
}

template <typename Q>
__device__ __forceinline__ Q quantize_value(float v, float s, int32_t zero_point, float lo, float hi,
                                            RoundMode round) {
  const float zp = static_cast<float>(zero_point);
  const float q = __fadd_rn(round_value(__fmul_rn(v, __fdiv_rn(1.0f, s)), round), zp);
  const float c = isnan(v) ? zp : fminf(fmaxf(q, lo), hi);
  return static_cast<Q>(static_cast<int32_t>(c));
}

template <typename Q>
__device__ __forceinline__ float dequantize_value(Q q, float s, int32_t zero_point) {
  const int32_t d = static_cast<int32_t>(q) - zero_point;
  return __fmul_rn(static_cast<float>(d), s);
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise kernels: grid-stride over groups of 4 elements, one 4-wide load/store per group when every
// pointer is aligned for it. Parameter indices are found with one division per group, then stepped.
// ---------------------------------------------------------------------------------------------------------

struct ChannelMap {
  int64_t inner;     // elements per channel row (numel when channels == 1)
  int64_t channels;
  bool narrow;       // numel fits in 32 bits: 32-bit division is several times cheaper than 64-bit

  // Channel c of element i and its position k inside its row.
  __device__ __forceinline__ void locate(int64_t i, int64_t* c, int64_t* k) const {
    if (channels == 1) {
      *c = 0;
      *k = i;
      return;
    }
    if (narrow) {
      const uint32_t ii = static_cast<uint32_t>(i), in = static_cast<uint32_t>(inner);
      const uint32_t row = ii / in;
      *k = ii - row * in;
      *c = row % static_cast<uint32_t>(channels);
    } else {
      const int64_t row = i / inner;
      *k = i - row * inner;
      *c = row % channels;
    }
  }
  __device__ __forceinline__ void advance(int64_t* c, int64_t* k) const {
    if (++*k == inner) {
      *k = 0;
      if (++*c == channels) *c = 0;
    }
  }
};

template <typename T>
struct Vec4;
template <>
struct Vec4<float> {
  using Type = float4;
};
template <>
struct Vec4<int8_t> {
  using Type = char4;
};
template <>
struct Vec4<int16_t> {
  using Type = short4;
};

template <typename T>
__device__ __forceinline__ void load4(const T* p, T out[4]) {
  const typename Vec4<T>::Type v = *reinterpret_cast<const typename Vec4<T>::Type*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const T in[4]) {
  typename Vec4<T>::Type v;
  v.x = in[0];
  v.y = in[1];
  v.z = in[2];
  v.w = in[3];
  *reinterpret_cast<typename Vec4<T>::Type*>(p) = v;
}

template <typename T>
bool aligned4(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

// out[i] = f(a[i], channel)
template <typename In, typename Out, class F>
struct UnaryOp {
  const In* a;
  Out* out;
  F f;
  __device__ __forceinline__ void one(int64_t i, int64_t c) const { out[i] = f(a[i], c); }
  __device__ __forceinline__ void four(int64_t i, const int64_t c[4]) const {
    In v[4];
    Out r[4];
    load4(a + i, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) r[j] = f(v[j], c[j]);
    store4(out + i, r);
  }
};

// out[i] = f(a[i], b[i], channel)
template <class F>
struct BinaryOp {
  const float* a;
  const float* b;
  float* out;
  F f;
  __device__ __forceinline__ void one(int64_t i, int64_t c) const { out[i] = f(a[i], b[i], c); }
  __device__ __forceinline__ void four(int64_t i, const int64_t c[4]) const {
    float va[4], vb[4], r[4];
    load4(a + i, va);
    load4(b + i, vb);
#pragma unroll
    for (int j = 0; j < 4; ++j) r[j] = f(va[j], vb[j], c[j]);
    store4(out + i, r);
  }
};

template <class Op>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(Op op, int64_t n, ChannelMap map, bool vectorized) {
  const int64_t groups = ceil_div(n, 4);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += step) {
    const int64_t i = g * 4;
    int64_t c[4], channel, k;
    map.locate(i, &channel, &k);
    c[0] = channel;
#pragma unroll
    for (int j = 1; j < 4; ++j) {
      map.advance(&channel, &k);
      c[j] = channel;
    }
    if (vectorized && i + 4 <= n) {
      op.four(i, c);
    } else {
      for (int j = 0; j < 4 && i + j < n; ++j) op.one(i + j, c[j]);
    }
  }
}

template <class Op>
void launch_elementwise(const Op& op, const Shape& shape, bool vectorized, intptr_t stream, const char* name) {
  if (shape.numel == 0) return;
  const ChannelMap map{shape.inner, shape.channels, shape.numel <= static_cast<int64_t>(UINT32_MAX)};
  const int64_t blocks = std::min(ceil_div(ceil_div(shape.numel, 4), kThreads), resident_blocks());
  elementwise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(op, shape.numel, map,
                                                                                          vectorized);
  check_launch(name);
}

// ---------------------------------------------------------------------------------------------------------
// Per-channel reductions. A Visit supplies:
//   Acc                                 a trivially copyable accumulator
//   static Acc identity()
//   void element(i, channel, Acc&)     visits element i (and may write per-element outputs)
//   static Acc combine(Acc, Acc)        associative and commutative
//   static Acc shuffle_xor(Acc, offset)  __shfl_xor_sync of every member
//   void flush(channel, Acc)            atomically merges a partial result into the output
// ---------------------------------------------------------------------------------------------------------

template <class Visit>
__device__ __forceinline__ typename Visit::Acc warp_reduce(typename Visit::Acc acc) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    acc = Visit::combine(acc, Visit::shuffle_xor(acc, offset));
  }
  return acc;
}

// Rows of >= kRowReductionMinInner elements: one warp per (row, chunk of the row), one atomic per warp item.
template <class Visit>
__global__ void __launch_bounds__(kThreads)
    reduce_rows_kernel(Visit visit, int64_t inner, int64_t channels, int64_t chunk, int64_t chunks_per_row,
                       int64_t items) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t item = warp; item < items; item += warps) {  // warp-uniform loop: full-mask shuffles are safe
    const int64_t row = item / chunks_per_row;
    const int64_t begin = (item - row * chunks_per_row) * chunk;
    const int64_t end = begin + chunk < inner ? begin + chunk : inner;
    const int64_t channel = row % channels;
    const int64_t base = row * inner;
    typename Visit::Acc acc = Visit::identity();
#pragma unroll 4
    for (int64_t j = begin + lane; j < end; j += kWarp) visit.element(base + j, channel, acc);
    acc = warp_reduce<Visit>(acc);
    if (lane == 0) visit.flush(channel, acc);
  }
}

// Short rows: the tensor is seen as [outer, columns] with columns = channels * inner. A block covers
// `block_columns` columns and kThreads / block_columns rows at a time (so small column counts still use the
// whole block with coalesced loads), walks its slice of rows, combines its partials in shared memory and
// flushes one atomic per column.
template <class Visit>
__global__ void __launch_bounds__(kThreads)
    reduce_columns_kernel(Visit visit, int64_t outer, int64_t inner, int64_t columns, int block_columns,
                          int64_t rows_per_slice) {
  using Acc = typename Visit::Acc;
  __shared__ Acc partial[kThreads];
  const int rows_per_step = kThreads / block_columns;
  const int t = threadIdx.x;
  const bool active = t < rows_per_step * block_columns;
  const int column_in_block = t % block_columns;
  const int row_in_step = t / block_columns;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t row_end = row_begin + rows_per_slice < outer ? row_begin + rows_per_slice : outer;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * block_columns; first < columns;
       first += static_cast<int64_t>(gridDim.x) * block_columns) {  // block-uniform loop
    const int64_t column = first + column_in_block;
    const int64_t channel = column / inner;
    Acc acc = Visit::identity();
    if (active && column < columns) {
      for (int64_t r = row_begin + row_in_step; r < row_end; r += rows_per_step) {
        visit.element(r * columns + column, channel, acc);
      }
    }
    partial[t] = acc;
    __syncthreads();
    if (t < block_columns && column < columns) {
      for (int s = 1; s < rows_per_step; ++s) acc = Visit::combine(acc, partial[t + s * block_columns]);
      visit.flush(channel, acc);
    }
    __syncthreads();
  }
}

template <class Visit>
void launch_reduction(const Visit& visit, const Shape& shape, intptr_t stream, const char* name) {
  if (shape.numel == 0) return;
  const int64_t target = resident_blocks();
  if (shape.channels == 1 || shape.inner >= kRowReductionMinInner) {
    const int64_t rows = shape.outer * shape.channels;
    const int64_t warps_per_block = kThreads / kWarp;
    int64_t chunk = std::max(ceil_div(shape.numel, target * warps_per_block), kMinRowChunk);
    chunk = ceil_div(chunk, kWarp) * kWarp;
    const int64_t chunks_per_row = ceil_div(shape.inner, chunk);
    const int64_t items = rows * chunks_per_row;
    const int64_t blocks = std::min(ceil_div(items, warps_per_block), target);
    reduce_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(
        visit, shape.inner, shape.channels, chunk, chunks_per_row, items);
  } else {
    const int64_t columns = shape.channels * shape.inner;
    const int block_columns = static_cast<int>(std::min<int64_t>(columns, kThreads));
    const int64_t column_blocks = std::min(ceil_div(columns, block_columns), target);
    const int64_t rows_per_step = kThreads / block_columns;
    int64_t slices = std::max<int64_t>(1, target / column_blocks);
    slices = std::min(slices, std::max<int64_t>(1, shape.outer / (kMinRowsPerSlice * rows_per_step)));
    slices = std::min<int64_t>(slices, 65535);
    const int64_t rows_per_slice = ceil_div(shape.outer, slices);
    slices = ceil_div(shape.outer, rows_per_slice);
    const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(slices));
    reduce_columns_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(visit, shape.outer, shape.inner, columns,
                                                                     block_columns, rows_per_slice);
  }
  check_launch(name);
}

// max |x| per channel, as the bit pattern of a non-negative float (ordered like the float), NaN canonicalised
// to kCanonicalNanBits so that it beats every number.
struct AbsMaxVisit {
  using Acc = unsigned;
  const float* x;
  unsigned* out;  // float bits, zeroed before the launch
  __device__ static Acc identity() { return 0u; }
  __device__ static Acc combine(Acc a, Acc b) { return a > b ? a : b; }
  __device__ static Acc shuffle_xor(Acc a, int offset) { return __shfl_xor_sync(0xffffffffu, a, offset); }
  __device__ void element(int64_t i, int64_t, Acc& acc) const {
    const float a = fabsf(x[i]);
    const unsigned bits = isnan(a) ? kCanonicalNanBits : __float_as_uint(a);
    acc = combine(acc, bits);
  }
  __device__ void flush(int64_t channel, Acc acc) const { atomicMax(out + channel, acc); }
};

struct DoublePair {
  double first;
  double second;
};

struct SymmetricBackwardVisit {
  using Acc = double;
  const float* x;
  const float* grad;
  float* grad_x;
  const float* scale;
  float fbin;
  RoundMode round;
  GradMask mask;
  double* grad_scale;  // zeroed before the launch
  __device__ static Acc identity() { return 0.0; }
  __device__ static Acc combine(Acc a, Acc b) { return a + b; }
  __device__ static Acc shuffle_xor(Acc a, int offset) { return __shfl_xor_sync(0xffffffffu, a, offset); }
  __device__ void element(int64_t i, int64_t channel, Acc& acc) const {
    const float s = scale[channel];
    const float v = x[i];
    const float g = grad[i];
    grad_x[i] = symmetric_grad_x(v, g, s, mask);
    acc += static_cast<double>(__fmul_rn(g, symmetric_scale_coefficient(v, s, fbin, round)));
  }
  __device__ void flush(int64_t channel, Acc acc) const { atomicAdd(grad_scale + channel, acc); }
};

struct AffineBackwardVisit {
  using Acc = DoublePair;
  const float* x;
  const float* grad;
  float* grad_x;
  const float* scale;
  const int32_t* zero_point;
  float lo;
  float hi;
  RoundMode round;
  GradMask mask;
  double* grad_scale;       // zeroed before the launch, or null
  double* grad_zero_point;  // zeroed before the launch, or null
  __device__ static Acc identity() { return Acc{0.0, 0.0}; }
  __device__ static Acc combine(Acc a, Acc b) { return Acc{a.first + b.first, a.second + b.second}; }
  __device__ static Acc shuffle_xor(Acc a, int offset) {
    return Acc{__shfl_xor_sync(0xffffffffu, a.first, offset), __shfl_xor_sync(0xffffffffu, a.second, offset)};
  }
  __device__ void element(int64_t i, int64_t channel, Acc& acc) const {
    const float s = scale[channel];
    const float zp = static_cast<float>(zero_point[channel]);
    const float inv = __fdiv_rn(1.0f, s);
    const float v = x[i];
    const float g = grad[i];
    const float u = __fmul_rn(v, inv);
    const float r = round_value(u, round);
    const float q = __fadd_rn(r, zp);
    const bool inside = (q >= lo) && (q <= hi);  // false for NaN
    grad_x[i] = (mask == GradMask::kNone || inside) ? g : 0.0f;
    float cs = 0.0f;
    if (inside) {
      cs = __fsub_rn(r, u);
    } else if (q < lo) {
      cs = __fsub_rn(lo, zp);
    } else if (q > hi) {
      cs = __fsub_rn(hi, zp);
    }
    const float cz = (inside || isnan(v)) ? 0.0f : -s;
    acc.first += static_cast<double>(__fmul_rn(g, cs));
    acc.second += static_cast<double>(__fmul_rn(g, cz));
  }
  __device__ void flush(int64_t channel, Acc acc) const {
    if (grad_scale != nullptr) atomicAdd(grad_scale + channel, acc.first);
    if (grad_zero_point != nullptr) atomicAdd(grad_zero_point + channel, acc.second);
  }
};

// ---------------------------------------------------------------------------------------------------------
// Elementwise functors
// ---------------------------------------------------------------------------------------------------------

struct SymmetricForward {
  const float* scale;
  float fbin;
  RoundMode round;
  __device__ float operator()(float v, int64_t c) const { return symmetric_value(v, scale[c], fbin, round); }
};

struct SymmetricGradOnly {
  const float* scale;
  GradMask mask;
  __device__ float operator()(float v, float g, int64_t c) const { return symmetric_grad_x(v, g, scale[c], mask); }
};

struct AffineForward {
  const float* scale;
  const int32_t* zero_point;
  float lo;
  float hi;
  RoundMode round;
  __device__ float operator()(float v, int64_t c) const {
    return affine_value(v, scale[c], zero_point[c], lo, hi, round);
  }
};

struct AffineGradOnly {
  const float* scale;
  const int32_t* zero_point;
  float lo;
  float hi;
  RoundMode round;
  GradMask mask;
  __device__ float operator()(float v, float g, int64_t c) const {
    if (mask == GradMask::kNone) return g;
    const float zp = static_cast<float>(zero_point[c]);
    const float q = __fadd_rn(round_value(__fmul_rn(v, __fdiv_rn(1.0f, scale[c])), round), zp);
    return (q >= lo && q <= hi) ? g : 0.0f;
  }
};

template <typename Q>
struct QuantizeForward {
  const float* scale;
  const int32_t* zero_point;
  float lo;
  float hi;
  RoundMode round;
  __device__ Q operator()(float v, int64_t c) const {
    return quantize_value<Q>(v, scale[c], zero_point[c], lo, hi, round);
  }
};

template <typename Q>
struct DequantizeForward {
  const float* scale;
  const int32_t* zero_point;
  __device__ float operator()(Q q, int64_t c) const { return dequantize_value<Q>(q, scale[c], zero_point[c]); }
};

// ---------------------------------------------------------------------------------------------------------
// Forward + gradient-mask bits: one warp covers 32 consecutive elements, __ballot_sync gathers their keep
// bits into one word and lanes 0-3 store its four bytes (byte stores: the mask needs no alignment). Lanes
// past n vote 0, which clears the padding bits of the last byte. The loop is warp-uniform (every lane runs
// the same iterations), so the full-mask ballot is safe.
// ---------------------------------------------------------------------------------------------------------

template <class F>
__global__ void __launch_bounds__(kThreads)
    mask_forward_kernel(const float* x, float* y, uint8_t* mask, int64_t n, ChannelMap map, F f) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  const int64_t mask_bytes = ceil_div(n, 8);
  for (int64_t base = warp * kWarp; base < n; base += warps * kWarp) {
    const int64_t i = base + lane;
    bool keep = false;
    if (i < n) {
      int64_t c, k;
      map.locate(i, &c, &k);
      y[i] = f(x[i], c, &keep);
    }
    const unsigned word = __ballot_sync(0xffffffffu, keep);
    const int64_t byte = base / 8 + lane;
    if (lane < 4 && byte < mask_bytes) mask[byte] = static_cast<uint8_t>(word >> (8 * lane));
  }
}

struct SymmetricMaskForward {
  const float* scale;
  float fbin;
  RoundMode round;
  GradMask mask;
  __device__ float operator()(float v, int64_t c, bool* keep) const {
    const float s = scale[c];
    *keep = symmetric_keep(v, s, mask);
    return symmetric_value(v, s, fbin, round);
  }
};

struct AffineMaskForward {
  const float* scale;
  const int32_t* zero_point;
  float lo;
  float hi;
  RoundMode round;
  __device__ float operator()(float v, int64_t c, bool* keep) const {
    const float s = scale[c];
    const float zp = static_cast<float>(zero_point[c]);
    const float q = __fadd_rn(round_value(__fmul_rn(v, __fdiv_rn(1.0f, s)), round), zp);
    *keep = (q >= lo) && (q <= hi);  // false for NaN, as the x-based backward
    return affine_value(v, s, zero_point[c], lo, hi, round);
  }
};

template <class F>
void launch_mask_forward(const float* x, float* y, uint8_t* mask, const Shape& shape, const F& f, intptr_t stream,
                         const char* name) {
  if (shape.numel == 0) return;
  const ChannelMap map{shape.inner, shape.channels, shape.numel <= static_cast<int64_t>(UINT32_MAX)};
  const int64_t blocks = std::min(ceil_div(shape.numel, kThreads), resident_blocks());
  mask_forward_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(x, y, mask, shape.numel,
                                                                                         map, f);
  check_launch(name);
}

__global__ void __launch_bounds__(kThreads)
    apply_grad_mask_kernel(const float* grad, const uint8_t* mask, float* grad_x, int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    grad_x[i] = ((mask[i >> 3] >> (i & 7)) & 1u) ? grad[i] : 0.0f;
  }
}

__global__ void moving_average_kernel(float* state, float* accum, float* scale, float rate) {
  const float abs_max = *scale;  // written by the abs-max reduction just before, on the same stream
  const float new_state = __fadd_rn(__fmul_rn(rate, *state), 1.0f);
  const float new_accum = __fadd_rn(__fmul_rn(rate, *accum), abs_max);
  *state = new_state;
  *accum = new_accum;
  *scale = __fdiv_rn(new_accum, new_state);
}

template <typename Q>
void quantize_impl(const float* x, Q* q, const ChannelLayout& layout, const float* scale, const int32_t* zero_point,
                   int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream, const char* name) {
  const QuantizeForward<Q> f{scale, zero_point, static_cast<float>(qmin), static_cast<float>(qmax), round};
  launch_elementwise(UnaryOp<float, Q, QuantizeForward<Q>>{x, q, f}, shape_of(layout), aligned4(x) && aligned4(q),
                     stream, name);
}

template <typename Q>
void dequantize_impl(const Q* q, float* y, const ChannelLayout& layout, const float* scale,
                     const int32_t* zero_point, intptr_t stream, const char* name) {
  const DequantizeForward<Q> f{scale, zero_point};
  launch_elementwise(UnaryOp<Q, float, DequantizeForward<Q>>{q, y, f}, shape_of(layout),
                     aligned4(q) && aligned4(y), stream, name);
}

// Zeroes `count` doubles/floats of a reduction output (the CPU drivers overwrite them too, even when empty).
template <typename T>
void zero_output(T* out, int64_t count, intptr_t stream, const char* name) {
  if (out == nullptr || count <= 0) return;
  check(cudaMemsetAsync(out, 0, static_cast<size_t>(count) * sizeof(T), as_stream(stream)), name);
}

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear it so that it is not reported by an unrelated later call
    return 0;
  }
  return count;
}

void abs_max_channels(const float* x, const ChannelLayout& layout, float* out, intptr_t stream) {
  zero_output(out, layout.channels, stream, "abs_max_channels (clearing out)");
  launch_reduction(AbsMaxVisit{x, reinterpret_cast<unsigned*>(out)}, shape_of(layout), stream, "abs_max_channels");
}

void fake_quant_symmetric(const float* x, float* y, const ChannelLayout& layout, const float* scale, int32_t bin,
                          RoundMode round, intptr_t stream) {
  const SymmetricForward f{scale, static_cast<float>(bin), round};
  launch_elementwise(UnaryOp<float, float, SymmetricForward>{x, y, f}, shape_of(layout), aligned4(x) && aligned4(y),
                     stream, "fake_quant_symmetric");
}

void fake_quant_symmetric_backward(const float* x, const float* grad, float* grad_x, const ChannelLayout& layout,
                                   const float* scale, int32_t bin, RoundMode round, GradMask mask,
                                   double* grad_scale, intptr_t stream) {
  const Shape shape = shape_of(layout);
  if (grad_scale == nullptr) {
    const SymmetricGradOnly f{scale, mask};
    launch_elementwise(BinaryOp<SymmetricGradOnly>{x, grad, grad_x, f}, shape,
                       aligned4(x) && aligned4(grad) && aligned4(grad_x), stream, "fake_quant_symmetric_backward");
    return;
  }
  zero_output(grad_scale, layout.channels, stream, "fake_quant_symmetric_backward (clearing grad_scale)");
  const SymmetricBackwardVisit visit{x, grad, grad_x, scale, static_cast<float>(bin), round, mask, grad_scale};
  launch_reduction(visit, shape, stream, "fake_quant_symmetric_backward");
}

void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream) {
  const AffineForward f{scale, zero_point, static_cast<float>(qmin), static_cast<float>(qmax), round};
  launch_elementwise(UnaryOp<float, float, AffineForward>{x, y, f}, shape_of(layout), aligned4(x) && aligned4(y),
                     stream, "fake_quant_affine");
}

void fake_quant_affine_backward(const float* x, const float* grad, float* grad_x, const ChannelLayout& layout,
                                const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax,
                                RoundMode round, GradMask mask, double* grad_scale, double* grad_zero_point,
                                intptr_t stream) {
  const Shape shape = shape_of(layout);
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  if (grad_scale == nullptr && grad_zero_point == nullptr) {
    const AffineGradOnly f{scale, zero_point, lo, hi, round, mask};
    launch_elementwise(BinaryOp<AffineGradOnly>{x, grad, grad_x, f}, shape,
                       aligned4(x) && aligned4(grad) && aligned4(grad_x), stream, "fake_quant_affine_backward");
    return;
  }
  zero_output(grad_scale, layout.channels, stream, "fake_quant_affine_backward (clearing grad_scale)");
  zero_output(grad_zero_point, layout.channels, stream, "fake_quant_affine_backward (clearing grad_zero_point)");
  const AffineBackwardVisit visit{x, grad, grad_x, scale, zero_point, lo, hi, round, mask, grad_scale,
                                  grad_zero_point};
  launch_reduction(visit, shape, stream, "fake_quant_affine_backward");
}

void fake_quant_symmetric_mask(const float* x, float* y, uint8_t* mask, const ChannelLayout& layout,
                               const float* scale, int32_t bin, RoundMode round, GradMask grad_mask, intptr_t stream) {
  const SymmetricMaskForward f{scale, static_cast<float>(bin), round, grad_mask};
  launch_mask_forward(x, y, mask, shape_of(layout), f, stream, "fake_quant_symmetric_mask");
}

void fake_quant_affine_mask(const float* x, float* y, uint8_t* mask, const ChannelLayout& layout, const float* scale,
                            const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream) {
  const AffineMaskForward f{scale, zero_point, static_cast<float>(qmin), static_cast<float>(qmax), round};
  launch_mask_forward(x, y, mask, shape_of(layout), f, stream, "fake_quant_affine_mask");
}

void apply_grad_mask(const float* grad, const uint8_t* mask, float* grad_x, int64_t n, intptr_t stream) {
  if (n <= 0) return;
  const int64_t blocks = std::min(ceil_div(n, kThreads), resident_blocks());
  apply_grad_mask_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(grad, mask, grad_x, n);
  check_launch("apply_grad_mask");
}

void moving_average_update(const float* x, int64_t n, float* state, float* accum, float* scale, float moving_rate,
                           intptr_t stream) {
  // abs_max(x) goes through *scale (no scratch allocation); the update kernel then overwrites it. An empty x
  // contributes abs_max = 0, as the CPU abs_max does; the state update still happens.
  ChannelLayout layout;
  layout.outer = 1;
  layout.channels = 1;
  layout.inner = n < 0 ? 0 : n;
  abs_max_channels(x, layout, scale, stream);
  moving_average_kernel<<<1, 1, 0, as_stream(stream)>>>(state, accum, scale, moving_rate);
  check_launch("moving_average_update");
}

void quantize_int8(const float* x, int8_t* q, const ChannelLayout& layout, const float* scale,
                   const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream) {
  quantize_impl(x, q, layout, scale, zero_point, qmin, qmax, round, stream, "quantize_int8");
}

void quantize_int16(const float* x, int16_t* q, const ChannelLayout& layout, const float* scale,
                    const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream) {
  quantize_impl(x, q, layout, scale, zero_point, qmin, qmax, round, stream, "quantize_int16");
}

void dequantize_int8(const int8_t* q, float* y, const ChannelLayout& layout, const float* scale,
                     const int32_t* zero_point, intptr_t stream) {
  dequantize_impl(q, y, layout, scale, zero_point, stream, "dequantize_int8");
}

void dequantize_int16(const int16_t* q, float* y, const ChannelLayout& layout, const float* scale,
                      const int32_t* zero_point, intptr_t stream) {
  dequantize_impl(q, y, layout, scale, zero_point, stream, "dequantize_int16");
}

}  // namespace cuda
}  // namespace pyslim
