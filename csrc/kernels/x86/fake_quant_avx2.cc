// AVX2 fake-quantization micro-kernels (compiled with -mavx2 -mfma, -ffp-contract=off).
//
// Every kernel performs, lane by lane, exactly the float operations of the reference
// (kernels/reference/fake_quant_reference.cc) in the same order, so float outputs are bit-identical:
//   * fmin/fmax become vminps/vmaxps with the operand order chosen so the NaN lanes resolve as the
//     reference does (or are overridden afterwards, as the reference overrides them);
//   * half-to-even is vroundps(nearest); half-away-from-zero is trunc + (|v - trunc| >= 0.5 ? copysign(1, v)
//     : copysign(0, v)), which equals std::round for every float (floor(|v| + 0.5) does not: 0.49999997f);
//   * where the reference divides, we divide.
// Tails (n % 8) run the same vector code on a zero-padded stack copy, so there is no second scalar code
// path to keep in step. Nothing here calls a header inline (e.g. paddle_inverse) compiled with baseline
// flags elsewhere: an inline function compiled in two TUs with different flags is one COMDAT symbol, and
// the linker may keep the AVX copy for the baseline caller.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "pyslim/kernels.h"

namespace pyslim {
namespace avx2 {
namespace {

constexpr int64_t kW = 8;  // floats per vector
// Float partial sums per lane before they are moved into double accumulators (contract: <= kMaxFloatPartial).
constexpr int64_t kFlushVectors = 1024;
static_assert(kFlushVectors <= kMaxFloatPartial, "float partial sums must stay within the contract");

inline __m256 abs_ps(__m256 v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline __m256 neg_ps(__m256 v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }
inline __m256 isnan_ps(__m256 v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }

template <RoundMode R>
inline __m256 round_ps(__m256 v) {
  if constexpr (R == RoundMode::kHalfToEven) {
    return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    // std::round: |v - trunc(v)| is exact (the fraction of a float fits in a float); adding a zero with
    // v's sign keeps trunc(-0.3) == -0 as std::round does; Inf gives Inf - Inf = NaN, which compares false.
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = abs_ps(_mm256_sub_ps(v, t));
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 up = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_or_ps(up, sign));
  }
}

// kernels.h paddle_inverse, lane-wise: s <= 1e-30f ? 1 / (s + 1e-6f) : 1 / s (false for NaN s).
inline __m256 paddle_inverse_ps(__m256 s) {
  const __m256 tiny = _mm256_cmp_ps(s, _mm256_set1_ps(1e-30f), _CMP_LE_OQ);
  const __m256 d = _mm256_blendv_ps(s, _mm256_add_ps(s, _mm256_set1_ps(1e-6f)), tiny);
  return _mm256_div_ps(_mm256_set1_ps(1.0f), d);
}

// Lane-wise acc[0..8) += (double)p, exactly the reference's per-element double addition.
inline void add_to_doubles(double* acc, __m256 p) {
  _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(p))));
  _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1))));
}

// Float lane partial sums, flushed into doubles every kFlushVectors additions.
class SumAcc {
 public:
  void add(__m256 p) {
    f_ = _mm256_add_ps(f_, p);
    if (++count_ == kFlushVectors) flush();
  }
  double total() {
    flush();
    const __m256d d = _mm256_add_pd(d0_, d1_);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }

 private:
  void flush() {
    d0_ = _mm256_add_pd(d0_, _mm256_cvtps_pd(_mm256_castps256_ps128(f_)));
    d1_ = _mm256_add_pd(d1_, _mm256_cvtps_pd(_mm256_extractf128_ps(f_, 1)));
    f_ = _mm256_setzero_ps();
    count_ = 0;
  }
  __m256 f_ = _mm256_setzero_ps();
  __m256d d0_ = _mm256_setzero_pd(), d1_ = _mm256_setzero_pd();
  int64_t count_ = 0;
};

// Lanes [0, r) set.
inline __m256 lane_mask(int64_t r) {
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(r)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

// Runs step(i) over full vectors, four at a time; returns where the tail starts.
template <typename Step>
inline int64_t vector_loop(int64_t n, Step&& step) {
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    step(i);
    step(i + kW);
    step(i + 2 * kW);
    step(i + 3 * kW);
  }
  for (; i + kW <= n; i += kW) step(i);
  return i;
}

// Copies r < 8 elements into a padded stack vector.
template <typename T>
struct Pad {
  alignas(32) T v[kW];
  explicit Pad(T fill) {
    for (auto& e : v) e = fill;
  }
  Pad(const T* src, int64_t r, T fill) : Pad(fill) { std::memcpy(v, src, static_cast<size_t>(r) * sizeof(T)); }
};

// Appends gradient-mask bits to a bit array with the layout of kernels.h (element j of the span is bit
// bit_offset + j): keeps the bits below bit_offset in the first byte, leaves the bits past the span cleared.
// At most 7 bits are ever pending, so put8 / put32 always complete exactly one / four bytes.
class MaskWriter {
 public:
  MaskWriter(uint8_t* bits, int64_t bit_offset)
      : byte_(bits), used_(static_cast<unsigned>(bit_offset)),
        pending_(bit_offset ? static_cast<unsigned>(bits[0]) & ((1u << bit_offset) - 1u) : 0u) {}
  void put8(unsigned b) {
    pending_ |= static_cast<uint64_t>(b) << used_;
    *byte_++ = static_cast<uint8_t>(pending_);
    pending_ >>= 8;
  }
  void put32(uint32_t b) {
    pending_ |= static_cast<uint64_t>(b) << used_;
    const uint32_t done = static_cast<uint32_t>(pending_);
    std::memcpy(byte_, &done, sizeof(done));
    byte_ += 4;
    pending_ >>= 32;
  }
  // The low `count` (<= 8) bits of b.
  void put(unsigned b, int64_t count) {
    pending_ |= static_cast<uint64_t>(b & ((1u << count) - 1u)) << used_;
    used_ += static_cast<unsigned>(count);
    if (used_ >= 8) {
      *byte_++ = static_cast<uint8_t>(pending_);
      pending_ >>= 8;
      used_ -= 8;
    }
  }
  void finish() {
    if (used_) *byte_ = static_cast<uint8_t>(pending_);
  }

 private:
  uint8_t* byte_;
  unsigned used_;
  uint64_t pending_;
};

// vector_loop for steps that return their 8 lanes' mask bits: four steps' bits go out as one 32-bit store.
// (The four steps write disjoint outputs, so the unspecified order of the | operands does not matter.)
template <typename Step>
inline int64_t vector_loop_bits(int64_t n, MaskWriter& bits, Step&& step) {
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    const uint32_t b0 = step(i), b1 = step(i + kW), b2 = step(i + 2 * kW), b3 = step(i + 3 * kW);
    bits.put32(b0 | (b1 << 8) | (b2 << 16) | (b3 << 24));
  }
  for (; i + kW <= n; i += kW) bits.put8(step(i));
  return i;
}

// ---------------------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------------------

// |x| bit patterns order like their values as int32, and every NaN sorts above +Inf, so an integer max is
// a NaN-propagating float max.
float abs_max(const float* x, int64_t n) {
  const __m256i abs_bits = _mm256_set1_epi32(0x7fffffff);
  __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
  auto bits = [&](const float* p) { return _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), abs_bits); };
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    m0 = _mm256_max_epi32(m0, bits(x + i));
    m1 = _mm256_max_epi32(m1, bits(x + i + kW));
    m2 = _mm256_max_epi32(m2, bits(x + i + 2 * kW));
    m3 = _mm256_max_epi32(m3, bits(x + i + 3 * kW));
  }
  for (; i + kW <= n; i += kW) m0 = _mm256_max_epi32(m0, bits(x + i));
  if (i < n) {
    const Pad<float> t(x + i, n - i, 0.0f);
    m1 = _mm256_max_epi32(m1, bits(t.v));
  }
  const __m256i m = _mm256_max_epi32(_mm256_max_epi32(m0, m1), _mm256_max_epi32(m2, m3));
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4E));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xB1));
  const int32_t b = _mm_cvtsi128_si32(h);
  float out;
  std::memcpy(&out, &b, sizeof(out));
  return out;
}

// _mm256_min_ps(v, acc) returns acc when v is NaN, so the accumulators stay numbers and NaN is tracked by
// an unordered compare; zero padding of the tail changes nothing (0 is in the range anyway).
void range_with_zero(const float* x, int64_t n, float* lo_out, float* hi_out) {
  __m256 lo0 = _mm256_setzero_ps(), lo1 = lo0, hi0 = lo0, hi1 = lo0, nan0 = lo0, nan1 = lo0;
  int64_t i = 0;
  auto step = [](__m256 v, __m256& lo, __m256& hi, __m256& nan) {
    lo = _mm256_min_ps(v, lo);
    hi = _mm256_max_ps(v, hi);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  };
  for (; i + 2 * kW <= n; i += 2 * kW) {
    step(_mm256_loadu_ps(x + i), lo0, hi0, nan0);
    step(_mm256_loadu_ps(x + i + kW), lo1, hi1, nan1);
  }
  for (; i + kW <= n; i += kW) step(_mm256_loadu_ps(x + i), lo0, hi0, nan0);
  if (i < n) {
    const Pad<float> t(x + i, n - i, 0.0f);
    step(_mm256_loadu_ps(t.v), lo1, hi1, nan1);
  }
  if (_mm256_movemask_ps(_mm256_or_ps(nan0, nan1)) != 0) {
    *lo_out = *hi_out = __builtin_nanf("");
    return;
  }
  alignas(32) float l[kW], h[kW];
  _mm256_store_ps(l, _mm256_min_ps(lo0, lo1));
  _mm256_store_ps(h, _mm256_max_ps(hi0, hi1));
  float lo = 0.0f, hi = 0.0f;
  for (int j = 0; j < kW; ++j) {
    lo = l[j] < lo ? l[j] : lo;
    hi = h[j] > hi ? h[j] : hi;
  }
  *lo_out = lo;
  *hi_out = hi;
}

void abs_max_accumulate(const float* x, int64_t n, float* acc) {
  const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));  // nanf("")
  auto step = [&](const float* xp, float* ap) {
    const __m256 a = abs_ps(_mm256_loadu_ps(xp));
    const __m256 c = _mm256_loadu_ps(ap);
    const __m256 m = _mm256_max_ps(a, c);  // a > c ? a : c, as the reference
    _mm256_storeu_ps(ap, _mm256_blendv_ps(m, qnan, _mm256_cmp_ps(a, c, _CMP_UNORD_Q)));
  };
  const int64_t i = vector_loop(n, [&](int64_t j) { step(x + j, acc + j); });
  if (i < n) {
    const Pad<float> xt(x + i, n - i, 0.0f);
    Pad<float> at(acc + i, n - i, 0.0f);
    step(xt.v, at.v);
    std::memcpy(acc + i, at.v, static_cast<size_t>(n - i) * sizeof(float));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Symmetric fake quantization
// ---------------------------------------------------------------------------------------------------------

// kMask: also writes the backward's keep bit of every element (see kernels.h fake_quant_symmetric_mask).
template <bool kPer, RoundMode R, bool kMask>
void fq_symmetric(const float* x, float* y, int64_t n, const float* scale, int32_t bin, uint8_t* mask_bits = nullptr,
                  int64_t bit_offset = 0, GradMask mask = GradMask::kNone) {
  const __m256 fbin = _mm256_set1_ps(static_cast<float>(bin));
  const __m256 s0 = _mm256_set1_ps(scale[0]);
  const __m256 m0 = _mm256_mul_ps(fbin, paddle_inverse_ps(s0));
  const __m256 ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), zero = _mm256_setzero_ps();
  const __m256 keep_all = mask == GradMask::kNone ? ones : zero;
  const __m256 use_le = mask == GradMask::kInclusive ? ones : zero;
  const __m256 use_lt = mask == GradMask::kStrict ? ones : zero;
  // Returns the keep bits of the 8 lanes when kMask.
  auto step = [&](const float* xp, float* yp, const float* sp) {
    __m256 s = s0, m = m0;
    if constexpr (kPer) {
      s = _mm256_loadu_ps(sp);
      m = _mm256_mul_ps(fbin, paddle_inverse_ps(s));
    }
    const __m256 v = _mm256_loadu_ps(xp);
    const __m256 clipped = _mm256_min_ps(_mm256_max_ps(v, neg_ps(s)), s);
    const __m256 q = round_ps<R>(_mm256_mul_ps(clipped, m));
    const __m256 out = _mm256_div_ps(_mm256_mul_ps(q, s), fbin);
    _mm256_storeu_ps(yp, _mm256_blendv_ps(out, v, isnan_ps(v)));
    if constexpr (kMask) {
      const __m256 av = abs_ps(v);
      const __m256 keep = _mm256_or_ps(keep_all, _mm256_or_ps(_mm256_and_ps(use_le, _mm256_cmp_ps(av, s, _CMP_LE_OQ)),
                                                              _mm256_and_ps(use_lt, _mm256_cmp_ps(av, s, _CMP_LT_OQ))));
      return static_cast<unsigned>(_mm256_movemask_ps(keep));
    } else {
      return 0u;
    }
  };
  MaskWriter bits(mask_bits, kMask ? bit_offset : 0);
  int64_t i;
  if constexpr (kMask) {
    i = vector_loop_bits(n, bits, [&](int64_t j) { return step(x + j, y + j, kPer ? scale + j : scale); });
  } else {
    i = vector_loop(n, [&](int64_t j) { step(x + j, y + j, kPer ? scale + j : scale); });
  }
  if (i < n) {
    const int64_t r = n - i;
    const Pad<float> xt(x + i, r, 0.0f), st(kPer ? scale + i : scale, kPer ? r : 1, 1.0f);
    Pad<float> yt(0.0f);
    const unsigned b = step(xt.v, yt.v, st.v);
    std::memcpy(y + i, yt.v, static_cast<size_t>(r) * sizeof(float));
    if constexpr (kMask) bits.put(b, r);
  }
  if constexpr (kMask) bits.finish();
}

template <bool kPer, RoundMode R, bool kSum>
void fq_symmetric_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                           int32_t bin, GradMask mask, double* acc) {
  const __m256 fbin = _mm256_set1_ps(static_cast<float>(bin));
  const __m256 s0 = _mm256_set1_ps(scale[0]);
  const __m256 m0 = _mm256_mul_ps(fbin, paddle_inverse_ps(s0));
  const __m256 ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), zero = _mm256_setzero_ps();
  const __m256 keep_all = mask == GradMask::kNone ? ones : zero;
  const __m256 use_le = mask == GradMask::kInclusive ? ones : zero;
  const __m256 use_lt = mask == GradMask::kStrict ? ones : zero;
  // Returns the lanes' g * c (scale-gradient terms) when kSum.
  auto step = [&](const float* xp, const float* gp, float* gxp, const float* sp) {
    __m256 s = s0, m = m0;
    if constexpr (kPer) {
      s = _mm256_loadu_ps(sp);
      if constexpr (kSum) m = _mm256_mul_ps(fbin, paddle_inverse_ps(s));
    }
    const __m256 v = _mm256_loadu_ps(xp);
    const __m256 g = _mm256_loadu_ps(gp);
    const __m256 av = abs_ps(v);
    const __m256 keep = _mm256_or_ps(keep_all, _mm256_or_ps(_mm256_and_ps(use_le, _mm256_cmp_ps(av, s, _CMP_LE_OQ)),
                                                            _mm256_and_ps(use_lt, _mm256_cmp_ps(av, s, _CMP_LT_OQ))));
    _mm256_storeu_ps(gxp, _mm256_and_ps(keep, g));
    if constexpr (kSum) {
      const __m256 u = _mm256_mul_ps(v, m);
      __m256 c = _mm256_div_ps(_mm256_sub_ps(round_ps<R>(u), u), fbin);
      c = _mm256_andnot_ps(isnan_ps(v), c);
      c = _mm256_blendv_ps(c, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(v, neg_ps(s), _CMP_LT_OQ));
      c = _mm256_blendv_ps(c, _mm256_set1_ps(1.0f), _mm256_cmp_ps(v, s, _CMP_GT_OQ));
      return _mm256_mul_ps(g, c);
    } else {
      return zero;
    }
  };
  SumAcc sum;
  const int64_t i = vector_loop(n, [&](int64_t j) {
    const __m256 p = step(x + j, grad + j, grad_x + j, kPer ? scale + j : scale);
    if constexpr (kSum) {
      if constexpr (kPer) {
        add_to_doubles(acc + j, p);
      } else {
        sum.add(p);
      }
    }
  });
  if (i < n) {
    const int64_t r = n - i;
    const Pad<float> xt(x + i, r, 0.0f), gt(grad + i, r, 0.0f), st(kPer ? scale + i : scale, kPer ? r : 1, 1.0f);
    Pad<float> gxt(0.0f), pt(0.0f);
    const __m256 p = step(xt.v, gt.v, gxt.v, st.v);
    std::memcpy(grad_x + i, gxt.v, static_cast<size_t>(r) * sizeof(float));
    if constexpr (kSum) {
      if constexpr (kPer) {
        _mm256_store_ps(pt.v, p);
        for (int64_t k = 0; k < r; ++k) acc[i + k] += static_cast<double>(pt.v[k]);
      } else {
        sum.add(_mm256_and_ps(p, lane_mask(r)));
      }
    }
  }
  if constexpr (kSum && !kPer) acc[0] += sum.total();
}

// ---------------------------------------------------------------------------------------------------------
// Affine fake quantization and real quantization
// ---------------------------------------------------------------------------------------------------------

// Affine parameters of one vector: s, (float)zp and 1 / s.
struct Affine {
  __m256 s, zp, inv;
};
inline Affine affine_params(__m256 s, __m256i zp) {
  return {s, _mm256_cvtepi32_ps(zp), _mm256_div_ps(_mm256_set1_ps(1.0f), s)};
}

// The broadcast parameters live in three plain vector members (not one nested struct): GCC copied a
// nested struct of ymm through 128-bit halves on the stack every iteration, a store-forwarding stall
// that cost 5x on the affine kernels.
template <bool kPer>
struct AffineSource {
  __m256 s0, zp0, inv0;
  AffineSource(const float* scale, const int32_t* zp) {
    const Affine a = affine_params(_mm256_set1_ps(scale[0]), _mm256_set1_epi32(zp[0]));
    s0 = a.s;
    zp0 = a.zp;
    inv0 = a.inv;
  }
  Affine at(const float* sp, const int32_t* zpp) const {
    if constexpr (kPer) {
      return affine_params(_mm256_loadu_ps(sp), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zpp)));
    } else {
      return {s0, zp0, inv0};
    }
  }
};

// kMask: also writes the backward's inside bit of every element (see kernels.h fake_quant_affine_mask).
template <bool kPer, RoundMode R, bool kMask>
void fq_affine(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point, int32_t qmin,
               int32_t qmax, uint8_t* mask_bits = nullptr, int64_t bit_offset = 0) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin)), hi = _mm256_set1_ps(static_cast<float>(qmax));
  const AffineSource<kPer> src(scale, zero_point);
  // Returns the inside bits of the 8 lanes when kMask.
  auto step = [&](const float* xp, float* yp, const float* sp, const int32_t* zpp) {
    const Affine a = src.at(sp, zpp);
    const __m256 v = _mm256_loadu_ps(xp);
    const __m256 q = _mm256_add_ps(round_ps<R>(_mm256_mul_ps(v, a.inv)), a.zp);
    const __m256 c = _mm256_min_ps(_mm256_max_ps(q, lo), hi);  // NaN q -> lo, as fmax(q, lo)
    const __m256 out = _mm256_mul_ps(_mm256_sub_ps(c, a.zp), a.s);
    _mm256_storeu_ps(yp, _mm256_blendv_ps(out, v, isnan_ps(v)));
    if constexpr (kMask) {
      const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(q, lo, _CMP_GE_OQ), _mm256_cmp_ps(q, hi, _CMP_LE_OQ));
      return static_cast<unsigned>(_mm256_movemask_ps(inside));
    } else {
      return 0u;
    }
  };
  MaskWriter bits(mask_bits, kMask ? bit_offset : 0);
  auto at = [&](int64_t j) { return step(x + j, y + j, kPer ? scale + j : scale, kPer ? zero_point + j : zero_point); };
  int64_t i;
  if constexpr (kMask) {
    i = vector_loop_bits(n, bits, at);
  } else {
    i = vector_loop(n, at);
  }
  if (i < n) {
    const int64_t r = n - i, pr = kPer ? r : 1;
    const Pad<float> xt(x + i, r, 0.0f), st(kPer ? scale + i : scale, pr, 1.0f);
    const Pad<int32_t> zt(kPer ? zero_point + i : zero_point, pr, 0);
    Pad<float> yt(0.0f);
    const unsigned b = step(xt.v, yt.v, st.v, zt.v);
    std::memcpy(y + i, yt.v, static_cast<size_t>(r) * sizeof(float));
    if constexpr (kMask) bits.put(b, r);
  }
  if constexpr (kMask) bits.finish();
}

// grad_x = mask bit ? grad : 0. The bits of 32 elements are read as one word (shifted into place when the
// span starts inside a byte); group k of 8 lanes tests bits 8k..8k+7 of the broadcast word.
template <bool kShift>
void apply_mask(const float* grad, const uint8_t* bits, unsigned shift, float* grad_x, int64_t n) {
  // Lane l of group k tests bit 8k + l.
  const __m256i bit0 = _mm256_setr_epi32(1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7);
  const __m256i bit1 = _mm256_slli_epi32(bit0, 8), bit2 = _mm256_slli_epi32(bit0, 16);
  const __m256i bit3 = _mm256_slli_epi32(bit0, 24);
  auto step = [&](const float* gp, float* gxp, __m256i word, __m256i bit) {
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(word, bit), bit));
    _mm256_storeu_ps(gxp, _mm256_and_ps(keep, _mm256_loadu_ps(gp)));
  };
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    const uint8_t* p = bits + i / 8;
    uint32_t w;
    std::memcpy(&w, p, sizeof(w));
    // With a shift the 32 bits reach into a fifth byte, which belongs to this span (shift + i + 31 < shift + n).
    if constexpr (kShift) w = static_cast<uint32_t>((w | (static_cast<uint64_t>(p[4]) << 32)) >> shift);
    const __m256i word = _mm256_set1_epi32(static_cast<int>(w));
    step(grad + i, grad_x + i, word, bit0);
    step(grad + i + kW, grad_x + i + kW, word, bit1);
    step(grad + i + 2 * kW, grad_x + i + 2 * kW, word, bit2);
    step(grad + i + 3 * kW, grad_x + i + 3 * kW, word, bit3);
  }
  for (; i + kW <= n; i += kW) {
    const uint8_t* p = bits + i / 8;
    unsigned b = p[0];
    if constexpr (kShift) b = (b | (static_cast<unsigned>(p[1]) << 8)) >> shift;
    step(grad + i, grad_x + i, _mm256_set1_epi32(static_cast<int>(b)), bit0);
  }
  if (i < n) {
    const int64_t r = n - i;
    const uint8_t* p = bits + i / 8;
    unsigned b = p[0];
    if (shift + r > 8) b |= static_cast<unsigned>(p[1]) << 8;  // read only bytes that hold span bits
    b >>= shift;
    const Pad<float> gt(grad + i, r, 0.0f);
    Pad<float> gxt(0.0f);
    step(gt.v, gxt.v, _mm256_set1_epi32(static_cast<int>(b)), bit0);
    std::memcpy(grad_x + i, gxt.v, static_cast<size_t>(r) * sizeof(float));
  }
}

template <bool kPer, RoundMode R, bool kSum>
void fq_affine_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                        const int32_t* zero_point, int32_t qmin, int32_t qmax, GradMask mask, double* acc_s,
                        double* acc_z) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin)), hi = _mm256_set1_ps(static_cast<float>(qmax));
  const __m256 keep_all = mask == GradMask::kNone ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : _mm256_setzero_ps();
  const AffineSource<kPer> src(scale, zero_point);
  struct Terms {
    __m256 ds, dz;
  };
  auto step = [&](const float* xp, const float* gp, float* gxp, const float* sp, const int32_t* zpp) {
    const Affine a = src.at(sp, zpp);
    const __m256 v = _mm256_loadu_ps(xp);
    const __m256 g = _mm256_loadu_ps(gp);
    const __m256 u = _mm256_mul_ps(v, a.inv);
    const __m256 r = round_ps<R>(u);
    const __m256 q = _mm256_add_ps(r, a.zp);
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(q, lo, _CMP_GE_OQ), _mm256_cmp_ps(q, hi, _CMP_LE_OQ));
    _mm256_storeu_ps(gxp, _mm256_and_ps(_mm256_or_ps(keep_all, inside), g));
    Terms t{_mm256_setzero_ps(), _mm256_setzero_ps()};
    if constexpr (kSum) {
      __m256 c = _mm256_and_ps(_mm256_cmp_ps(q, hi, _CMP_GT_OQ), _mm256_sub_ps(hi, a.zp));
      c = _mm256_blendv_ps(c, _mm256_sub_ps(lo, a.zp), _mm256_cmp_ps(q, lo, _CMP_LT_OQ));
      c = _mm256_blendv_ps(c, _mm256_sub_ps(r, u), inside);
      t.ds = _mm256_mul_ps(g, c);
      const __m256 cz = _mm256_andnot_ps(_mm256_or_ps(inside, isnan_ps(v)), neg_ps(a.s));
      t.dz = _mm256_mul_ps(g, cz);
    }
    return t;
  };
  SumAcc sum_s, sum_z;
  auto accumulate = [&](int64_t j, const Terms& t) {
    if constexpr (kPer) {
      if (acc_s) add_to_doubles(acc_s + j, t.ds);
      if (acc_z) add_to_doubles(acc_z + j, t.dz);
    } else {
      sum_s.add(t.ds);
      sum_z.add(t.dz);
    }
  };
  const int64_t i = vector_loop(n, [&](int64_t j) {
    const Terms t = step(x + j, grad + j, grad_x + j, kPer ? scale + j : scale, kPer ? zero_point + j : zero_point);
    if constexpr (kSum) accumulate(j, t);
  });
  if (i < n) {
    const int64_t r = n - i, pr = kPer ? r : 1;
    const Pad<float> xt(x + i, r, 0.0f), gt(grad + i, r, 0.0f), st(kPer ? scale + i : scale, pr, 1.0f);
    const Pad<int32_t> zt(kPer ? zero_point + i : zero_point, pr, 0);
    Pad<float> gxt(0.0f);
    const Terms t = step(xt.v, gt.v, gxt.v, st.v, zt.v);
    std::memcpy(grad_x + i, gxt.v, static_cast<size_t>(r) * sizeof(float));
    if constexpr (kSum) {
      if constexpr (kPer) {
        Pad<float> ps(0.0f), pz(0.0f);
        _mm256_store_ps(ps.v, t.ds);
        _mm256_store_ps(pz.v, t.dz);
        for (int64_t k = 0; k < r; ++k) {
          if (acc_s) acc_s[i + k] += static_cast<double>(ps.v[k]);
          if (acc_z) acc_z[i + k] += static_cast<double>(pz.v[k]);
        }
      } else {
        const __m256 valid = lane_mask(r);
        sum_s.add(_mm256_and_ps(t.ds, valid));
        sum_z.add(_mm256_and_ps(t.dz, valid));
      }
    }
  }
  if constexpr (kSum && !kPer) {
    if (acc_s) acc_s[0] += sum_s.total();
    if (acc_z) acc_z[0] += sum_z.total();
  }
}

// Stores the low 8 or 16 bits of each int32 lane (static_cast<Q>(int32_t) wraps modulo 2^bits).
inline void store_narrow(int8_t* p, __m256i v) {
  v = _mm256_and_si256(v, _mm256_set1_epi32(0xff));
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));  // exact: <= 0xff
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
}
inline void store_narrow(int16_t* p, __m256i v) {
  v = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}
inline __m256i load_widen(const int8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline __m256i load_widen(const int16_t* p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <typename Q, bool kPer, RoundMode R>
void quantize(const float* x, Q* out, int64_t n, const float* scale, const int32_t* zero_point, int32_t qmin,
              int32_t qmax) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin)), hi = _mm256_set1_ps(static_cast<float>(qmax));
  const AffineSource<kPer> src(scale, zero_point);
  auto step = [&](const float* xp, Q* op, const float* sp, const int32_t* zpp) {
    const Affine a = src.at(sp, zpp);
    const __m256 v = _mm256_loadu_ps(xp);
    const __m256 q = _mm256_add_ps(round_ps<R>(_mm256_mul_ps(v, a.inv)), a.zp);
    const __m256 c = _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(q, lo), hi), a.zp, isnan_ps(v));
    store_narrow(op, _mm256_cvttps_epi32(c));
  };
  const int64_t i = vector_loop(n, [&](int64_t j) {
    step(x + j, out + j, kPer ? scale + j : scale, kPer ? zero_point + j : zero_point);
  });
  if (i < n) {
    const int64_t r = n - i, pr = kPer ? r : 1;
    const Pad<float> xt(x + i, r, 0.0f), st(kPer ? scale + i : scale, pr, 1.0f);
    const Pad<int32_t> zt(kPer ? zero_point + i : zero_point, pr, 0);
    Pad<Q> ot(0);
    step(xt.v, ot.v, st.v, zt.v);
    std::memcpy(out + i, ot.v, static_cast<size_t>(r) * sizeof(Q));
  }
}

template <typename Q, bool kPer>
void dequantize(const Q* q, float* y, int64_t n, const float* scale, const int32_t* zero_point) {
  const __m256 s0 = _mm256_set1_ps(scale[0]);
  const __m256i z0 = _mm256_set1_epi32(zero_point[0]);
  auto step = [&](const Q* qp, float* yp, const float* sp, const int32_t* zpp) {
    __m256 s = s0;
    __m256i z = z0;
    if constexpr (kPer) {
      s = _mm256_loadu_ps(sp);
      z = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zpp));
    }
    const __m256i d = _mm256_sub_epi32(load_widen(qp), z);
    _mm256_storeu_ps(yp, _mm256_mul_ps(_mm256_cvtepi32_ps(d), s));
  };
  const int64_t i = vector_loop(n, [&](int64_t j) {
    step(q + j, y + j, kPer ? scale + j : scale, kPer ? zero_point + j : zero_point);
  });
  if (i < n) {
    const int64_t r = n - i, pr = kPer ? r : 1;
    const Pad<Q> qt(q + i, r, 0);
    const Pad<float> st(kPer ? scale + i : scale, pr, 1.0f);
    const Pad<int32_t> zt(kPer ? zero_point + i : zero_point, pr, 0);
    Pad<float> yt(0.0f);
    step(qt.v, yt.v, st.v, zt.v);
    std::memcpy(y + i, yt.v, static_cast<size_t>(r) * sizeof(float));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Table entries: runtime arguments -> template instantiations
// ---------------------------------------------------------------------------------------------------------

void fake_quant_symmetric(const float* x, float* y, int64_t n, const float* scale, int64_t param_stride, int32_t bin,
                          RoundMode round) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fq_symmetric<true, RoundMode::kHalfToEven, false>(x, y, n, scale, bin)
         : fq_symmetric<true, RoundMode::kHalfAwayFromZero, false>(x, y, n, scale, bin);
  } else {
    even ? fq_symmetric<false, RoundMode::kHalfToEven, false>(x, y, n, scale, bin)
         : fq_symmetric<false, RoundMode::kHalfAwayFromZero, false>(x, y, n, scale, bin);
  }
}

void fake_quant_symmetric_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                               const float* scale, int64_t param_stride, int32_t bin, RoundMode round, GradMask mask) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fq_symmetric<true, RoundMode::kHalfToEven, true>(x, y, n, scale, bin, mask_bits, bit_offset, mask)
         : fq_symmetric<true, RoundMode::kHalfAwayFromZero, true>(x, y, n, scale, bin, mask_bits, bit_offset, mask);
  } else {
    even ? fq_symmetric<false, RoundMode::kHalfToEven, true>(x, y, n, scale, bin, mask_bits, bit_offset, mask)
         : fq_symmetric<false, RoundMode::kHalfAwayFromZero, true>(x, y, n, scale, bin, mask_bits, bit_offset, mask);
  }
}

template <bool kPer, RoundMode R>
void fq_symmetric_backward_sum(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                               int32_t bin, GradMask mask, double* acc) {
  if (acc) {
    fq_symmetric_backward<kPer, R, true>(x, grad, grad_x, n, scale, bin, mask, acc);
  } else {
    fq_symmetric_backward<kPer, R, false>(x, grad, grad_x, n, scale, bin, mask, acc);
  }
}

void fake_quant_symmetric_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                                   int64_t param_stride, int32_t bin, RoundMode round, GradMask mask,
                                   double* grad_scale_acc) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fq_symmetric_backward_sum<true, RoundMode::kHalfToEven>(x, grad, grad_x, n, scale, bin, mask, grad_scale_acc)
         : fq_symmetric_backward_sum<true, RoundMode::kHalfAwayFromZero>(x, grad, grad_x, n, scale, bin, mask,
                                                                          grad_scale_acc);
  } else {
    even ? fq_symmetric_backward_sum<false, RoundMode::kHalfToEven>(x, grad, grad_x, n, scale, bin, mask,
                                                                    grad_scale_acc)
         : fq_symmetric_backward_sum<false, RoundMode::kHalfAwayFromZero>(x, grad, grad_x, n, scale, bin, mask,
                                                                           grad_scale_acc);
  }
}

void fake_quant_affine(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                       int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fq_affine<true, RoundMode::kHalfToEven, false>(x, y, n, scale, zero_point, qmin, qmax)
         : fq_affine<true, RoundMode::kHalfAwayFromZero, false>(x, y, n, scale, zero_point, qmin, qmax);
  } else {
    even ? fq_affine<false, RoundMode::kHalfToEven, false>(x, y, n, scale, zero_point, qmin, qmax)
         : fq_affine<false, RoundMode::kHalfAwayFromZero, false>(x, y, n, scale, zero_point, qmin, qmax);
  }
}

void fake_quant_affine_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                            const float* scale, const int32_t* zero_point, int64_t param_stride, int32_t qmin,
                            int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fq_affine<true, RoundMode::kHalfToEven, true>(x, y, n, scale, zero_point, qmin, qmax, mask_bits, bit_offset)
         : fq_affine<true, RoundMode::kHalfAwayFromZero, true>(x, y, n, scale, zero_point, qmin, qmax, mask_bits,
                                                               bit_offset);
  } else {
    even ? fq_affine<false, RoundMode::kHalfToEven, true>(x, y, n, scale, zero_point, qmin, qmax, mask_bits,
                                                          bit_offset)
         : fq_affine<false, RoundMode::kHalfAwayFromZero, true>(x, y, n, scale, zero_point, qmin, qmax, mask_bits,
                                                                bit_offset);
  }
}

void apply_grad_mask(const float* grad, const uint8_t* mask_bits, int64_t bit_offset, float* grad_x, int64_t n) {
  if (n <= 0) return;
  const unsigned shift = static_cast<unsigned>(bit_offset);
  shift ? apply_mask<true>(grad, mask_bits, shift, grad_x, n) : apply_mask<false>(grad, mask_bits, 0, grad_x, n);
}

template <bool kPer, RoundMode R>
void fq_affine_backward_sum(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                            const int32_t* zero_point, int32_t qmin, int32_t qmax, GradMask mask, double* acc_s,
                            double* acc_z) {
  if (acc_s || acc_z) {
    fq_affine_backward<kPer, R, true>(x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, acc_s, acc_z);
  } else {
    fq_affine_backward<kPer, R, false>(x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, acc_s, acc_z);
  }
}

void fake_quant_affine_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                                const int32_t* zero_point, int64_t param_stride, int32_t qmin, int32_t qmax,
                                RoundMode round, GradMask mask, double* grad_scale_acc, double* grad_zero_point_acc) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fq_affine_backward_sum<true, RoundMode::kHalfToEven>(x, grad, grad_x, n, scale, zero_point, qmin, qmax,
                                                                 mask, grad_scale_acc, grad_zero_point_acc)
         : fq_affine_backward_sum<true, RoundMode::kHalfAwayFromZero>(x, grad, grad_x, n, scale, zero_point, qmin,
                                                                       qmax, mask, grad_scale_acc, grad_zero_point_acc);
  } else {
    even ? fq_affine_backward_sum<false, RoundMode::kHalfToEven>(x, grad, grad_x, n, scale, zero_point, qmin, qmax,
                                                                  mask, grad_scale_acc, grad_zero_point_acc)
         : fq_affine_backward_sum<false, RoundMode::kHalfAwayFromZero>(x, grad, grad_x, n, scale, zero_point, qmin,
                                                                        qmax, mask, grad_scale_acc,
                                                                        grad_zero_point_acc);
  }
}

template <typename Q>
void quantize_entry(const float* x, Q* q, int64_t n, const float* scale, const int32_t* zero_point,
                    int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? quantize<Q, true, RoundMode::kHalfToEven>(x, q, n, scale, zero_point, qmin, qmax)
         : quantize<Q, true, RoundMode::kHalfAwayFromZero>(x, q, n, scale, zero_point, qmin, qmax);
  } else {
    even ? quantize<Q, false, RoundMode::kHalfToEven>(x, q, n, scale, zero_point, qmin, qmax)
         : quantize<Q, false, RoundMode::kHalfAwayFromZero>(x, q, n, scale, zero_point, qmin, qmax);
  }
}

template <typename Q>
void dequantize_entry(const Q* q, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                      int64_t param_stride) {
  if (n <= 0) return;
  if (param_stride) {
    dequantize<Q, true>(q, y, n, scale, zero_point);
  } else {
    dequantize<Q, false>(q, y, n, scale, zero_point);
  }
}

}  // namespace
}  // namespace avx2

// Called by the dispatcher only on a CPU where this ISA was detected (the whole file, this function
// included, is compiled with the ISA's flags).
void fill_avx2_kernels(KernelTable* t) {
  t->abs_max = avx2::abs_max;
  t->abs_max_accumulate = avx2::abs_max_accumulate;
  t->range_with_zero = avx2::range_with_zero;
  t->fake_quant_symmetric = avx2::fake_quant_symmetric;
  t->fake_quant_symmetric_backward = avx2::fake_quant_symmetric_backward;
  t->fake_quant_affine = avx2::fake_quant_affine;
  t->fake_quant_affine_backward = avx2::fake_quant_affine_backward;
  t->fake_quant_affine_mask = avx2::fake_quant_affine_mask;
  t->fake_quant_symmetric_mask = avx2::fake_quant_symmetric_mask;
  t->apply_grad_mask = avx2::apply_grad_mask;
  t->quantize_int8 = avx2::quantize_entry<int8_t>;
  t->quantize_int16 = avx2::quantize_entry<int16_t>;
  t->dequantize_int8 = avx2::dequantize_entry<int8_t>;
  t->dequantize_int16 = avx2::dequantize_entry<int16_t>;
}

}  // namespace pyslim
