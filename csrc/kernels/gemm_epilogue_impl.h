// The int8 GEMM / convolution epilogue (kernels.h gemm_epilogue), written once and compiled by every path's
// translation unit with that path's flags: the loops are branch-free per element so the compiler vectorises
// them at the path's width (SSE2 for the reference, AVX2, AVX-512, NEON). -ffp-contract=off and the fixed
// operation order make every copy bit-identical.
//
// Everything here is in an anonymous namespace on purpose: each ISA translation unit compiles its own copy
// with its own flags, so the linker can never hand the AVX-512 instantiation to another path (and the
// per-ISA objects still export only their fill functions, see .ci/check_isa_symbols.sh). Only compiler
// builtins are used (no libm or std inline functions, which could become shared weak symbols).
#pragma once

#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {
namespace {

// exp(a) for a in [-17, 0] (the GELU's -x^2 with |x| <= 4): a = n ln2 + r with |r| <= ln2 / 2 (ln2 split in a
// high part exact in float and a low part), exp(r) by its degree-7 Taylor polynomial (relative error < 2e-8
// there), times 2^n built in the exponent bits. Branch-free, so the loops around it vectorise.
inline float epi_exp_neg(float a) {
  const float n = __builtin_nearbyintf(a * 1.44269504088896341f);
  const float r = (a - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// 0.5 * (1 + erf(x)) with erf(|x|) = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p |x|) (Abramowitz &
// Stegun 7.1.26, absolute error <= 1.5e-7), |x| clamped to 4 where erf is 1 in float (a NaN x becomes 4 here,
// so no NaN reaches the float-to-int conversion in epi_exp_neg; epi_activate returns the NaN itself).
inline float epi_half_one_plus_erf(float x) {
  float ax = x < 0.0f ? -x : x;
  ax = ax < 4.0f ? ax : 4.0f;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float tail = poly * t * epi_exp_neg(-ax * ax);  // 1 - erf(|x|)
  return x < 0.0f ? 0.5f * tail : 1.0f - 0.5f * tail;
}

// relu(y) = y < 0 ? 0 : y (NaN passes through, as torch.relu), relu6 = min(relu(y), 6); the CUDA epilogue
// uses the same forms (it has no GELU). gelu(y) = y * 0.5 * (1 + erf(y / sqrt 2)).
template <Activation act>
inline float epi_activate(float y) {
  if (act == Activation::kNone) return y;
  if (act == Activation::kGelu) {
    const float g = y * epi_half_one_plus_erf(y * 0.70710678118654752f);
    return y != y ? y : g;
  }
  y = y < 0.0f ? 0.0f : y;
  if (act == Activation::kRelu6) y = 6.0f < y ? 6.0f : y;
  return y;
}

// The quantize op's rounding, zero point and saturation of a float output (NaN -> the zero point). Ternaries
// rather than fminf / fmaxf (library calls, which kept the loops scalar); same values: NaN is caught first,
// and for numbers the clamp is the same.
inline float epi_requantize(float y, float inv_out_scale, float lo, float hi, float out_zp) {
  float q = __builtin_nearbyintf(y * inv_out_scale) + out_zp;
  q = q != q ? out_zp : q;
  q = q < lo ? lo : q;
  return q > hi ? hi : q;
}

template <GemmEpilogue::Kind kind, Activation act>
inline void epi_store(float y, const GemmEpilogue& e, float inv_out_scale, float lo, float hi, float out_zp, void* out,
                      int64_t index) {
  y = epi_activate<act>(y);
  if (kind == GemmEpilogue::kFloat32) {
    static_cast<float*>(out)[index] = y;
    return;
  }
  const float q = epi_requantize(y, inv_out_scale, lo, hi, out_zp);
  if (e.out_signed) {
    static_cast<int8_t*>(out)[index] = static_cast<int8_t>(static_cast<int32_t>(q));
  } else {
    static_cast<uint8_t*>(out)[index] = static_cast<uint8_t>(static_cast<int32_t>(q));
  }
}

// One requantized output: y = act(float(a - zc) * multiplier [+ bias]) with zc = zp * cs, then epi_requantize.
// With has_bias false the addition is skipped (y + 0.0f would turn -0.0 into +0.0).
template <typename Q, Activation act>
inline Q epi_quantize(int32_t a, int32_t zc, float multiplier, float bias, bool has_bias, float inv, float lo, float hi,
                      float out_zp) {
  float y = static_cast<float>(a - zc) * multiplier;
  y = has_bias ? y + bias : y;
  return static_cast<Q>(static_cast<int32_t>(epi_requantize(epi_activate<act>(y), inv, lo, hi, out_zp)));
}

// dst[j] = q[j] for j < n, q already in dst's range: in fixed blocks of 16, which the compiler turns into one
// vector narrowing each (a plain loop is vectorised 64 bytes at a time and leaves shorter rows scalar; a GCC
// vector __builtin_convertvector measured slower).
template <typename Q>
inline void epi_narrow(const int32_t* q, Q* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int t = 0; t < 16; ++t) dst[j + t] = static_cast<Q>(q[j + t]);
  for (; j < n; ++j) dst[j] = static_cast<Q>(q[j]);
}

// Columns go in blocks of kEpiCols; the per-column multiplier scale * ws[n] (one float product, the same the
// reference forms per element) is computed once per block when every row shares the activation scale, and per
// row and block when the scales are per row (dynamic quantization); likewise the zero-point correction
// zp * cs[n] (the same int32 product; below k = 32768 it cannot overflow).
constexpr int64_t kEpiCols = 256;

template <GemmEpilogue::Kind kind, Activation act>
void epi_rows(const int32_t* acc, int64_t ldacc, int64_t rows, int64_t row0, int64_t n_begin, int64_t n_end,
              const GemmEpilogue& e, void* out, int64_t ldo) {
  const float lo = e.out_signed ? -128.0f : 0.0f, hi = e.out_signed ? 127.0f : 255.0f;
  const float out_zp = static_cast<float>(e.out_zero_point);
  const float inv_out_scale = 1.0f / e.out_scale;  // the quantize op's multiplier (kernels.h quantize_int8)
  const bool wide = e.k > 32768;
  const float* ws = e.weight_scale;
  const int32_t* cs = e.col_sums;
  const float* bias = e.bias;
  float mult[kEpiCols];
  int32_t zc[kEpiCols];
  // zc[j] = zp * cs[n0 + j] (zeros without column sums, which the contract allows only with zero points 0).
  auto fill_zc = [&](int32_t zp, const int32_t* cb, int64_t nb) {
    for (int64_t j = 0; j < nb; ++j) zc[j] = cb ? zp * cb[j] : 0;
  };
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kEpiCols) {
    const int64_t n1 = n_end - n0 < kEpiCols ? n_end : n0 + kEpiCols;
    const int64_t nb = n1 - n0;
    const int32_t* cb = cs ? cs + n0 : nullptr;  // column-block views: index j = n - n0
    const float* bb = bias ? bias + n0 : nullptr;
    if (!e.row_scales)
      for (int64_t j = 0; j < nb; ++j) mult[j] = e.act_scale * ws[n0 + j];
    if (!e.row_zero_points && !wide) fill_zc(e.act_zero_point, cb, nb);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t m = row0 + r;
      const int32_t* a = acc + r * ldacc + n0;
      const int32_t zp = e.row_zero_points ? e.row_zero_points[m] : e.act_zero_point;
      if (e.row_scales) {
        const float scale = e.row_scales[m];
        for (int64_t j = 0; j < nb; ++j) mult[j] = scale * ws[n0 + j];
      }
      // Per-row zero points: this row's correction (the float path skips it where zp is 0).
      if (e.row_zero_points && !wide && (zp != 0 || kind == GemmEpilogue::kQuantized)) fill_zc(zp, cb, nb);
      if (kind == GemmEpilogue::kFloat32 && (zp == 0 || !wide)) {
        float* f_out = static_cast<float*>(out) + m * ldo + n0;
        if (zp == 0 && bb) {
          for (int64_t j = 0; j < nb; ++j) f_out[j] = epi_activate<act>(static_cast<float>(a[j]) * mult[j] + bb[j]);
        } else if (zp == 0) {
          for (int64_t j = 0; j < nb; ++j) f_out[j] = epi_activate<act>(static_cast<float>(a[j]) * mult[j]);
        } else if (bb) {
          for (int64_t j = 0; j < nb; ++j)
            f_out[j] = epi_activate<act>(static_cast<float>(a[j] - zc[j]) * mult[j] + bb[j]);
        } else {
          for (int64_t j = 0; j < nb; ++j) f_out[j] = epi_activate<act>(static_cast<float>(a[j] - zc[j]) * mult[j]);
        }
        continue;
      }
      if (kind == GemmEpilogue::kQuantized && !wide) {
        // The float value as above, then the quantize op's rounding, zero point and saturation, as int32 in a
        // branch-free loop (vectorised like the float path: 16 lanes at AVX-512), then narrowed to bytes. One
        // loop straight to bytes was vectorised at 64 lanes and left every row of fewer than 64 columns (and
        // the last 16 of 144) to scalar code: 2.7 cycles an output at (3136 x 144), 7x the float epilogue.
        // In fixed blocks of 16 columns (one vector at AVX-512, straight-line code with no loop prologue or
        // remainder per row; a per-row loop over nb columns cost ~1 cycle an output at N = 96), each narrowed
        // to bytes at once; the last nb % 16 columns by the same formula in a plain loop. Bias and no bias are
        // separate loops: GCC cannot if-convert bb ? bb[j] : 0.0f and left such a loop scalar.
        int32_t q[kEpiCols];
        const int64_t nb16 = nb - nb % 16;
        if (bb) {
          for (int64_t j0 = 0; j0 < nb16; j0 += 16)
            for (int t = 0; t < 16; ++t)
              q[j0 + t] = epi_quantize<int32_t, act>(a[j0 + t], zc[j0 + t], mult[j0 + t], bb[j0 + t], true,
                                                     inv_out_scale, lo, hi, out_zp);
          for (int64_t j = nb16; j < nb; ++j)
            q[j] = epi_quantize<int32_t, act>(a[j], zc[j], mult[j], bb[j], true, inv_out_scale, lo, hi, out_zp);
        } else {
          for (int64_t j0 = 0; j0 < nb16; j0 += 16)
            for (int t = 0; t < 16; ++t)
              q[j0 + t] = epi_quantize<int32_t, act>(a[j0 + t], zc[j0 + t], mult[j0 + t], 0.0f, false, inv_out_scale,
                                                     lo, hi, out_zp);
          for (int64_t j = nb16; j < nb; ++j)
            q[j] = epi_quantize<int32_t, act>(a[j], zc[j], mult[j], 0.0f, false, inv_out_scale, lo, hi, out_zp);
        }
        if (e.out_signed) {
          epi_narrow(q, static_cast<int8_t*>(out) + m * ldo + n0, nb);
        } else {
          epi_narrow(q, static_cast<uint8_t*>(out) + m * ldo + n0, nb);
        }
        continue;
      }
      // k > 32768: a - zp * cs in int64
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t centered = static_cast<int64_t>(a[j]) - (zp != 0 ? static_cast<int64_t>(zp) * cb[j] : 0);
        float y = static_cast<float>(centered) * mult[j];
        if (bb) y = y + bb[j];
        epi_store<kind, act>(y, e, inv_out_scale, lo, hi, out_zp, out, m * ldo + n0 + j);
      }
    }
  }
}

template <GemmEpilogue::Kind kind>
void epi_kind(const int32_t* acc, int64_t ldacc, int64_t rows, int64_t row0, int64_t n_begin, int64_t n_end,
              const GemmEpilogue& e, void* out, int64_t ldo) {
  switch (e.activation) {
    case Activation::kRelu:
      return epi_rows<kind, Activation::kRelu>(acc, ldacc, rows, row0, n_begin, n_end, e, out, ldo);
    case Activation::kRelu6:
      return epi_rows<kind, Activation::kRelu6>(acc, ldacc, rows, row0, n_begin, n_end, e, out, ldo);
    case Activation::kGelu:
      return epi_rows<kind, Activation::kGelu>(acc, ldacc, rows, row0, n_begin, n_end, e, out, ldo);
    default:
      return epi_rows<kind, Activation::kNone>(acc, ldacc, rows, row0, n_begin, n_end, e, out, ldo);
  }
}

void gemm_epilogue_impl(const int32_t* acc, int64_t ldacc, int64_t rows, int64_t row0, int64_t n_begin,
                        int64_t n_end, const GemmEpilogue& e, void* out, int64_t ldo) {
  switch (e.kind) {
    case GemmEpilogue::kInt32:
      for (int64_t r = 0; r < rows; ++r) {
        int32_t* dst = static_cast<int32_t*>(out) + (row0 + r) * ldo;
        const int32_t* src = acc + r * ldacc;
        for (int64_t n = n_begin; n < n_end; ++n) dst[n] = src[n];
      }
      return;
    case GemmEpilogue::kFloat32:
      return epi_kind<GemmEpilogue::kFloat32>(acc, ldacc, rows, row0, n_begin, n_end, e, out, ldo);
    case GemmEpilogue::kQuantized:
      return epi_kind<GemmEpilogue::kQuantized>(acc, ldacc, rows, row0, n_begin, n_end, e, out, ldo);
  }
}

}  // namespace
}  // namespace pyslim
