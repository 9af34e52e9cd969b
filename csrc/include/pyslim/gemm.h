// Whole-matrix int8 GEMM and convolution drivers (CPU): threading, blocking, the float / requantized
// epilogues, the dynamic (on-the-fly) activation quantization and im2col, around the per-ISA gemm_s32 and
// depthwise_conv_s32 micro-kernels of kernels.h.
#pragma once

#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {

enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2 };

// What becomes of the int32 accumulator acc[m][n] = sum_k a[m][k] * w[n][k].
//   kInt32:     out = acc
//   kFloat32:   y = act(float(acc - zp_m * col_sums[n]) * (scale_m * weight_scale[n]) + bias[n])
//   kQuantized: y as above, then out = saturate(nearbyint(y / out_scale) + out_zero_point) as int8 / uint8
// (zp_m, scale_m) are the activation zero point and scale: per row when row_scales is given (the dynamic
// path), else act_zero_point / act_scale for the whole tensor. Weights are symmetric (zero point 0).
struct GemmEpilogue {
  enum Kind : int { kInt32 = 0, kFloat32 = 1, kQuantized = 2 };
  Kind kind = kInt32;
  float act_scale = 1.0f;
  int32_t act_zero_point = 0;
  const float* row_scales = nullptr;
  const int32_t* row_zero_points = nullptr;
  const float* weight_scale = nullptr;  // [N]
  const int32_t* col_sums = nullptr;    // [N]; required when a zero point can be nonzero
  const float* bias = nullptr;          // [N] or null
  Activation activation = Activation::kNone;
  float out_scale = 1.0f;
  int32_t out_zero_point = 0;
  bool out_signed = true;
  // Reduction length of the accumulators (set by the drivers): above 32768 the zero-point correction
  // acc - zp * col_sums can leave the int32 range and is computed in int64.
  int64_t k = 0;
};

// Applies the epilogue to rows [0, rows) x columns [n_begin, n_end) of an accumulator block whose row r is
// matrix row `row0 + r`. `out` points at element (0, 0) of the output matrix block row0 (row stride ldo),
// typed by e.kind (int32, float, int8 / uint8).
void apply_gemm_epilogue(const int32_t* acc, int64_t ldacc, int64_t rows, int64_t row0, int64_t n_begin,
                         int64_t n_end, const GemmEpilogue& e, void* out, int64_t ldo);

// out (M x N, row stride ldo) = epilogue(A (M x K, lda; int8 or uint8) * W^T) with W packed by k.gemm_pack.
void gemm(const KernelTable& k, const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M,
          int64_t N, int64_t K, const GemmEpilogue& e, void* out, int64_t ldo, int threads);

// Dynamic quantization fused in: A is float32 (M x K, lda), quantized to int8 per row or per tensor,
// symmetric (zero point 0, scale = max|a| / 127) or asymmetric (range [min(a, 0), max(a, 0)] onto [-128, 127]
// with a zero point), then multiplied as above with a float epilogue (e.kind must be kFloat32; its
// activation-quantization fields are filled here). Uses `threads` threads.
void gemm_dynamic(const KernelTable& k, const float* A, int64_t lda, bool per_row, bool symmetric,
                  const void* packed, int64_t M, int64_t N, int64_t K, GemmEpilogue e, float* out, int64_t ldo,
                  int threads);

// q = clamp(round_half_even(x / scale) + zero_point, -128, 127) for n floats (the quantize op's result), into
// the calling thread's ScratchSlot::kQuantized buffer: valid until the next call that uses that slot on
// this thread (gemm_dynamic or this function). The convolution drivers do not use it, so the result can be
// passed straight to conv2d_nhwc / depthwise_conv2d_nhwc.
const int8_t* quantize_activations(const KernelTable& k, const float* x, int64_t n, float scale, int32_t zero_point,
                                  int threads);

// 2-D convolution over NHWC activations, any stride / padding / dilation / groups.
struct ConvShape {
  int64_t batch, in_h, in_w, in_c;
  int64_t out_c, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
};

// x: batch x in_h x in_w x in_c (int8 or uint8); padded positions read as pad_value (the activation zero
// point). Weights: groups blocks, each (out_c/groups) x (kernel_h*kernel_w*in_c/groups) packed by
// k.gemm_pack, block g at packed + g * group_stride bytes (the im2col row order is (kh, kw, c)).
// out: batch x out_h x out_w x out_c, typed by e.kind; e.col_sums / weight_scale / bias have out_c entries.
void conv2d_nhwc(const KernelTable& k, const void* x, bool x_signed, int32_t pad_value, const void* packed,
                 int64_t group_stride, const ConvShape& s, const GemmEpilogue& e, void* out, int threads);

// Depthwise convolution (groups == in_c == out_c): w is kernel_h x kernel_w x C int8 (unpacked).
void depthwise_conv2d_nhwc(const KernelTable& k, const void* x, bool x_signed, int32_t pad_value, const int8_t* w,
                           const ConvShape& s, const GemmEpilogue& e, void* out, int threads);

}  // namespace pyslim
