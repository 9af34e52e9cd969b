// aarch64 Advanced SIMD (NEON) fake-quantization micro-kernels, compiled with -march=armv8-a.
//
// Layout: one contiguous span of n float32 elements, 4 lanes per step, a scalar tail for the last n % 4.
// Parameters are broadcast (param_stride 0) or loaded lane by lane (param_stride 1); any other stride,
// which the drivers never pass, falls back to the scalar tail for the whole span.
//
// Exactness: every float output is bit-identical to the reference (fake_quant_reference.cc). The lanes
// perform the reference's IEEE operations in the reference's order, with the instruction the compiler
// emits for the scalar call:
//   std::nearbyint (FE_TONEAREST) -> vrndnq_f32 (frintn, ties to even)
//   std::round                    -> vrndaq_f32 (frinta, ties away from zero)
//   std::fmax / std::fmin         -> vmaxnmq_f32 / vminnmq_f32 (a quiet NaN operand yields the other one;
//                                    vmaxq_f32 would propagate the NaN instead)
//   x / y                         -> vdivq_f32 (never a reciprocal estimate)
// and NaN lanes are overridden exactly where the reference tests std::isnan.
//
// Reductions: grad_scale / grad_zero_point terms are formed in float32 as in the reference, widened to
// double and summed in float64x2 lanes (param_stride 0), so only the order of double additions differs
// from the reference; with param_stride 1 every acc[i] receives exactly the reference's single addition.
#include <arm_neon.h>

#include <cmath>
#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {
namespace neon {
namespace {

constexpr int64_t kLanes = 4;

// ---- lane helpers --------------------------------------------------------------------------------------

template <RoundMode kRound>
inline float32x4_t round_lanes(float32x4_t v) {
  if constexpr (kRound == RoundMode::kHalfToEven) {
    return vrndnq_f32(v);
  } else {
    return vrndaq_f32(v);
  }
}

inline float round_scalar(float v, RoundMode mode) {
  return mode == RoundMode::kHalfToEven ? std::nearbyint(v) : std::round(v);
}

// All-ones in the lanes that hold a NaN.
inline uint32x4_t nan_lanes(float32x4_t v) { return vmvnq_u32(vceqq_f32(v, v)); }

template <bool kPerElement>
inline float32x4_t load_scale(const float* scale, int64_t i) {
  if constexpr (kPerElement) {
    return vld1q_f32(scale + i);
  } else {
    return vdupq_n_f32(scale[0]);
  }
}

// (float)zero_point, converted with the target's round-to-nearest like static_cast<float>.
template <bool kPerElement>
inline float32x4_t load_zero_point(const int32_t* zero_point, int64_t i) {
  if constexpr (kPerElement) {
    return vcvtq_f32_s32(vld1q_s32(zero_point + i));
  } else {
    return vdupq_n_f32(static_cast<float>(zero_point[0]));
  }
}

// PaddleSlim's guarded reciprocal, lane-wise: s <= 1e-30 ? 1 / (s + 1e-6) : 1 / s.
inline float32x4_t paddle_inverse_lanes(float32x4_t s) {
  const uint32x4_t tiny = vcleq_f32(s, vdupq_n_f32(1e-30f));
  const float32x4_t denominator = vbslq_f32(tiny, vaddq_f32(s, vdupq_n_f32(1e-6f)), s);
  return vdivq_f32(vdupq_n_f32(1.0f), denominator);
}

// Widens four float32 terms and adds them into two float64x2 accumulators.
inline void accumulate_double(float32x4_t terms, float64x2_t* low, float64x2_t* high) {
  *low = vaddq_f64(*low, vcvt_f64_f32(vget_low_f32(terms)));
  *high = vaddq_f64(*high, vcvt_high_f64_f32(terms));
}

inline double horizontal_sum(float64x2_t low, float64x2_t high) { return vaddvq_f64(vaddq_f64(low, high)); }

// acc[i..i+3] += (double)terms, one addition per element as in the reference.
inline void add_terms_per_element(float32x4_t terms, double* acc) {
  vst1q_f64(acc, vaddq_f64(vld1q_f64(acc), vcvt_f64_f32(vget_low_f32(terms))));
  vst1q_f64(acc + 2, vaddq_f64(vld1q_f64(acc + 2), vcvt_high_f64_f32(terms)));
}

// ---- reductions ----------------------------------------------------------------------------------------

float abs_max(const float* x, int64_t n) {
  // Four independent maxima hide the latency of fmax; a NaN anywhere is remembered in `any_nan` and
  // resolved at the end by returning |x| of the first NaN, which is what the reference returns.
  float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
  uint32x4_t any_nan = vdupq_n_u32(0);
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    const float32x4_t a0 = vabsq_f32(vld1q_f32(x + i));
    const float32x4_t a1 = vabsq_f32(vld1q_f32(x + i + 4));
    const float32x4_t a2 = vabsq_f32(vld1q_f32(x + i + 8));
    const float32x4_t a3 = vabsq_f32(vld1q_f32(x + i + 12));
    any_nan = vorrq_u32(any_nan, vorrq_u32(vorrq_u32(nan_lanes(a0), nan_lanes(a1)),
                                           vorrq_u32(nan_lanes(a2), nan_lanes(a3))));
    m0 = vmaxq_f32(m0, a0);
    m1 = vmaxq_f32(m1, a1);
    m2 = vmaxq_f32(m2, a2);
    m3 = vmaxq_f32(m3, a3);
  }
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t a = vabsq_f32(vld1q_f32(x + i));
    any_nan = vorrq_u32(any_nan, nan_lanes(a));
    m0 = vmaxq_f32(m0, a);
  }
  float m = vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
  const bool vector_nan = vmaxvq_u32(any_nan) != 0;
  for (; i < n && !vector_nan; ++i) {
    const float a = std::fabs(x[i]);
    if (std::isnan(a)) return a;
    if (a > m) m = a;
  }
  if (vector_nan) {
    for (int64_t j = 0;; ++j) {
      if (std::isnan(x[j])) return std::fabs(x[j]);
    }
  }
  return m;
}

// vminq_f32 / vmaxq_f32 (FMIN / FMAX) return NaN when either input is NaN, so a NaN reaches the result.
void range_with_zero(const float* x, int64_t n, float* lo_out, float* hi_out) {
  float32x4_t lo0 = vdupq_n_f32(0.0f), lo1 = lo0, hi0 = lo0, hi1 = lo0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const float32x4_t v0 = vld1q_f32(x + i), v1 = vld1q_f32(x + i + kLanes);
    lo0 = vminq_f32(lo0, v0);
    lo1 = vminq_f32(lo1, v1);
    hi0 = vmaxq_f32(hi0, v0);
    hi1 = vmaxq_f32(hi1, v1);
  }
  float lo = vminvq_f32(vminq_f32(lo0, lo1)), hi = vmaxvq_f32(vmaxq_f32(hi0, hi1));
  bool nan = std::isnan(lo) || std::isnan(hi);
  for (; i < n; ++i) {
    const float v = x[i];
    nan = nan || std::isnan(v);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  if (nan) lo = hi = std::nanf("");
  *lo_out = lo;
  *hi_out = hi;
}

void abs_max_accumulate(const float* x, int64_t n, float* acc) {
  // Select instead of vmaxq_f32 so that acc keeps its own value on ties (-0 stays -0), as the reference's
  // `if (a > acc) acc = a` does.
  const float32x4_t nan = vdupq_n_f32(std::nanf(""));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t a = vabsq_f32(vld1q_f32(x + i));
    const float32x4_t current = vld1q_f32(acc + i);
    const float32x4_t larger = vbslq_f32(vcgtq_f32(a, current), a, current);
    const uint32x4_t either_nan = vorrq_u32(nan_lanes(a), nan_lanes(current));
    vst1q_f32(acc + i, vbslq_f32(either_nan, nan, larger));
  }
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (std::isnan(a) || std::isnan(acc[i])) {
      acc[i] = std::nanf("");
    } else if (a > acc[i]) {
      acc[i] = a;
    }
  }
}

// ---- symmetric fake quantization -----------------------------------------------------------------------

void fake_quant_symmetric_scalar(const float* x, float* y, int64_t begin, int64_t n, const float* scale,
                                 int64_t param_stride, int32_t bin, RoundMode round) {
  const float fbin = static_cast<float>(bin);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float m = fbin * paddle_inverse(s);
    const float v = x[i];
    const float clipped = std::fmin(std::fmax(v, -s), s);
    const float q = round_scalar(clipped * m, round);
    y[i] = std::isnan(v) ? v : (q * s) / fbin;
  }
}

template <bool kPerElement, RoundMode kRound>
void fake_quant_symmetric_lanes(const float* x, float* y, int64_t n, const float* scale, int32_t bin) {
  const float32x4_t fbin = vdupq_n_f32(static_cast<float>(bin));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t s = load_scale<kPerElement>(scale, i);
    const float32x4_t m = vmulq_f32(fbin, paddle_inverse_lanes(s));
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t clipped = vminnmq_f32(vmaxnmq_f32(v, vnegq_f32(s)), s);
    const float32x4_t q = round_lanes<kRound>(vmulq_f32(clipped, m));
    const float32x4_t out = vdivq_f32(vmulq_f32(q, s), fbin);
    vst1q_f32(y + i, vbslq_f32(nan_lanes(v), v, out));
  }
  fake_quant_symmetric_scalar(x, y, i, n, scale, kPerElement ? 1 : 0, bin, kRound);
}

void fake_quant_symmetric(const float* x, float* y, int64_t n, const float* scale, int64_t param_stride,
                          int32_t bin, RoundMode round) {
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride == 0) {
    even ? fake_quant_symmetric_lanes<false, RoundMode::kHalfToEven>(x, y, n, scale, bin)
         : fake_quant_symmetric_lanes<false, RoundMode::kHalfAwayFromZero>(x, y, n, scale, bin);
  } else if (param_stride == 1) {
    even ? fake_quant_symmetric_lanes<true, RoundMode::kHalfToEven>(x, y, n, scale, bin)
         : fake_quant_symmetric_lanes<true, RoundMode::kHalfAwayFromZero>(x, y, n, scale, bin);
  } else {
    fake_quant_symmetric_scalar(x, y, 0, n, scale, param_stride, bin, round);
  }
}

void fake_quant_symmetric_backward_scalar(const float* x, const float* grad, float* grad_x, int64_t begin,
                                          int64_t n, const float* scale, int64_t param_stride, int32_t bin,
                                          RoundMode round, GradMask mask, double* grad_scale_acc) {
  const float fbin = static_cast<float>(bin);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float v = x[i];
    const float g = grad[i];
    bool keep = true;
    if (mask == GradMask::kInclusive) keep = std::fabs(v) <= s;
    if (mask == GradMask::kStrict) keep = std::fabs(v) < s;
    grad_x[i] = keep ? g : 0.0f;
    if (grad_scale_acc != nullptr) {
      float c;
      if (v > s) {
        c = 1.0f;
      } else if (v < -s) {
        c = -1.0f;
      } else if (std::isnan(v)) {
        c = 0.0f;
      } else {
        const float m = fbin * paddle_inverse(s);
        const float u = v * m;
        c = (round_scalar(u, round) - u) / fbin;
      }
      grad_scale_acc[i * param_stride] += static_cast<double>(g * c);
    }
  }
}

// The lanes of grad_x kept by the mask (NaN x is never kept by a clipping mask).
inline uint32x4_t symmetric_keep(float32x4_t v, float32x4_t s, GradMask mask) {
  switch (mask) {
    case GradMask::kInclusive:
      return vcleq_f32(vabsq_f32(v), s);
    case GradMask::kStrict:
      return vcltq_f32(vabsq_f32(v), s);
    case GradMask::kNone:
    default:
      return vdupq_n_u32(~0u);
  }
}

template <bool kPerElement, RoundMode kRound, bool kScaleGrad>
void fake_quant_symmetric_backward_lanes(const float* x, const float* grad, float* grad_x, int64_t n,
                                         const float* scale, int32_t bin, GradMask mask,
                                         double* grad_scale_acc) {
  const float32x4_t fbin = vdupq_n_f32(static_cast<float>(bin));
  const float32x4_t zero = vdupq_n_f32(0.0f), one = vdupq_n_f32(1.0f), minus_one = vdupq_n_f32(-1.0f);
  float64x2_t sum_low = vdupq_n_f64(0.0), sum_high = vdupq_n_f64(0.0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t s = load_scale<kPerElement>(scale, i);
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t g = vld1q_f32(grad + i);
    vst1q_f32(grad_x + i, vbslq_f32(symmetric_keep(v, s, mask), g, zero));
    if constexpr (kScaleGrad) {
      const float32x4_t m = vmulq_f32(fbin, paddle_inverse_lanes(s));
      const float32x4_t u = vmulq_f32(v, m);
      const float32x4_t inside = vdivq_f32(vsubq_f32(round_lanes<kRound>(u), u), fbin);
      // Lowest priority first, so that the reference's first matching branch wins.
      float32x4_t c = vbslq_f32(nan_lanes(v), zero, inside);
      c = vbslq_f32(vcltq_f32(v, vnegq_f32(s)), minus_one, c);
      c = vbslq_f32(vcgtq_f32(v, s), one, c);
      const float32x4_t terms = vmulq_f32(g, c);
      if constexpr (kPerElement) {
        add_terms_per_element(terms, grad_scale_acc + i);
      } else {
        accumulate_double(terms, &sum_low, &sum_high);
      }
    }
  }
  if constexpr (kScaleGrad && !kPerElement) grad_scale_acc[0] += horizontal_sum(sum_low, sum_high);
  fake_quant_symmetric_backward_scalar(x, grad, grad_x, i, n, scale, kPerElement ? 1 : 0, bin, kRound, mask,
                                       grad_scale_acc);
}

template <bool kPerElement, RoundMode kRound>
void fake_quant_symmetric_backward_round(const float* x, const float* grad, float* grad_x, int64_t n,
                                         const float* scale, int32_t bin, GradMask mask, double* grad_scale_acc) {
  if (grad_scale_acc != nullptr) {
    fake_quant_symmetric_backward_lanes<kPerElement, kRound, true>(x, grad, grad_x, n, scale, bin, mask,
                                                                   grad_scale_acc);
  } else {
    fake_quant_symmetric_backward_lanes<kPerElement, kRound, false>(x, grad, grad_x, n, scale, bin, mask,
                                                                    nullptr);
  }
}

template <bool kPerElement>
void fake_quant_symmetric_backward_stride(const float* x, const float* grad, float* grad_x, int64_t n,
                                          const float* scale, int32_t bin, RoundMode round, GradMask mask,
                                          double* grad_scale_acc) {
  if (round == RoundMode::kHalfToEven) {
    fake_quant_symmetric_backward_round<kPerElement, RoundMode::kHalfToEven>(x, grad, grad_x, n, scale, bin, mask,
                                                                             grad_scale_acc);
  } else {
    fake_quant_symmetric_backward_round<kPerElement, RoundMode::kHalfAwayFromZero>(x, grad, grad_x, n, scale, bin,
                                                                                   mask, grad_scale_acc);
  }
}

void fake_quant_symmetric_backward(const float* x, const float* grad, float* grad_x, int64_t n,
                                   const float* scale, int64_t param_stride, int32_t bin, RoundMode round,
                                   GradMask mask, double* grad_scale_acc) {
  if (param_stride == 0) {
    fake_quant_symmetric_backward_stride<false>(x, grad, grad_x, n, scale, bin, round, mask, grad_scale_acc);
  } else if (param_stride == 1) {
    fake_quant_symmetric_backward_stride<true>(x, grad, grad_x, n, scale, bin, round, mask, grad_scale_acc);
  } else {
    fake_quant_symmetric_backward_scalar(x, grad, grad_x, 0, n, scale, param_stride, bin, round, mask,
                                         grad_scale_acc);
  }
}

// ---- affine fake quantization --------------------------------------------------------------------------

void fake_quant_affine_scalar(const float* x, float* y, int64_t begin, int64_t n, const float* scale,
                              const int32_t* zero_point, int64_t param_stride, int32_t qmin, int32_t qmax,
                              RoundMode round) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float inv = 1.0f / s;
    const float v = x[i];
    const float q = round_scalar(v * inv, round) + zp;
    const float c = std::fmin(std::fmax(q, lo), hi);
    y[i] = std::isnan(v) ? v : (c - zp) * s;
  }
}

template <bool kPerElement, RoundMode kRound>
void fake_quant_affine_lanes(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                             int32_t qmin, int32_t qmax) {
  const float32x4_t lo = vdupq_n_f32(static_cast<float>(qmin)), hi = vdupq_n_f32(static_cast<float>(qmax));
  const float32x4_t one = vdupq_n_f32(1.0f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t s = load_scale<kPerElement>(scale, i);
    const float32x4_t zp = load_zero_point<kPerElement>(zero_point, i);
    const float32x4_t inv = vdivq_f32(one, s);
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t q = vaddq_f32(round_lanes<kRound>(vmulq_f32(v, inv)), zp);
    const float32x4_t c = vminnmq_f32(vmaxnmq_f32(q, lo), hi);
    const float32x4_t out = vmulq_f32(vsubq_f32(c, zp), s);
    vst1q_f32(y + i, vbslq_f32(nan_lanes(v), v, out));
  }
  fake_quant_affine_scalar(x, y, i, n, scale, zero_point, kPerElement ? 1 : 0, qmin, qmax, kRound);
}

void fake_quant_affine(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                       int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride == 0) {
    even ? fake_quant_affine_lanes<false, RoundMode::kHalfToEven>(x, y, n, scale, zero_point, qmin, qmax)
         : fake_quant_affine_lanes<false, RoundMode::kHalfAwayFromZero>(x, y, n, scale, zero_point, qmin, qmax);
  } else if (param_stride == 1) {
    even ? fake_quant_affine_lanes<true, RoundMode::kHalfToEven>(x, y, n, scale, zero_point, qmin, qmax)
         : fake_quant_affine_lanes<true, RoundMode::kHalfAwayFromZero>(x, y, n, scale, zero_point, qmin, qmax);
  } else {
    fake_quant_affine_scalar(x, y, 0, n, scale, zero_point, param_stride, qmin, qmax, round);
  }
}

void fake_quant_affine_backward_scalar(const float* x, const float* grad, float* grad_x, int64_t begin, int64_t n,
                                       const float* scale, const int32_t* zero_point, int64_t param_stride,
                                       int32_t qmin, int32_t qmax, RoundMode round, GradMask mask,
                                       double* grad_scale_acc, double* grad_zero_point_acc) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float inv = 1.0f / s;
    const float v = x[i];
    const float g = grad[i];
    const float u = v * inv;
    const float r = round_scalar(u, round);
    const float q = r + zp;
    const bool inside = (q >= lo) && (q <= hi);  // false for NaN
    grad_x[i] = (mask == GradMask::kNone || inside) ? g : 0.0f;
    if (grad_scale_acc != nullptr) {
      float c = 0.0f;
      if (inside) {
        c = r - u;
      } else if (q < lo) {
        c = lo - zp;
      } else if (q > hi) {
        c = hi - zp;
      }
      grad_scale_acc[i * param_stride] += static_cast<double>(g * c);
    }
    if (grad_zero_point_acc != nullptr) {
      const float c = (inside || std::isnan(v)) ? 0.0f : -s;
      grad_zero_point_acc[i * param_stride] += static_cast<double>(g * c);
    }
  }
}

template <bool kPerElement, RoundMode kRound, bool kScaleGrad, bool kZeroPointGrad>
void fake_quant_affine_backward_lanes(const float* x, const float* grad, float* grad_x, int64_t n,
                                      const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax,
                                      GradMask mask, double* grad_scale_acc, double* grad_zero_point_acc) {
  const float32x4_t lo = vdupq_n_f32(static_cast<float>(qmin)), hi = vdupq_n_f32(static_cast<float>(qmax));
  const float32x4_t zero = vdupq_n_f32(0.0f), one = vdupq_n_f32(1.0f);
  const uint32x4_t keep_all = vdupq_n_u32(mask == GradMask::kNone ? ~0u : 0u);
  float64x2_t scale_low = vdupq_n_f64(0.0), scale_high = scale_low;
  float64x2_t zero_point_low = scale_low, zero_point_high = scale_low;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t s = load_scale<kPerElement>(scale, i);
    const float32x4_t zp = load_zero_point<kPerElement>(zero_point, i);
    const float32x4_t inv = vdivq_f32(one, s);
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t g = vld1q_f32(grad + i);
    const float32x4_t u = vmulq_f32(v, inv);
    const float32x4_t r = round_lanes<kRound>(u);
    const float32x4_t q = vaddq_f32(r, zp);
    const uint32x4_t below = vcltq_f32(q, lo), above = vcgtq_f32(q, hi);
    const uint32x4_t inside = vandq_u32(vcgeq_f32(q, lo), vcleq_f32(q, hi));  // false for NaN
    vst1q_f32(grad_x + i, vbslq_f32(vorrq_u32(keep_all, inside), g, zero));
    if constexpr (kScaleGrad) {
      float32x4_t c = vbslq_f32(above, vsubq_f32(hi, zp), zero);
      c = vbslq_f32(below, vsubq_f32(lo, zp), c);
      c = vbslq_f32(inside, vsubq_f32(r, u), c);
      const float32x4_t terms = vmulq_f32(g, c);
      if constexpr (kPerElement) {
        add_terms_per_element(terms, grad_scale_acc + i);
      } else {
        accumulate_double(terms, &scale_low, &scale_high);
      }
    }
    if constexpr (kZeroPointGrad) {
      const float32x4_t c = vbslq_f32(vorrq_u32(inside, nan_lanes(v)), zero, vnegq_f32(s));
      const float32x4_t terms = vmulq_f32(g, c);
      if constexpr (kPerElement) {
        add_terms_per_element(terms, grad_zero_point_acc + i);
      } else {
        accumulate_double(terms, &zero_point_low, &zero_point_high);
      }
    }
  }
  if constexpr (!kPerElement) {
    if constexpr (kScaleGrad) grad_scale_acc[0] += horizontal_sum(scale_low, scale_high);
    if constexpr (kZeroPointGrad) grad_zero_point_acc[0] += horizontal_sum(zero_point_low, zero_point_high);
  }
  fake_quant_affine_backward_scalar(x, grad, grad_x, i, n, scale, zero_point, kPerElement ? 1 : 0, qmin, qmax,
                                    kRound, mask, grad_scale_acc, grad_zero_point_acc);
}

template <bool kPerElement, RoundMode kRound>
void fake_quant_affine_backward_round(const float* x, const float* grad, float* grad_x, int64_t n,
                                      const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax,
                                      GradMask mask, double* grad_scale_acc, double* grad_zero_point_acc) {
  const bool want_scale = grad_scale_acc != nullptr, want_zero_point = grad_zero_point_acc != nullptr;
  if (want_scale && want_zero_point) {
    fake_quant_affine_backward_lanes<kPerElement, kRound, true, true>(
        x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, grad_scale_acc, grad_zero_point_acc);
  } else if (want_scale) {
    fake_quant_affine_backward_lanes<kPerElement, kRound, true, false>(
        x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, grad_scale_acc, nullptr);
  } else if (want_zero_point) {
    fake_quant_affine_backward_lanes<kPerElement, kRound, false, true>(
        x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, nullptr, grad_zero_point_acc);
  } else {
    fake_quant_affine_backward_lanes<kPerElement, kRound, false, false>(x, grad, grad_x, n, scale, zero_point, qmin,
                                                                        qmax, mask, nullptr, nullptr);
  }
}

template <bool kPerElement>
void fake_quant_affine_backward_stride(const float* x, const float* grad, float* grad_x, int64_t n,
                                       const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax,
                                       RoundMode round, GradMask mask, double* grad_scale_acc,
                                       double* grad_zero_point_acc) {
  if (round == RoundMode::kHalfToEven) {
    fake_quant_affine_backward_round<kPerElement, RoundMode::kHalfToEven>(
        x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, grad_scale_acc, grad_zero_point_acc);
  } else {
    fake_quant_affine_backward_round<kPerElement, RoundMode::kHalfAwayFromZero>(
        x, grad, grad_x, n, scale, zero_point, qmin, qmax, mask, grad_scale_acc, grad_zero_point_acc);
  }
}

void fake_quant_affine_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                                const int32_t* zero_point, int64_t param_stride, int32_t qmin, int32_t qmax,
                                RoundMode round, GradMask mask, double* grad_scale_acc,
                                double* grad_zero_point_acc) {
  if (param_stride == 0) {
    fake_quant_affine_backward_stride<false>(x, grad, grad_x, n, scale, zero_point, qmin, qmax, round, mask,
                                             grad_scale_acc, grad_zero_point_acc);
  } else if (param_stride == 1) {
    fake_quant_affine_backward_stride<true>(x, grad, grad_x, n, scale, zero_point, qmin, qmax, round, mask,
                                            grad_scale_acc, grad_zero_point_acc);
  } else {
    fake_quant_affine_backward_scalar(x, grad, grad_x, 0, n, scale, zero_point, param_stride, qmin, qmax, round,
                                      mask, grad_scale_acc, grad_zero_point_acc);
  }
}

// ---- real quantization ---------------------------------------------------------------------------------

template <typename Q>
void quantize_scalar(const float* x, Q* out, int64_t begin, int64_t n, const float* scale,
                     const int32_t* zero_point, int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float v = x[i];
    const float q = round_scalar(v * (1.0f / s), round) + zp;
    const float c = std::isnan(v) ? zp : std::fmin(std::fmax(q, lo), hi);
    out[i] = static_cast<Q>(static_cast<int32_t>(c));
  }
}

// Four clamped codes as int32 (c is integral and inside [qmin, qmax], so the truncating convert is exact).
template <bool kPerElement, RoundMode kRound>
inline int32x4_t quantize_lanes(const float* x, int64_t i, const float* scale, const int32_t* zero_point,
                                float32x4_t lo, float32x4_t hi) {
  const float32x4_t s = load_scale<kPerElement>(scale, i);
  const float32x4_t zp = load_zero_point<kPerElement>(zero_point, i);
  const float32x4_t v = vld1q_f32(x + i);
  const float32x4_t q = vaddq_f32(round_lanes<kRound>(vmulq_f32(v, vdivq_f32(vdupq_n_f32(1.0f), s))), zp);
  const float32x4_t c = vbslq_f32(nan_lanes(v), zp, vminnmq_f32(vmaxnmq_f32(q, lo), hi));
  return vcvtq_s32_f32(c);
}

// The narrowing moves truncate (keep the low bits) like static_cast<Q>(int32_t); they never saturate.
template <bool kPerElement, RoundMode kRound>
void quantize_int8_lanes(const float* x, int8_t* out, int64_t n, const float* scale, const int32_t* zero_point,
                         int32_t qmin, int32_t qmax) {
  const float32x4_t lo = vdupq_n_f32(static_cast<float>(qmin)), hi = vdupq_n_f32(static_cast<float>(qmax));
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const int16x4_t low = vmovn_s32(quantize_lanes<kPerElement, kRound>(x, i, scale, zero_point, lo, hi));
    const int16x4_t high = vmovn_s32(quantize_lanes<kPerElement, kRound>(x, i + 4, scale, zero_point, lo, hi));
    vst1_s8(out + i, vmovn_s16(vcombine_s16(low, high)));
  }
  quantize_scalar<int8_t>(x, out, i, n, scale, zero_point, kPerElement ? 1 : 0, qmin, qmax, kRound);
}

template <bool kPerElement, RoundMode kRound>
void quantize_int16_lanes(const float* x, int16_t* out, int64_t n, const float* scale, const int32_t* zero_point,
                          int32_t qmin, int32_t qmax) {
  const float32x4_t lo = vdupq_n_f32(static_cast<float>(qmin)), hi = vdupq_n_f32(static_cast<float>(qmax));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vst1_s16(out + i, vmovn_s32(quantize_lanes<kPerElement, kRound>(x, i, scale, zero_point, lo, hi)));
  }
  quantize_scalar<int16_t>(x, out, i, n, scale, zero_point, kPerElement ? 1 : 0, qmin, qmax, kRound);
}

template <typename Q, bool kPerElement, RoundMode kRound>
void quantize_dispatch_lanes(const float* x, Q* out, int64_t n, const float* scale, const int32_t* zero_point,
                             int32_t qmin, int32_t qmax) {
  if constexpr (sizeof(Q) == 1) {
    quantize_int8_lanes<kPerElement, kRound>(x, out, n, scale, zero_point, qmin, qmax);
  } else {
    quantize_int16_lanes<kPerElement, kRound>(x, out, n, scale, zero_point, qmin, qmax);
  }
}

template <typename Q>
void quantize(const float* x, Q* out, int64_t n, const float* scale, const int32_t* zero_point, int64_t param_stride,
              int32_t qmin, int32_t qmax, RoundMode round) {
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride == 0) {
    even ? quantize_dispatch_lanes<Q, false, RoundMode::kHalfToEven>(x, out, n, scale, zero_point, qmin, qmax)
         : quantize_dispatch_lanes<Q, false, RoundMode::kHalfAwayFromZero>(x, out, n, scale, zero_point, qmin, qmax);
  } else if (param_stride == 1) {
    even ? quantize_dispatch_lanes<Q, true, RoundMode::kHalfToEven>(x, out, n, scale, zero_point, qmin, qmax)
         : quantize_dispatch_lanes<Q, true, RoundMode::kHalfAwayFromZero>(x, out, n, scale, zero_point, qmin, qmax);
  } else {
    quantize_scalar<Q>(x, out, 0, n, scale, zero_point, param_stride, qmin, qmax, round);
  }
}

// ---- dequantization ------------------------------------------------------------------------------------

template <typename Q>
void dequantize_scalar(const Q* q, float* y, int64_t begin, int64_t n, const float* scale, const int32_t* zero_point,
                       int64_t param_stride) {
  for (int64_t i = begin; i < n; ++i) {
    const int32_t d = static_cast<int32_t>(q[i]) - zero_point[i * param_stride];
    y[i] = static_cast<float>(d) * scale[i * param_stride];
  }
}

template <bool kPerElement>
inline int32x4_t load_zero_point_int(const int32_t* zero_point, int64_t i) {
  if constexpr (kPerElement) {
    return vld1q_s32(zero_point + i);
  } else {
    return vdupq_n_s32(zero_point[0]);
  }
}

// y = (float)(q - zp) * s for four codes already widened to int32.
template <bool kPerElement>
inline void dequantize_lanes(int32x4_t codes, float* y, int64_t i, const float* scale, const int32_t* zero_point) {
  const int32x4_t d = vsubq_s32(codes, load_zero_point_int<kPerElement>(zero_point, i));
  vst1q_f32(y + i, vmulq_f32(vcvtq_f32_s32(d), load_scale<kPerElement>(scale, i)));
}

template <bool kPerElement>
void dequantize_int8_lanes(const int8_t* q, float* y, int64_t n, const float* scale, const int32_t* zero_point) {
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const int16x8_t wide = vmovl_s8(vld1_s8(q + i));
    dequantize_lanes<kPerElement>(vmovl_s16(vget_low_s16(wide)), y, i, scale, zero_point);
    dequantize_lanes<kPerElement>(vmovl_high_s16(wide), y, i + 4, scale, zero_point);
  }
  dequantize_scalar<int8_t>(q, y, i, n, scale, zero_point, kPerElement ? 1 : 0);
}

template <bool kPerElement>
void dequantize_int16_lanes(const int16_t* q, float* y, int64_t n, const float* scale, const int32_t* zero_point) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    dequantize_lanes<kPerElement>(vmovl_s16(vld1_s16(q + i)), y, i, scale, zero_point);
  }
  dequantize_scalar<int16_t>(q, y, i, n, scale, zero_point, kPerElement ? 1 : 0);
}

void dequantize_int8(const int8_t* q, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                     int64_t param_stride) {
  if (param_stride == 0) {
    dequantize_int8_lanes<false>(q, y, n, scale, zero_point);
  } else if (param_stride == 1) {
    dequantize_int8_lanes<true>(q, y, n, scale, zero_point);
  } else {
    dequantize_scalar<int8_t>(q, y, 0, n, scale, zero_point, param_stride);
  }
}

void dequantize_int16(const int16_t* q, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                      int64_t param_stride) {
  if (param_stride == 0) {
    dequantize_int16_lanes<false>(q, y, n, scale, zero_point);
  } else if (param_stride == 1) {
    dequantize_int16_lanes<true>(q, y, n, scale, zero_point);
  } else {
    dequantize_scalar<int16_t>(q, y, 0, n, scale, zero_point, param_stride);
  }
}

// ---- forward + gradient-mask bits, and the backward that reads them --------------------------------------
//
// Bit layout of kernels.h: element j of the span is bit bit_offset + j, least significant first. Eight lanes
// (two compare results) are narrowed to eight bytes of 0x00/0xff, weighted by their bit value and summed
// across the vector into one mask byte; the backward expands a byte with vtst against the same weights and
// widens the 0x00/0xff bytes (sign extension) into 32-bit lane masks.

// Lane l holds 1 << l (lane 0 is the least significant byte).
inline uint8x8_t lane_bit_weights() { return vcreate_u8(0x8040201008040201ull); }

// The keep bits of eight lanes (k0: lanes 0-3, k1: lanes 4-7; each lane all-ones or zero).
inline unsigned pack_keep_bits(uint32x4_t k0, uint32x4_t k1, uint8x8_t weights) {
  const uint8x8_t bytes = vmovn_u16(vcombine_u16(vmovn_u32(k0), vmovn_u32(k1)));
  return vaddv_u8(vand_u8(bytes, weights));
}

// All-ones 32-bit lanes where bits 0-3 (low) / 4-7 (high) of `byte` are set.
inline void expand_keep_bits(unsigned byte, uint8x8_t weights, uint32x4_t* low, uint32x4_t* high) {
  const uint8x8_t set = vtst_u8(vdup_n_u8(static_cast<uint8_t>(byte)), weights);
  const int16x8_t wide = vmovl_s8(vreinterpret_s8_u8(set));
  *low = vreinterpretq_u32_s32(vmovl_s16(vget_low_s16(wide)));
  *high = vreinterpretq_u32_s32(vmovl_high_s16(wide));
}

// Appends mask bits; keeps the bits below bit_offset of the first byte and leaves the bits past the span
// cleared. At most 7 bits are pending, so put8 completes exactly one byte.
class MaskWriter {
 public:
  MaskWriter(uint8_t* bits, int64_t bit_offset)
      : byte_(bits), used_(static_cast<unsigned>(bit_offset)),
        pending_(bit_offset ? static_cast<unsigned>(bits[0]) & ((1u << bit_offset) - 1u) : 0u) {}
  void put8(unsigned b) {
    pending_ |= b << used_;
    *byte_++ = static_cast<uint8_t>(pending_);
    pending_ >>= 8;
  }
  // The low `count` (<= 8) bits of b.
  void put(unsigned b, int64_t count) {
    pending_ |= (b & ((1u << count) - 1u)) << used_;
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
  unsigned pending_;
};

inline bool symmetric_keep_scalar(float v, float s, GradMask mask) {
  if (mask == GradMask::kInclusive) return std::fabs(v) <= s;
  if (mask == GradMask::kStrict) return std::fabs(v) < s;
  return true;
}

// Elements [begin, n) one at a time, exactly as the reference.
void fake_quant_affine_mask_scalar(const float* x, float* y, MaskWriter* bits, int64_t begin, int64_t n,
                                   const float* scale, const int32_t* zero_point, int64_t param_stride, int32_t qmin,
                                   int32_t qmax, RoundMode round) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float v = x[i];
    const float q = round_scalar(v * (1.0f / s), round) + zp;
    const float c = std::fmin(std::fmax(q, lo), hi);
    y[i] = std::isnan(v) ? v : (c - zp) * s;
    bits->put((q >= lo) && (q <= hi), 1);
  }
}

template <bool kPerElement, RoundMode kRound>
void fake_quant_affine_mask_lanes(const float* x, float* y, MaskWriter* bits, int64_t n, const float* scale,
                                  const int32_t* zero_point, int32_t qmin, int32_t qmax) {
  const float32x4_t lo = vdupq_n_f32(static_cast<float>(qmin)), hi = vdupq_n_f32(static_cast<float>(qmax));
  const float32x4_t one = vdupq_n_f32(1.0f);
  const uint8x8_t weights = lane_bit_weights();
  // y of lanes [i, i + 4); returns the inside lanes.
  auto step = [&](int64_t i) {
    const float32x4_t s = load_scale<kPerElement>(scale, i);
    const float32x4_t zp = load_zero_point<kPerElement>(zero_point, i);
    const float32x4_t inv = vdivq_f32(one, s);
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t q = vaddq_f32(round_lanes<kRound>(vmulq_f32(v, inv)), zp);
    const float32x4_t c = vminnmq_f32(vmaxnmq_f32(q, lo), hi);
    const float32x4_t out = vmulq_f32(vsubq_f32(c, zp), s);
    vst1q_f32(y + i, vbslq_f32(nan_lanes(v), v, out));
    return vandq_u32(vcgeq_f32(q, lo), vcleq_f32(q, hi));  // false for NaN
  };
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const uint32x4_t k0 = step(i);
    const uint32x4_t k1 = step(i + kLanes);
    bits->put8(pack_keep_bits(k0, k1, weights));
  }
  if (i + kLanes <= n) {
    bits->put(pack_keep_bits(step(i), vdupq_n_u32(0), weights), kLanes);
    i += kLanes;
  }
  fake_quant_affine_mask_scalar(x, y, bits, i, n, scale, zero_point, kPerElement ? 1 : 0, qmin, qmax, kRound);
}

void fake_quant_affine_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                            const float* scale, const int32_t* zero_point, int64_t param_stride, int32_t qmin,
                            int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  MaskWriter bits(mask_bits, bit_offset);
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride == 0) {
    even ? fake_quant_affine_mask_lanes<false, RoundMode::kHalfToEven>(x, y, &bits, n, scale, zero_point, qmin, qmax)
         : fake_quant_affine_mask_lanes<false, RoundMode::kHalfAwayFromZero>(x, y, &bits, n, scale, zero_point, qmin,
                                                                             qmax);
  } else if (param_stride == 1) {
    even ? fake_quant_affine_mask_lanes<true, RoundMode::kHalfToEven>(x, y, &bits, n, scale, zero_point, qmin, qmax)
         : fake_quant_affine_mask_lanes<true, RoundMode::kHalfAwayFromZero>(x, y, &bits, n, scale, zero_point, qmin,
                                                                            qmax);
  } else {
    fake_quant_affine_mask_scalar(x, y, &bits, 0, n, scale, zero_point, param_stride, qmin, qmax, round);
  }
  bits.finish();
}

void fake_quant_symmetric_mask_scalar(const float* x, float* y, MaskWriter* bits, int64_t begin, int64_t n,
                                      const float* scale, int64_t param_stride, int32_t bin, RoundMode round,
                                      GradMask mask) {
  const float fbin = static_cast<float>(bin);
  for (int64_t i = begin; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float m = fbin * paddle_inverse(s);
    const float v = x[i];
    const float clipped = std::fmin(std::fmax(v, -s), s);
    const float q = round_scalar(clipped * m, round);
    y[i] = std::isnan(v) ? v : (q * s) / fbin;
    bits->put(symmetric_keep_scalar(v, s, mask), 1);
  }
}

template <bool kPerElement, RoundMode kRound>
void fake_quant_symmetric_mask_lanes(const float* x, float* y, MaskWriter* bits, int64_t n, const float* scale,
                                     int32_t bin, GradMask mask) {
  const float32x4_t fbin = vdupq_n_f32(static_cast<float>(bin));
  const uint8x8_t weights = lane_bit_weights();
  auto step = [&](int64_t i) {
    const float32x4_t s = load_scale<kPerElement>(scale, i);
    const float32x4_t m = vmulq_f32(fbin, paddle_inverse_lanes(s));
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t clipped = vminnmq_f32(vmaxnmq_f32(v, vnegq_f32(s)), s);
    const float32x4_t q = round_lanes<kRound>(vmulq_f32(clipped, m));
    const float32x4_t out = vdivq_f32(vmulq_f32(q, s), fbin);
    vst1q_f32(y + i, vbslq_f32(nan_lanes(v), v, out));
    return symmetric_keep(v, s, mask);
  };
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const uint32x4_t k0 = step(i);
    const uint32x4_t k1 = step(i + kLanes);
    bits->put8(pack_keep_bits(k0, k1, weights));
  }
  if (i + kLanes <= n) {
    bits->put(pack_keep_bits(step(i), vdupq_n_u32(0), weights), kLanes);
    i += kLanes;
  }
  fake_quant_symmetric_mask_scalar(x, y, bits, i, n, scale, kPerElement ? 1 : 0, bin, kRound, mask);
}

void fake_quant_symmetric_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                               const float* scale, int64_t param_stride, int32_t bin, RoundMode round, GradMask mask) {
  if (n <= 0) return;
  MaskWriter bits(mask_bits, bit_offset);
  const bool even = round == RoundMode::kHalfToEven;
  if (param_stride == 0) {
    even ? fake_quant_symmetric_mask_lanes<false, RoundMode::kHalfToEven>(x, y, &bits, n, scale, bin, mask)
         : fake_quant_symmetric_mask_lanes<false, RoundMode::kHalfAwayFromZero>(x, y, &bits, n, scale, bin, mask);
  } else if (param_stride == 1) {
    even ? fake_quant_symmetric_mask_lanes<true, RoundMode::kHalfToEven>(x, y, &bits, n, scale, bin, mask)
         : fake_quant_symmetric_mask_lanes<true, RoundMode::kHalfAwayFromZero>(x, y, &bits, n, scale, bin, mask);
  } else {
    fake_quant_symmetric_mask_scalar(x, y, &bits, 0, n, scale, param_stride, bin, round, mask);
  }
  bits.finish();
}

// grad_x = mask bit ? grad : 0, eight elements per mask byte (shifted into place when the span starts inside
// a byte; the second byte read then still holds bits of this span).
template <bool kShift>
void apply_mask_lanes(const float* grad, const uint8_t* bits, unsigned shift, float* grad_x, int64_t n) {
  const uint8x8_t weights = lane_bit_weights();
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const uint8_t* p = bits + i / 8;
    unsigned b = p[0];
    if constexpr (kShift) b = (b | (static_cast<unsigned>(p[1]) << 8)) >> shift;
    uint32x4_t k0, k1;
    expand_keep_bits(b, weights, &k0, &k1);
    vst1q_f32(grad_x + i, vreinterpretq_f32_u32(vandq_u32(k0, vreinterpretq_u32_f32(vld1q_f32(grad + i)))));
    vst1q_f32(grad_x + i + kLanes,
              vreinterpretq_f32_u32(vandq_u32(k1, vreinterpretq_u32_f32(vld1q_f32(grad + i + kLanes)))));
  }
  for (; i < n; ++i) {
    const int64_t b = shift + i;
    grad_x[i] = ((bits[b / 8] >> (b % 8)) & 1u) ? grad[i] : 0.0f;
  }
}

void apply_grad_mask(const float* grad, const uint8_t* mask_bits, int64_t bit_offset, float* grad_x, int64_t n) {
  if (n <= 0) return;
  const unsigned shift = static_cast<unsigned>(bit_offset);
  shift ? apply_mask_lanes<true>(grad, mask_bits, shift, grad_x, n)
        : apply_mask_lanes<false>(grad, mask_bits, 0, grad_x, n);
}

}  // namespace
}  // namespace neon

void fill_neon_kernels(KernelTable* t) {
  t->abs_max = neon::abs_max;
  t->abs_max_accumulate = neon::abs_max_accumulate;
  t->range_with_zero = neon::range_with_zero;
  t->fake_quant_symmetric = neon::fake_quant_symmetric;
  t->fake_quant_symmetric_backward = neon::fake_quant_symmetric_backward;
  t->fake_quant_affine = neon::fake_quant_affine;
  t->fake_quant_affine_backward = neon::fake_quant_affine_backward;
  t->fake_quant_affine_mask = neon::fake_quant_affine_mask;
  t->fake_quant_symmetric_mask = neon::fake_quant_symmetric_mask;
  t->apply_grad_mask = neon::apply_grad_mask;
  t->quantize_int8 = neon::quantize<int8_t>;
  t->quantize_int16 = neon::quantize<int16_t>;
  t->dequantize_int8 = neon::dequantize_int8;
  t->dequantize_int16 = neon::dequantize_int16;
}

}  // namespace pyslim
