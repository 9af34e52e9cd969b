// Whole-matrix int8 GEMM and convolution drivers (CPU): threading, blocking, the float / requantized
// epilogues, the dynamic (on-the-fly) activation quantization and im2col, around the per-ISA gemm_s32 and
// depthwise_conv_s32 micro-kernels of kernels.h.
#pragma once

#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {

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

// gemm on float32 A (M x K, contiguous) quantized to int8 with (a_scale, a_zero_point) — the quantize op's
// values — as part of the call: inside each task, just before its GEMM, where every row block belongs to one
// task; in one parallel pass first otherwise. e must carry the same act_scale / act_zero_point.
void gemm_float_static(const KernelTable& k, const float* A, float a_scale, int32_t a_zero_point, const void* packed,
                       int64_t M, int64_t N, int64_t K, const GemmEpilogue& e, void* out, int64_t ldo, int threads);

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
  // Channels a pixel has in the packed weight's (kh, kw, c) rows: 0 means in_c / groups. A one-group
  // convolution of 1-3 input channels (an image stem) may be packed with its channels zero-padded to 4
  // (kernel_h * kernel_w > 1): each kernel row of the padded image is then a whole number of 4-byte groups,
  // which the implicit-GEMM path needs; the drivers pad x's pixels to match (the extra bytes meet zero weights).
  int64_t weight_c = 0;
};

// weight_c, resolved (see ConvShape).
inline int64_t weight_channels(const ConvShape& s) { return s.weight_c > 0 ? s.weight_c : s.in_c / s.groups; }

// x: batch x in_h x in_w x in_c (int8 or uint8); padded positions read as pad_value (the activation zero
// point). Weights: groups blocks, each (out_c/groups) x (kernel_h*kernel_w*weight_channels(s)) packed by
// k.gemm_pack, block g at packed + g * group_stride bytes (the im2col row order is (kh, kw, c)).
// out: batch x out_h x out_w x out_c, typed by e.kind; e.col_sums / weight_scale / bias have out_c entries.
void conv2d_nhwc(const KernelTable& k, const void* x, bool x_signed, int32_t pad_value, const void* packed,
                 int64_t group_stride, const ConvShape& s, const GemmEpilogue& e, void* out, int threads);

// conv2d_nhwc on float32 NHWC x, quantized to int8 with (x_scale, x_zero_point) — the quantize op's values —
// as part of the call (for stride-1 convolutions on the implicit path, while the padded image is built: one
// pass, no separate int8 tensor).
void conv2d_nhwc_float(const KernelTable& k, const float* x, float x_scale, int32_t x_zero_point, const void* packed,
                       int64_t group_stride, const ConvShape& s, const GemmEpilogue& e, void* out, int threads);

// Depthwise convolution (groups == in_c == out_c): w is kernel_h x kernel_w x C int8 (unpacked).
void depthwise_conv2d_nhwc(const KernelTable& k, const void* x, bool x_signed, int32_t pad_value, const int8_t* w,
                           const ConvShape& s, const GemmEpilogue& e, void* out, int threads);

// depthwise_conv2d_nhwc on float32 NHWC x, quantized to int8 with (x_scale, x_zero_point) — the quantize op's
// values. With several threads, inside each task, as the task's output rows need them: one parallel pass, and
// the int8 rows are read by the core that wrote them (the KH - 1 rows a task shares with its neighbour are
// quantized by both). On this 2-vCPU VM, reading rows another core quantized cost up to 0.03 ms of 0.11 at
// (1,144,56,56), depending on where the host placed the vCPUs; the fused form measured 0.08 ms either way.
void depthwise_conv2d_nhwc_float(const KernelTable& k, const float* x, float x_scale, int32_t x_zero_point,
                                 const int8_t* w, const ConvShape& s, const GemmEpilogue& e, void* out, int threads);

}  // namespace pyslim
