// AVX-512 (F + BW + VL + DQ) fake-quantization micro-kernels (-ffp-contract=off).
//
// Same lane-wise operations as the reference and as the AVX2 path (see fake_quant_avx2.cc for the
// exactness notes: operand order of min/max, half-away-from-zero = trunc + copysign(|frac| >= 0.5),
// divisions kept). Tails use masked loads and stores: each step is instantiated with kTail, and a tail
// step zeroes the lanes past n before they reach a sum. No header inline function is called here (ODR:
// see fake_quant_avx2.cc).
// GCC 12 reports its own _mm512_undefined_* idiom (`__m512 __Y = __Y;`) as (maybe-)uninitialized once the
// intrinsics are inlined; the warning is about the compiler's header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "pyslim/kernels.h"

namespace pyslim {
namespace avx512 {
namespace {

constexpr int64_t kW = 16;  // floats per vector
constexpr int64_t kFlushVectors = 1024;  // float additions per lane before moving to double (<= kMaxFloatPartial)
static_assert(kFlushVectors <= kMaxFloatPartial, "float partial sums must stay within the contract");

using Full = std::false_type;
using Tail = std::true_type;

inline __mmask16 tail_mask(int64_t r) { return static_cast<__mmask16>((1u << r) - 1u); }

template <bool kT>
inline __m512 loadf(const float* p, __mmask16 k, float fill = 0.0f) {
  if constexpr (kT) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), k, p);
  } else {
    return _mm512_loadu_ps(p);
  }
}
template <bool kT>
inline void storef(float* p, __mmask16 k, __m512 v) {
  if constexpr (kT) {
    _mm512_mask_storeu_ps(p, k, v);
  } else {
    _mm512_storeu_ps(p, v);
  }
}
// Outputs far larger than the caches are written with non-temporal stores: a regular store first reads the line
// it overwrites (read-for-ownership), so an output stream costs twice its size in memory traffic, and the cache
// would evict it before anyone reads it again anyway. Only spans of at least 8 MiB with a 64-byte aligned output
// (every full vector is then aligned: spans start on multiples of 64 elements); the tail keeps masked stores, and
// the kernel ends with an sfence so that the stores are ordered before the call returns. Same values either way.
constexpr int64_t kStreamFloats = (int64_t{8} << 20) / 4;
inline bool use_stream(const void* p, int64_t n) {
  return n >= kStreamFloats && (reinterpret_cast<uintptr_t>(p) & 63) == 0;
}
template <bool kT>
inline void storef_s(float* p, __mmask16 k, __m512 v, bool stream) {
  if constexpr (!kT) {
    if (stream) {
      _mm512_stream_ps(p, v);
      return;
    }
  }
  storef<kT>(p, k, v);
}
inline void end_stream(bool stream) {
  if (stream) _mm_sfence();
}

template <bool kT>
inline __m512i loadi(const int32_t* p, __mmask16 k) {
  if constexpr (kT) {
    return _mm512_maskz_loadu_epi32(k, p);
  } else {
    return _mm512_loadu_si512(p);
  }
}

inline __m512 neg_ps(__m512 v) { return _mm512_xor_ps(v, _mm512_set1_ps(-0.0f)); }
inline __mmask16 isnan_mask(__m512 v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }

template <RoundMode R>
inline __m512 round_ps(__m512 v) {
  if constexpr (R == RoundMode::kHalfToEven) {
    return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    // std::round = trunc(v) + (|v - trunc(v)| >= 0.5 ? copysign(1, v) : copysign(0, v)).
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 sign = _mm512_and_ps(v, _mm512_set1_ps(-0.0f));
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 step = _mm512_mask_or_ps(sign, up, sign, _mm512_set1_ps(1.0f));
    return _mm512_add_ps(t, step);
  }
}

// kernels.h paddle_inverse, lane-wise.
inline __m512 paddle_inverse_ps(__m512 s) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(s, _mm512_set1_ps(1e-30f), _CMP_LE_OQ);
  const __m512 d = _mm512_mask_add_ps(s, tiny, s, _mm512_set1_ps(1e-6f));
  return _mm512_div_ps(_mm512_set1_ps(1.0f), d);
}

// acc[0..16) += (double)p lane-wise (only lanes in k).
inline void add_to_doubles(double* acc, __m512 p, __mmask16 k) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(p));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1));
  const __mmask8 klo = static_cast<__mmask8>(k & 0xff), khi = static_cast<__mmask8>(k >> 8);
  _mm512_mask_storeu_pd(acc, klo, _mm512_add_pd(_mm512_maskz_loadu_pd(klo, acc), lo));
  _mm512_mask_storeu_pd(acc + 8, khi, _mm512_add_pd(_mm512_maskz_loadu_pd(khi, acc + 8), hi));
}

class SumAcc {
 public:
  void add(__m512 p) {
    f_ = _mm512_add_ps(f_, p);
    if (++count_ == kFlushVectors) flush();
  }
  double total() {
    flush();
    return _mm512_reduce_add_pd(_mm512_add_pd(d0_, d1_));
  }

 private:
  void flush() {
    d0_ = _mm512_add_pd(d0_, _mm512_cvtps_pd(_mm512_castps512_ps256(f_)));
    d1_ = _mm512_add_pd(d1_, _mm512_cvtps_pd(_mm512_extractf32x8_ps(f_, 1)));
    f_ = _mm512_setzero_ps();
    count_ = 0;
  }
  __m512 f_ = _mm512_setzero_ps();
  __m512d d0_ = _mm512_setzero_pd(), d1_ = _mm512_setzero_pd();
  int64_t count_ = 0;
};

// Runs step(i, mask, Full{}) over full vectors (four at a time) and step(i, mask, Tail{}) over the rest.
template <typename Step>
inline void vector_loop(int64_t n, Step&& step) {
  int64_t i = 0;
  const __mmask16 all = 0xffff;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    step(i, all, Full{});
    step(i + kW, all, Full{});
    step(i + 2 * kW, all, Full{});
    step(i + 3 * kW, all, Full{});
  }
  for (; i + kW <= n; i += kW) step(i, all, Full{});
  if (i < n) step(i, tail_mask(n - i), Tail{});
}

// Appends gradient-mask bits to a bit array with the layout of kernels.h (element j of the span is bit
// bit_offset + j): keeps the bits below bit_offset in the first byte, leaves the bits past the span cleared.
// At most 7 bits are ever pending, so put16 always completes exactly two bytes.
class MaskWriter {
 public:
  MaskWriter(uint8_t* bits, int64_t bit_offset)
      : byte_(bits), used_(static_cast<unsigned>(bit_offset)),
        pending_(bit_offset ? static_cast<unsigned>(bits[0]) & ((1u << bit_offset) - 1u) : 0u) {}
  void put16(unsigned b) {
    pending_ |= b << used_;
    const uint16_t done = static_cast<uint16_t>(pending_);
    std::memcpy(byte_, &done, sizeof(done));
    byte_ += 2;
    pending_ >>= 16;
  }
  // The low `count` (<= 16) bits of b.
  void put(unsigned b, int64_t count) {
    pending_ |= (b & ((1u << count) - 1u)) << used_;
    used_ += static_cast<unsigned>(count);
    while (used_ >= 8) {
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
  unsigned pending_;
};

// Appends the keep bits of one vector step: 16 lanes, or the n - i valid lanes of the tail step at i.
template <bool kT>
inline void put_bits(MaskWriter& w, __mmask16 keep, int64_t i, int64_t n) {
  if constexpr (kT) {
    w.put(keep, n - i);
  } else {
    w.put16(keep);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------------------

// Integer max over |x| bit patterns: orders like the values, and every NaN sorts above +Inf.
float abs_max(const float* x, int64_t n) {
  const __m512i abs_bits = _mm512_set1_epi32(0x7fffffff);
  __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  auto bits = [&](const float* p) { return _mm512_and_si512(_mm512_loadu_si512(p), abs_bits); };
  for (; i + 4 * kW <= n; i += 4 * kW) {
    m0 = _mm512_max_epi32(m0, bits(x + i));
    m1 = _mm512_max_epi32(m1, bits(x + i + kW));
    m2 = _mm512_max_epi32(m2, bits(x + i + 2 * kW));
    m3 = _mm512_max_epi32(m3, bits(x + i + 3 * kW));
  }
  for (; i + kW <= n; i += kW) m0 = _mm512_max_epi32(m0, bits(x + i));
  if (i < n) m1 = _mm512_max_epi32(m1, _mm512_maskz_and_epi32(tail_mask(n - i), _mm512_maskz_loadu_epi32(tail_mask(n - i), x + i), abs_bits));
  const int32_t b = _mm512_reduce_max_epi32(_mm512_max_epi32(_mm512_max_epi32(m0, m1), _mm512_max_epi32(m2, m3)));
  float out;
  std::memcpy(&out, &b, sizeof(out));
  return out;
}

// _mm512_min_ps(v, acc) returns acc when v is NaN, so the accumulators stay numbers and NaN is tracked in a
// mask; the masked tail loads zeros (0 is in the range anyway).
void range_with_zero(const float* x, int64_t n, float* lo_out, float* hi_out) {
  __m512 lo0 = _mm512_setzero_ps(), lo1 = lo0, hi0 = lo0, hi1 = lo0;
  __mmask16 nan0 = 0, nan1 = 0;
  int64_t i = 0;
  auto step = [](__m512 v, __m512& lo, __m512& hi, __mmask16& nan) {
    lo = _mm512_min_ps(v, lo);
    hi = _mm512_max_ps(v, hi);
    nan = static_cast<__mmask16>(nan | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
  };
  for (; i + 2 * kW <= n; i += 2 * kW) {
    step(_mm512_loadu_ps(x + i), lo0, hi0, nan0);
    step(_mm512_loadu_ps(x + i + kW), lo1, hi1, nan1);
  }
  for (; i + kW <= n; i += kW) step(_mm512_loadu_ps(x + i), lo0, hi0, nan0);
  if (i < n) step(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i), lo1, hi1, nan1);
  if ((nan0 | nan1) != 0) {
    *lo_out = *hi_out = __builtin_nanf("");
    return;
  }
  *lo_out = _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1));
  *hi_out = _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1));
}

void abs_max_accumulate(const float* x, int64_t n, float* acc) {
  const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000));  // nanf("")
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    const __m512 a = _mm512_abs_ps(loadf<kT>(x + i, k));
    const __m512 c = loadf<kT>(acc + i, k);
    const __m512 m = _mm512_max_ps(a, c);  // a > c ? a : c, as the reference
    storef<kT>(acc + i, k, _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(a, c, _CMP_UNORD_Q), qnan));
  });
}

// ---------------------------------------------------------------------------------------------------------
// Symmetric fake quantization
// ---------------------------------------------------------------------------------------------------------

// kMask: also writes the backward's keep bit of every element (see kernels.h fake_quant_symmetric_mask).
template <bool kPer, RoundMode R, bool kMask>
void fq_symmetric(const float* x, float* y, int64_t n, const float* scale, int32_t bin, uint8_t* mask_bits = nullptr,
                  int64_t bit_offset = 0, GradMask mask = GradMask::kNone) {
  const __m512 fbin = _mm512_set1_ps(static_cast<float>(bin));
  const __m512 s0 = _mm512_set1_ps(scale[0]);
  const __m512 m0 = _mm512_mul_ps(fbin, paddle_inverse_ps(s0));
  const __mmask16 keep_all = mask == GradMask::kNone ? 0xffff : 0;
  const __mmask16 use_le = mask == GradMask::kInclusive ? 0xffff : 0;
  const __mmask16 use_lt = mask == GradMask::kStrict ? 0xffff : 0;
  MaskWriter bits(mask_bits, kMask ? bit_offset : 0);
  const bool stream = use_stream(y, n);
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    __m512 s = s0, m = m0;
    if constexpr (kPer) {
      s = loadf<kT>(scale + i, k, 1.0f);
      m = _mm512_mul_ps(fbin, paddle_inverse_ps(s));
    }
    const __m512 v = loadf<kT>(x + i, k);
    const __m512 clipped = _mm512_min_ps(_mm512_max_ps(v, neg_ps(s)), s);
    const __m512 q = round_ps<R>(_mm512_mul_ps(clipped, m));
    const __m512 out = _mm512_div_ps(_mm512_mul_ps(q, s), fbin);
    storef_s<kT>(y + i, k, _mm512_mask_mov_ps(out, isnan_mask(v), v), stream);
    if constexpr (kMask) {
      const __m512 av = _mm512_abs_ps(v);
      const __mmask16 keep = keep_all | _mm512_mask_cmp_ps_mask(use_le, av, s, _CMP_LE_OQ) |
                             _mm512_mask_cmp_ps_mask(use_lt, av, s, _CMP_LT_OQ);
      put_bits<kT>(bits, keep, i, n);
    }
  });
  if constexpr (kMask) bits.finish();
  end_stream(stream);
}

template <bool kPer, RoundMode R, bool kSum>
void fq_symmetric_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                           int32_t bin, GradMask mask, double* acc) {
  const __m512 fbin = _mm512_set1_ps(static_cast<float>(bin));
  const __m512 s0 = _mm512_set1_ps(scale[0]);
  const __m512 m0 = _mm512_mul_ps(fbin, paddle_inverse_ps(s0));
  const __mmask16 keep_all = mask == GradMask::kNone ? 0xffff : 0;
  const __mmask16 use_le = mask == GradMask::kInclusive ? 0xffff : 0;
  const __mmask16 use_lt = mask == GradMask::kStrict ? 0xffff : 0;
  SumAcc sum;
  const bool stream = use_stream(grad_x, n);
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    __m512 s = s0, m = m0;
    if constexpr (kPer) {
      s = loadf<kT>(scale + i, k, 1.0f);
      if constexpr (kSum) m = _mm512_mul_ps(fbin, paddle_inverse_ps(s));
    }
    const __m512 v = loadf<kT>(x + i, k);
    const __m512 g = loadf<kT>(grad + i, k);
    const __m512 av = _mm512_abs_ps(v);
    const __mmask16 keep = keep_all | _mm512_mask_cmp_ps_mask(use_le, av, s, _CMP_LE_OQ) |
                           _mm512_mask_cmp_ps_mask(use_lt, av, s, _CMP_LT_OQ);
    storef_s<kT>(grad_x + i, k, _mm512_maskz_mov_ps(keep, g), stream);
    if constexpr (kSum) {
      const __m512 u = _mm512_mul_ps(v, m);
      __m512 c = _mm512_div_ps(_mm512_sub_ps(round_ps<R>(u), u), fbin);
      c = _mm512_mask_mov_ps(c, isnan_mask(v), _mm512_setzero_ps());
      c = _mm512_mask_mov_ps(c, _mm512_cmp_ps_mask(v, neg_ps(s), _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
      c = _mm512_mask_mov_ps(c, _mm512_cmp_ps_mask(v, s, _CMP_GT_OQ), _mm512_set1_ps(1.0f));
      const __m512 p = _mm512_maskz_mul_ps(k, g, c);
      if constexpr (kPer) {
        add_to_doubles(acc + i, p, k);
      } else {
        sum.add(p);
      }
    }
  });
  if constexpr (kSum && !kPer) acc[0] += sum.total();
  end_stream(stream);
}

// ---------------------------------------------------------------------------------------------------------
// Affine fake quantization and real quantization
// ---------------------------------------------------------------------------------------------------------

struct Affine {
  __m512 s, zp, inv;
};
inline Affine affine_params(__m512 s, __m512i zp) {
  return {s, _mm512_cvtepi32_ps(zp), _mm512_div_ps(_mm512_set1_ps(1.0f), s)};
}

// Broadcast parameters as plain vector members (see fake_quant_avx2.cc: a nested struct of vectors was
// copied through the stack every iteration).
template <bool kPer>
struct AffineSource {
  __m512 s0, zp0, inv0;
  const float* scale;
  const int32_t* zp;
  AffineSource(const float* s, const int32_t* z) : scale(s), zp(z) {
    const Affine a = affine_params(_mm512_set1_ps(s[0]), _mm512_set1_epi32(z[0]));
    s0 = a.s;
    zp0 = a.zp;
    inv0 = a.inv;
  }
  template <bool kT>
  Affine at(int64_t i, __mmask16 k) const {
    if constexpr (kPer) {
      return affine_params(loadf<kT>(scale + i, k, 1.0f), loadi<kT>(zp + i, k));
    } else {
      return {s0, zp0, inv0};
    }
  }
};

// kMask: also writes the backward's inside bit of every element (see kernels.h fake_quant_affine_mask).
template <bool kPer, RoundMode R, bool kMask>
void fq_affine(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point, int32_t qmin,
               int32_t qmax, uint8_t* mask_bits = nullptr, int64_t bit_offset = 0) {
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin)), hi = _mm512_set1_ps(static_cast<float>(qmax));
  const AffineSource<kPer> src(scale, zero_point);
  MaskWriter bits(mask_bits, kMask ? bit_offset : 0);
  const bool stream = use_stream(y, n);
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    const Affine a = src.template at<kT>(i, k);
    const __m512 v = loadf<kT>(x + i, k);
    const __m512 q = _mm512_add_ps(round_ps<R>(_mm512_mul_ps(v, a.inv)), a.zp);
    const __m512 c = _mm512_min_ps(_mm512_max_ps(q, lo), hi);  // NaN q -> lo, as fmax(q, lo)
    const __m512 out = _mm512_mul_ps(_mm512_sub_ps(c, a.zp), a.s);
    storef_s<kT>(y + i, k, _mm512_mask_mov_ps(out, isnan_mask(v), v), stream);
    if constexpr (kMask) {
      const __mmask16 inside = _mm512_cmp_ps_mask(q, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(q, hi, _CMP_LE_OQ);
      put_bits<kT>(bits, inside, i, n);
    }
  });
  if constexpr (kMask) bits.finish();
  end_stream(stream);
}

// grad_x = mask bit ? grad : 0: the bits of 16 elements are a __mmask16 directly (shifted into place when the
// span starts inside a byte; the third byte read then still holds bits of this span).
template <bool kShift>
void apply_mask(const float* grad, const uint8_t* bits, unsigned shift, float* grad_x, int64_t n) {
  auto word16 = [&](int64_t i) {
    const uint8_t* p = bits + i / 8;
    uint16_t w;
    std::memcpy(&w, p, sizeof(w));
    if constexpr (kShift) return static_cast<__mmask16>((w | (static_cast<unsigned>(p[2]) << 16)) >> shift);
    return static_cast<__mmask16>(w);
  };
  const bool stream = use_stream(grad_x, n);
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    for (int64_t j = i; j < i + 4 * kW; j += kW)
      storef_s<false>(grad_x + j, 0xffff, _mm512_maskz_mov_ps(word16(j), _mm512_loadu_ps(grad + j)), stream);
  }
  for (; i + kW <= n; i += kW)
    storef_s<false>(grad_x + i, 0xffff, _mm512_maskz_mov_ps(word16(i), _mm512_loadu_ps(grad + i)), stream);
  if (i < n) {
    const int64_t r = n - i;
    const uint8_t* p = bits + i / 8;
    const int64_t bytes = (shift + r + 7) / 8;  // only the bytes that hold span bits
    unsigned w = 0;
    for (int64_t b = 0; b < bytes; ++b) w |= static_cast<unsigned>(p[b]) << (8 * b);
    const __mmask16 valid = tail_mask(r);
    const __m512 g = _mm512_maskz_loadu_ps(valid, grad + i);
    _mm512_mask_storeu_ps(grad_x + i, valid, _mm512_maskz_mov_ps(static_cast<__mmask16>(w >> shift), g));
  }
  end_stream(stream);
}

template <bool kPer, RoundMode R, bool kSum>
void fq_affine_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                        const int32_t* zero_point, int32_t qmin, int32_t qmax, GradMask mask, double* acc_s,
                        double* acc_z) {
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin)), hi = _mm512_set1_ps(static_cast<float>(qmax));
  const __mmask16 keep_all = mask == GradMask::kNone ? 0xffff : 0;
  const AffineSource<kPer> src(scale, zero_point);
  SumAcc sum_s, sum_z;
  const bool stream = use_stream(grad_x, n);
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    const Affine a = src.template at<kT>(i, k);
    const __m512 v = loadf<kT>(x + i, k);
    const __m512 g = loadf<kT>(grad + i, k);
    const __m512 u = _mm512_mul_ps(v, a.inv);
    const __m512 r = round_ps<R>(u);
    const __m512 q = _mm512_add_ps(r, a.zp);
    const __mmask16 inside = _mm512_cmp_ps_mask(q, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(q, hi, _CMP_LE_OQ);
    storef_s<kT>(grad_x + i, k, _mm512_maskz_mov_ps(keep_all | inside, g), stream);
    if constexpr (kSum) {
      __m512 c = _mm512_maskz_sub_ps(_mm512_cmp_ps_mask(q, hi, _CMP_GT_OQ), hi, a.zp);
      c = _mm512_mask_sub_ps(c, _mm512_cmp_ps_mask(q, lo, _CMP_LT_OQ), lo, a.zp);
      c = _mm512_mask_sub_ps(c, inside, r, u);
      const __m512 ps = _mm512_maskz_mul_ps(k, g, c);
      const __m512 cz = _mm512_maskz_mov_ps(static_cast<__mmask16>(~(inside | isnan_mask(v))), neg_ps(a.s));
      const __m512 pz = _mm512_maskz_mul_ps(k, g, cz);
      if constexpr (kPer) {
        if (acc_s) add_to_doubles(acc_s + i, ps, k);
        if (acc_z) add_to_doubles(acc_z + i, pz, k);
      } else {
        sum_s.add(ps);
        sum_z.add(pz);
      }
    }
  });
  if constexpr (kSum && !kPer) {
    if (acc_s) acc_s[0] += sum_s.total();
    if (acc_z) acc_z[0] += sum_z.total();
  }
  end_stream(stream);
}

// Narrowing stores truncate (vpmovdb / vpmovdw), as static_cast<Q>(int32_t) wraps.
template <bool kT>
inline void store_narrow(int8_t* p, __mmask16 k, __m512i v) {
  if constexpr (kT) {
    _mm512_mask_cvtepi32_storeu_epi8(p, k, v);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
  }
}
template <bool kT>
inline void store_narrow(int16_t* p, __mmask16 k, __m512i v) {
  if constexpr (kT) {
    _mm512_mask_cvtepi32_storeu_epi16(p, k, v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
  }
}
template <bool kT>
inline __m512i load_widen(const int8_t* p, __mmask16 k) {
  if constexpr (kT) {
    return _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p));
  } else {
    return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}
template <bool kT>
inline __m512i load_widen(const int16_t* p, __mmask16 k) {
  if constexpr (kT) {
    return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, p));
  } else {
    return _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

template <typename Q, bool kPer, RoundMode R>
void quantize(const float* x, Q* out, int64_t n, const float* scale, const int32_t* zero_point, int32_t qmin,
              int32_t qmax) {
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin)), hi = _mm512_set1_ps(static_cast<float>(qmax));
  const AffineSource<kPer> src(scale, zero_point);
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    const Affine a = src.template at<kT>(i, k);
    const __m512 v = loadf<kT>(x + i, k);
    const __m512 q = _mm512_add_ps(round_ps<R>(_mm512_mul_ps(v, a.inv)), a.zp);
    const __m512 c = _mm512_mask_mov_ps(_mm512_min_ps(_mm512_max_ps(q, lo), hi), isnan_mask(v), a.zp);
    store_narrow<kT>(out + i, k, _mm512_cvttps_epi32(c));
  });
}

template <typename Q, bool kPer>
void dequantize(const Q* q, float* y, int64_t n, const float* scale, const int32_t* zero_point) {
  const __m512 s0 = _mm512_set1_ps(scale[0]);
  const __m512i z0 = _mm512_set1_epi32(zero_point[0]);
  vector_loop(n, [&](int64_t i, __mmask16 k, auto tail) {
    constexpr bool kT = decltype(tail)::value;
    __m512 s = s0;
    __m512i z = z0;
    if constexpr (kPer) {
      s = loadf<kT>(scale + i, k, 1.0f);
      z = loadi<kT>(zero_point + i, k);
    }
    const __m512i d = _mm512_sub_epi32(load_widen<kT>(q + i, k), z);
    storef<kT>(y + i, k, _mm512_mul_ps(_mm512_cvtepi32_ps(d), s));
  });
}

// ---------------------------------------------------------------------------------------------------------
// Table entries: runtime arguments -> template instantiations
// ---------------------------------------------------------------------------------------------------------

// Calls fn(std::bool_constant<per>, std::integral_constant<RoundMode, mode>).
template <typename Fn>
inline void dispatch(int64_t param_stride, RoundMode round, Fn&& fn) {
  using Even = std::integral_constant<RoundMode, RoundMode::kHalfToEven>;
  using Away = std::integral_constant<RoundMode, RoundMode::kHalfAwayFromZero>;
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride) {
    even ? fn(std::true_type{}, Even{}) : fn(std::true_type{}, Away{});
  } else {
    even ? fn(std::false_type{}, Even{}) : fn(std::false_type{}, Away{});
  }
}

void fake_quant_symmetric(const float* x, float* y, int64_t n, const float* scale, int64_t param_stride, int32_t bin,
                          RoundMode round) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    fq_symmetric<decltype(per)::value, decltype(mode)::value, false>(x, y, n, scale, bin);
  });
}

void fake_quant_symmetric_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                               const float* scale, int64_t param_stride, int32_t bin, RoundMode round, GradMask mask) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    fq_symmetric<decltype(per)::value, decltype(mode)::value, true>(x, y, n, scale, bin, mask_bits, bit_offset, mask);
  });
}

void fake_quant_symmetric_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                                   int64_t param_stride, int32_t bin, RoundMode round, GradMask mask,
                                   double* grad_scale_acc) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    constexpr bool kPer = decltype(per)::value;
    constexpr RoundMode kMode = decltype(mode)::value;
    if (grad_scale_acc) {
      fq_symmetric_backward<kPer, kMode, true>(x, grad, grad_x, n, scale, bin, mask, grad_scale_acc);
    } else {
      fq_symmetric_backward<kPer, kMode, false>(x, grad, grad_x, n, scale, bin, mask, grad_scale_acc);
    }
  });
}

void fake_quant_affine(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                       int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    fq_affine<decltype(per)::value, decltype(mode)::value, false>(x, y, n, scale, zero_point, qmin, qmax);
  });
}

void fake_quant_affine_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                            const float* scale, const int32_t* zero_point, int64_t param_stride, int32_t qmin,
                            int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    fq_affine<decltype(per)::value, decltype(mode)::value, true>(x, y, n, scale, zero_point, qmin, qmax, mask_bits,
                                                                 bit_offset);
  });
}

void apply_grad_mask(const float* grad, const uint8_t* mask_bits, int64_t bit_offset, float* grad_x, int64_t n) {
  if (n <= 0) return;
  const unsigned shift = static_cast<unsigned>(bit_offset);
  shift ? apply_mask<true>(grad, mask_bits, shift, grad_x, n) : apply_mask<false>(grad, mask_bits, 0, grad_x, n);
}

void fake_quant_affine_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                                const int32_t* zero_point, int64_t param_stride, int32_t qmin, int32_t qmax,
                                RoundMode round, GradMask mask, double* grad_scale_acc, double* grad_zero_point_acc) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    constexpr bool kPer = decltype(per)::value;
    constexpr RoundMode kMode = decltype(mode)::value;
    if (grad_scale_acc || grad_zero_point_acc) {
      fq_affine_backward<kPer, kMode, true>(x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, grad_scale_acc,
                                            grad_zero_point_acc);
    } else {
      fq_affine_backward<kPer, kMode, false>(x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, nullptr,
                                             nullptr);
    }
  });
}

template <typename Q>
void quantize_entry(const float* x, Q* q, int64_t n, const float* scale, const int32_t* zero_point,
                    int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  dispatch(param_stride, round, [&](auto per, auto mode) {
    quantize<Q, decltype(per)::value, decltype(mode)::value>(x, q, n, scale, zero_point, qmin, qmax);
  });
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
}  // namespace avx512

// Called by the dispatcher only on a CPU where this ISA was detected (the whole file, this function
// included, is compiled with the ISA's flags).
void fill_avx512_kernels(KernelTable* t) {
  t->abs_max = avx512::abs_max;
  t->abs_max_accumulate = avx512::abs_max_accumulate;
  t->range_with_zero = avx512::range_with_zero;
  t->fake_quant_symmetric = avx512::fake_quant_symmetric;
  t->fake_quant_symmetric_backward = avx512::fake_quant_symmetric_backward;
  t->fake_quant_affine = avx512::fake_quant_affine;
  t->fake_quant_affine_backward = avx512::fake_quant_affine_backward;
  t->fake_quant_affine_mask = avx512::fake_quant_affine_mask;
  t->fake_quant_symmetric_mask = avx512::fake_quant_symmetric_mask;
  t->apply_grad_mask = avx512::apply_grad_mask;
  t->quantize_int8 = avx512::quantize_entry<int8_t>;
  t->quantize_int16 = avx512::quantize_entry<int16_t>;
  t->dequantize_int8 = avx512::dequantize_entry<int8_t>;
  t->dequantize_int16 = avx512::dequantize_entry<int16_t>;
}

}  // namespace pyslim
