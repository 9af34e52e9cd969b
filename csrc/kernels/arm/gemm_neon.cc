// aarch64 Advanced SIMD (NEON) int8 GEMM and depthwise convolution without the dot-product extension,
// compiled with -march=armv8-a.
//
// GEMM layout. W (N x K int8, row-major) is packed into panels of kPanel = 16 output columns. Inside a
// panel the bytes run k-major, one 16-byte vector per k:
//   panel[k * 16 + j] = W[16 * p + j][k]
// with N padded to a multiple of 16 and K to a multiple of kDepth = 8 by zeros, so padded columns and
// padded k positions contribute exactly 0. Panels are 16 * K8 bytes, a multiple of 128, so each one
// starts 64-byte aligned in the caller's buffer. gemm_n_step is 16 (one panel); a column range that
// starts or ends inside a panel is still handled (the panel is computed whole and only the range stored).
// The micro-kernel computes up to kRows = 4 rows x 16 columns in 16 int32x4 accumulators; A is read
// 8 bytes per row per k-step with any row stride (lda >= K), the last K % 8 bytes through a zeroed
// stack copy so that no byte past a row's K-th element is read.
//
// Exactness (no saturation, no rounding): A (uint8 0..255 or int8 -128..127) and W (int8) are widened
// to int16, which holds both exactly, and multiplied with vmlal(_high)_laneq_s16, whose int16 x int16
// products are formed and accumulated in int32. Every product and partial sum is therefore the
// reference's, and the int32 result is identical (both wrap modulo 2^32 only where the reference's
// int32 sum itself would overflow). We deliberately avoid smull (int8 x int8 -> int16) followed by an
// int16 smlal: two products of -128 * -128 already overflow int16 (2 * 16384 = 32768). Widening also
// makes the xor-0x80 re-centring of uint8 A (needed by the dot-product path) unnecessary here.
//
// Depthwise convolution: vectorised across channels, 16 and then 8 channels per step (x and w widened
// to int16, products accumulated in int32 by vmlal_s16), a scalar loop for the last C % 8 channels.
// Taps outside the input multiply pad_value (any int32) by the weight in int32 (vmlaq_s32), as the
// reference does, so results are exact for every pad value.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "pyslim/kernels.h"
#include "../gemm_epilogue_impl.h"

namespace pyslim {
namespace neon_gemm {
namespace {

constexpr int64_t kPanel = 16;  // output columns per packed panel (= gemm_n_step)
constexpr int64_t kDepth = 8;   // k positions per inner step (one int16x8 of A per row)
constexpr int kRows = 4;        // rows per micro-kernel call

int64_t padded_depth(int64_t K) { return (K + kDepth - 1) / kDepth * kDepth; }
int64_t panel_count(int64_t N) { return (N + kPanel - 1) / kPanel; }

int64_t gemm_packed_size(int64_t N, int64_t K) { return panel_count(N) * kPanel * padded_depth(K); }

void gemm_pack(const int8_t* W, int64_t N, int64_t K, void* packed) {
  const int64_t depth = padded_depth(K);
  auto* out = static_cast<int8_t*>(packed);
  for (int64_t p = 0; p < panel_count(N); ++p) {
    int8_t* panel = out + p * kPanel * depth;
    for (int64_t k = 0; k < depth; ++k) {
      for (int64_t j = 0; j < kPanel; ++j) {
        const int64_t n = p * kPanel + j;
        panel[k * kPanel + j] = (n < N && k < K) ? W[n * K + k] : int8_t{0};
      }
    }
  }
}

// Eight A (or x) values widened exactly to int16.
inline int16x8_t load_widened8(const uint8_t* p) { return vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p))); }
inline int16x8_t load_widened8(const int8_t* p) { return vmovl_s8(vld1_s8(p)); }

// Sixteen values widened exactly to int16 (lo: elements 0..7, hi: 8..15).
inline void load_widened16(const uint8_t* p, int16x8_t* lo, int16x8_t* hi) {
  const uint8x16_t v = vld1q_u8(p);
  *lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(v)));
  *hi = vreinterpretq_s16_u16(vmovl_high_u8(v));
}
inline void load_widened16(const int8_t* p, int16x8_t* lo, int16x8_t* hi) {
  const int8x16_t v = vld1q_s8(p);
  *lo = vmovl_s8(vget_low_s8(v));
  *hi = vmovl_high_s8(v);
}

// ---- GEMM micro-kernel ------------------------------------------------------------------------------------

// One k position (lane kLane of each row's A vector) times the panel's 16 weights at that k.
template <int kR, int kLane>
__attribute__((always_inline)) inline void gemm_step(int32x4_t (&acc)[kR][4], const int16x8_t (&a)[kR],
                                                     const int8_t* w) {
  const int8x16_t wb = vld1q_s8(w + kLane * kPanel);
  const int16x8_t lo = vmovl_s8(vget_low_s8(wb));
  const int16x8_t hi = vmovl_high_s8(wb);
#pragma GCC unroll 4
  for (int r = 0; r < kR; ++r) {
    acc[r][0] = vmlal_laneq_s16(acc[r][0], vget_low_s16(lo), a[r], kLane);
    acc[r][1] = vmlal_high_laneq_s16(acc[r][1], lo, a[r], kLane);
    acc[r][2] = vmlal_laneq_s16(acc[r][2], vget_low_s16(hi), a[r], kLane);
    acc[r][3] = vmlal_high_laneq_s16(acc[r][3], hi, a[r], kLane);
  }
}

// kDepth consecutive k positions; w points at the panel's first weight vector of the block. Always
// inlined: as a call (it is used twice per tile), the accumulator array would live in memory.
template <int kR>
__attribute__((always_inline)) inline void gemm_block(int32x4_t (&acc)[kR][4], const int16x8_t (&a)[kR],
                                                      const int8_t* w) {
  gemm_step<kR, 0>(acc, a, w);
  gemm_step<kR, 1>(acc, a, w);
  gemm_step<kR, 2>(acc, a, w);
  gemm_step<kR, 3>(acc, a, w);
  gemm_step<kR, 4>(acc, a, w);
  gemm_step<kR, 5>(acc, a, w);
  gemm_step<kR, 6>(acc, a, w);
  gemm_step<kR, 7>(acc, a, w);
}

// C[r][j - col_lo] for r < kR, j in [col_lo, col_hi) of one panel (0 <= col_lo < col_hi <= 16);
// C points at the output element of (row 0, column col_lo).
template <typename A_T, int kR>
void gemm_tile(const A_T* A, int64_t lda, const int8_t* panel, int64_t K, int32_t* C, int64_t ldc,
               int64_t col_lo, int64_t col_hi) {
  int32x4_t acc[kR][4];
#pragma GCC unroll 4
  for (int r = 0; r < kR; ++r) {
    for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_s32(0);
  }
  int64_t k = 0;
  for (; k + kDepth <= K; k += kDepth) {
    int16x8_t a[kR];
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) a[r] = load_widened8(A + r * lda + k);
    gemm_block<kR>(acc, a, panel + k * kPanel);
  }
  if (k < K) {
    // The last K % 8 positions: a zeroed copy keeps the reads inside each row; the padded k positions of
    // the panel hold zero weights, so the extra lanes add 0.
    int16x8_t a[kR];
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) {
      A_T tail[kDepth] = {};
      std::memcpy(tail, A + r * lda + k, static_cast<size_t>(K - k) * sizeof(A_T));
      a[r] = load_widened8(tail);
    }
    gemm_block<kR>(acc, a, panel + k * kPanel);
  }
  if (col_lo == 0 && col_hi == kPanel) {
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) {
      int32_t* c = C + r * ldc;
      vst1q_s32(c, acc[r][0]);
      vst1q_s32(c + 4, acc[r][1]);
      vst1q_s32(c + 8, acc[r][2]);
      vst1q_s32(c + 12, acc[r][3]);
    }
  } else {
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) {
      int32_t row[kPanel];
      for (int q = 0; q < 4; ++q) vst1q_s32(row + 4 * q, acc[r][q]);
      std::memcpy(C + r * ldc, row + col_lo, static_cast<size_t>(col_hi - col_lo) * sizeof(int32_t));
    }
  }
}

template <typename A_T>
void gemm_typed(const A_T* A, int64_t lda, const int8_t* packed, int64_t M, int64_t K, int64_t n_begin,
                int64_t n_end, int32_t* C, int64_t ldc) {
  const int64_t panel_bytes = kPanel * padded_depth(K);
  for (int64_t p = n_begin / kPanel; p * kPanel < n_end; ++p) {
    const int8_t* panel = packed + p * panel_bytes;
    // Plain conditionals, not std::min/max: at -O0 those would be emitted as weak symbols compiled with
    // this file's ISA flags, which the linker could pick for other translation units.
    const int64_t col_lo = n_begin > p * kPanel ? n_begin - p * kPanel : 0;
    const int64_t col_hi = n_end < (p + 1) * kPanel ? n_end - p * kPanel : kPanel;
    int32_t* c = C + p * kPanel + col_lo;
    int64_t m = 0;
    for (; m + kRows <= M; m += kRows) {
      gemm_tile<A_T, kRows>(A + m * lda, lda, panel, K, c + m * ldc, ldc, col_lo, col_hi);
    }
    switch (M - m) {
      case 3: gemm_tile<A_T, 3>(A + m * lda, lda, panel, K, c + m * ldc, ldc, col_lo, col_hi); break;
      case 2: gemm_tile<A_T, 2>(A + m * lda, lda, panel, K, c + m * ldc, ldc, col_lo, col_hi); break;
      case 1: gemm_tile<A_T, 1>(A + m * lda, lda, panel, K, c + m * ldc, ldc, col_lo, col_hi); break;
      default: break;
    }
  }
}

void gemm_s32(const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M, int64_t /*N*/, int64_t K,
              int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc) {
  const auto* W = static_cast<const int8_t*>(packed);
  if (a_signed) {
    gemm_typed(static_cast<const int8_t*>(A), lda, W, M, K, n_begin, n_end, C, ldc);
  } else {
    gemm_typed(static_cast<const uint8_t*>(A), lda, W, M, K, n_begin, n_end, C, ldc);
  }
}

// ---- depthwise convolution ----------------------------------------------------------------------------

// acc += x * w over 8 channels (int16 x int16 products accumulated in int32).
inline void madd8(int32x4_t* acc, int16x8_t x, int16x8_t w) {
  acc[0] = vmlal_s16(acc[0], vget_low_s16(x), vget_low_s16(w));
  acc[1] = vmlal_high_s16(acc[1], x, w);
}

// acc += pad * w over 8 channels, in int32 like the reference (pad may be any int32).
inline void madd8_pad(int32x4_t* acc, int32x4_t pad, int16x8_t w) {
  acc[0] = vmlaq_s32(acc[0], pad, vmovl_s16(vget_low_s16(w)));
  acc[1] = vmlaq_s32(acc[1], pad, vmovl_high_s16(w));
}

// One output pixel over kChannels (16 or 8) channels starting at c.
template <int kChannels, typename X_T>
inline void depthwise_pixel(const X_T* x_image, int32x4_t pad, const int8_t* w, int32_t* o, const DepthwiseShape& s,
                            int64_t oh, int64_t ow, int64_t c) {
  constexpr int kVectors = kChannels / 4;
  int32x4_t acc[kVectors];
  for (int v = 0; v < kVectors; ++v) acc[v] = vdupq_n_s32(0);
  const int64_t C = s.channels;
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
    const bool row_inside = ih >= 0 && ih < s.height;
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
      const int8_t* wk = w + (i * s.kernel_w + j) * C + c;
      const bool inside = row_inside && iw >= 0 && iw < s.width;
      if constexpr (kChannels == 16) {
        const int8x16_t wb = vld1q_s8(wk);
        const int16x8_t w_lo = vmovl_s8(vget_low_s8(wb));
        const int16x8_t w_hi = vmovl_high_s8(wb);
        if (inside) {
          int16x8_t x_lo, x_hi;
          load_widened16(x_image + (ih * s.width + iw) * C + c, &x_lo, &x_hi);
          madd8(acc, x_lo, w_lo);
          madd8(acc + 2, x_hi, w_hi);
        } else {
          madd8_pad(acc, pad, w_lo);
          madd8_pad(acc + 2, pad, w_hi);
        }
      } else {
        const int16x8_t wv = vmovl_s8(vld1_s8(wk));
        if (inside) {
          madd8(acc, load_widened8(x_image + (ih * s.width + iw) * C + c), wv);
        } else {
          madd8_pad(acc, pad, wv);
        }
      }
    }
  }
  for (int v = 0; v < kVectors; ++v) vst1q_s32(o + c + 4 * v, acc[v]);
}

template <typename X_T>
void depthwise_rows(const X_T* x, int32_t pad_value, const int8_t* w, int32_t* out, const DepthwiseShape& s,
                    int64_t row_begin, int64_t row_end) {
  const int64_t C = s.channels;
  const int32x4_t pad = vdupq_n_s32(pad_value);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.out_h, oh = row % s.out_h;
    const X_T* x_image = x + b * s.height * s.width * C;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      int32_t* o = out + (row * s.out_w + ow) * C;
      int64_t c = 0;
      for (; c + 16 <= C; c += 16) depthwise_pixel<16>(x_image, pad, w, o, s, oh, ow, c);
      for (; c + 8 <= C; c += 8) depthwise_pixel<8>(x_image, pad, w, o, s, oh, ow, c);
      if (c == C) continue;
      // The last C % 8 channels, scalar, in the reference's order.
      for (int64_t t = c; t < C; ++t) o[t] = 0;
      for (int64_t i = 0; i < s.kernel_h; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
        for (int64_t j = 0; j < s.kernel_w; ++j) {
          const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
          const int8_t* wk = w + (i * s.kernel_w + j) * C;
          const bool inside = ih >= 0 && ih < s.height && iw >= 0 && iw < s.width;
          const X_T* xp = inside ? x_image + (ih * s.width + iw) * C : nullptr;
          for (int64_t t = c; t < C; ++t) {
            const int32_t v = inside ? static_cast<int32_t>(xp[t]) : pad_value;
            o[t] += v * static_cast<int32_t>(wk[t]);
          }
        }
      }
    }
  }
}

void depthwise_conv_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                        const DepthwiseShape& shape, int64_t row_begin, int64_t row_end) {
  if (x_signed) {
    depthwise_rows(static_cast<const int8_t*>(x), pad_value, w, out, shape, row_begin, row_end);
  } else {
    depthwise_rows(static_cast<const uint8_t*>(x), pad_value, w, out, shape, row_begin, row_end);
  }
}

}  // namespace
}  // namespace neon_gemm

void fill_neon_gemm(KernelTable* t) {
  t->gemm_epilogue = gemm_epilogue_impl;
  t->gemm_n_step = neon_gemm::kPanel;
  t->gemm_packed_size = neon_gemm::gemm_packed_size;
  t->gemm_pack = neon_gemm::gemm_pack;
  t->gemm_s32 = neon_gemm::gemm_s32;
  t->depthwise_conv_s32 = neon_gemm::depthwise_conv_s32;
}

}  // namespace pyslim
