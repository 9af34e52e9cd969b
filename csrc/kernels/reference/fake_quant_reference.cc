// Scalar reference kernels: the executable specification every SIMD and CUDA path is tested against.
// Rounding is explicit (see RoundMode); the build disables FMA contraction so that the float operations
// below are exactly the ones the SIMD paths perform.
#include <cmath>
#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {
namespace reference {
namespace {

inline float round_value(float v, RoundMode mode) {
  return mode == RoundMode::kHalfToEven ? std::nearbyint(v) : std::round(v);
}

float abs_max(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (std::isnan(a)) return a;
    if (a > m) m = a;
  }
  return m;
}

void abs_max_accumulate(const float* x, int64_t n, float* acc) {
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (std::isnan(a) || std::isnan(acc[i])) {
      acc[i] = std::nanf("");
    } else if (a > acc[i]) {
      acc[i] = a;
    }
  }
}

void fake_quant_symmetric(const float* x, float* y, int64_t n, const float* scale, int64_t param_stride,
                          int32_t bin, RoundMode round) {
  const float fbin = static_cast<float>(bin);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float m = fbin * paddle_inverse(s);
    const float v = x[i];
    const float clipped = std::fmin(std::fmax(v, -s), s);
    const float q = round_value(clipped * m, round);
    y[i] = std::isnan(v) ? v : (q * s) / fbin;
  }
}

void fake_quant_symmetric_backward(const float* x, const float* grad, float* grad_x, int64_t n,
                                   const float* scale, int64_t param_stride, int32_t bin, RoundMode round,
                                   GradMask mask, double* grad_scale_acc) {
  const float fbin = static_cast<float>(bin);
  for (int64_t i = 0; i < n; ++i) {
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
        c = (round_value(u, round) - u) / fbin;
      }
      grad_scale_acc[i * param_stride] += static_cast<double>(g * c);
    }
  }
}

void fake_quant_affine(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                       int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float inv = 1.0f / s;
    const float v = x[i];
    const float q = round_value(v * inv, round) + zp;
    const float c = std::fmin(std::fmax(q, lo), hi);
    y[i] = std::isnan(v) ? v : (c - zp) * s;
  }
}

void fake_quant_affine_backward(const float* x, const float* grad, float* grad_x, int64_t n, const float* scale,
                                const int32_t* zero_point, int64_t param_stride, int32_t qmin, int32_t qmax,
                                RoundMode round, GradMask mask, double* grad_scale_acc,
                                double* grad_zero_point_acc) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float inv = 1.0f / s;
    const float v = x[i];
    const float g = grad[i];
    const float u = v * inv;
    const float r = round_value(u, round);
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

template <typename Q>
void quantize(const float* x, Q* out, int64_t n, const float* scale, const int32_t* zero_point, int64_t param_stride,
              int32_t qmin, int32_t qmax, RoundMode round) {
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float v = x[i];
    const float q = round_value(v * (1.0f / s), round) + zp;
    const float c = std::isnan(v) ? zp : std::fmin(std::fmax(q, lo), hi);
    out[i] = static_cast<Q>(static_cast<int32_t>(c));
  }
}

template <typename Q>
void dequantize(const Q* q, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                int64_t param_stride) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t d = static_cast<int32_t>(q[i]) - zero_point[i * param_stride];
    y[i] = static_cast<float>(d) * scale[i * param_stride];
  }
}

}  // namespace
}  // namespace reference

void fill_reference_kernels(KernelTable* t) {
  t->abs_max = reference::abs_max;
  t->abs_max_accumulate = reference::abs_max_accumulate;
  t->fake_quant_symmetric = reference::fake_quant_symmetric;
  t->fake_quant_symmetric_backward = reference::fake_quant_symmetric_backward;
  t->fake_quant_affine = reference::fake_quant_affine;
  t->fake_quant_affine_backward = reference::fake_quant_affine_backward;
  t->quantize_int8 = reference::quantize<int8_t>;
  t->quantize_int16 = reference::quantize<int16_t>;
  t->dequantize_int8 = reference::dequantize<int8_t>;
  t->dequantize_int16 = reference::dequantize<int16_t>;
}

}  // namespace pyslim
