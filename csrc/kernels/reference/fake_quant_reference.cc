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

void range_with_zero(const float* x, int64_t n, float* lo_out, float* hi_out) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (std::isnan(v)) {
      *lo_out = *hi_out = std::nanf("");
      return;
    }
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  *lo_out = lo;
  *hi_out = hi;
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

// Writes mask bits one element at a time with the layout of kernels.h: keeps the bits below bit_offset in
// the first byte and leaves the bits past the span in the last byte cleared.
class MaskWriter {
 public:
  MaskWriter(uint8_t* bits, int64_t bit_offset)
      : byte_(bits), used_(static_cast<int>(bit_offset)),
        pending_(bit_offset ? static_cast<unsigned>(bits[0]) & ((1u << bit_offset) - 1u) : 0u) {}
  void put(bool keep) {
    pending_ |= static_cast<unsigned>(keep) << used_;
    if (++used_ == 8) {
      *byte_++ = static_cast<uint8_t>(pending_);
      pending_ = 0;
      used_ = 0;
    }
  }
  void finish() {
    if (used_) *byte_ = static_cast<uint8_t>(pending_);
  }

 private:
  uint8_t* byte_;
  int used_;
  unsigned pending_;
};

inline bool mask_bit(const uint8_t* bits, int64_t bit_offset, int64_t j) {
  const int64_t b = bit_offset + j;
  return (bits[b / 8] >> (b % 8)) & 1u;
}

inline bool symmetric_keep(float v, float s, GradMask mask) {
  if (mask == GradMask::kInclusive) return std::fabs(v) <= s;
  if (mask == GradMask::kStrict) return std::fabs(v) < s;
  return true;
}

void fake_quant_affine_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                            const float* scale, const int32_t* zero_point, int64_t param_stride, int32_t qmin,
                            int32_t qmax, RoundMode round) {
  if (n <= 0) return;
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  MaskWriter out(mask_bits, bit_offset);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float zp = static_cast<float>(zero_point[i * param_stride]);
    const float inv = 1.0f / s;
    const float v = x[i];
    const float q = round_value(v * inv, round) + zp;
    const float c = std::fmin(std::fmax(q, lo), hi);
    y[i] = std::isnan(v) ? v : (c - zp) * s;
    out.put((q >= lo) && (q <= hi));  // fake_quant_affine_backward's `inside`
  }
  out.finish();
}

void fake_quant_symmetric_mask(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                               const float* scale, int64_t param_stride, int32_t bin, RoundMode round,
                               GradMask mask) {
  if (n <= 0) return;
  const float fbin = static_cast<float>(bin);
  MaskWriter out(mask_bits, bit_offset);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale[i * param_stride];
    const float m = fbin * paddle_inverse(s);
    const float v = x[i];
    const float clipped = std::fmin(std::fmax(v, -s), s);
    const float q = round_value(clipped * m, round);
    y[i] = std::isnan(v) ? v : (q * s) / fbin;
    out.put(symmetric_keep(v, s, mask));
  }
  out.finish();
}

void apply_grad_mask(const float* grad, const uint8_t* mask_bits, int64_t bit_offset, float* grad_x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) grad_x[i] = mask_bit(mask_bits, bit_offset, i) ? grad[i] : 0.0f;
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
  t->range_with_zero = reference::range_with_zero;
  t->fake_quant_symmetric = reference::fake_quant_symmetric;
  t->fake_quant_symmetric_backward = reference::fake_quant_symmetric_backward;
  t->fake_quant_affine = reference::fake_quant_affine;
  t->fake_quant_affine_backward = reference::fake_quant_affine_backward;
  t->fake_quant_affine_mask = reference::fake_quant_affine_mask;
  t->fake_quant_symmetric_mask = reference::fake_quant_symmetric_mask;
  t->apply_grad_mask = reference::apply_grad_mask;
  t->quantize_int8 = reference::quantize<int8_t>;
  t->quantize_int16 = reference::quantize<int16_t>;
  t->dequantize_int8 = reference::dequantize<int8_t>;
  t->dequantize_int16 = reference::dequantize<int16_t>;
}

}  // namespace pyslim
