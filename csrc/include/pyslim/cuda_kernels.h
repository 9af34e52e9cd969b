// CUDA fake-quantization kernels: the same semantics as kernels.h / fake_quant.h, on device pointers.
// Every pointer (data and parameters) is device memory; `stream` is a cudaStream_t passed as an integer
// (0 = the legacy default stream). Launch failures throw std::runtime_error with the CUDA error text.
// Only declared when the build has CUDA (PYSLIM_WITH_CUDA).
#pragma once

#include <cstdint>

#include "pyslim/fake_quant.h"
#include "pyslim/gemm.h"

namespace pyslim {
namespace cuda {

int device_count();  // 0 when no driver or no device; never throws

void abs_max_channels(const float* x, const ChannelLayout& layout, float* out, intptr_t stream);
void fake_quant_symmetric(const float* x, float* y, const ChannelLayout& layout, const float* scale, int32_t bin,
                          RoundMode round, intptr_t stream);
// grad_scale: `channels` doubles on the device (overwritten), or null.
void fake_quant_symmetric_backward(const float* x, const float* grad, float* grad_x, const ChannelLayout& layout,
                                   const float* scale, int32_t bin, RoundMode round, GradMask mask,
                                   double* grad_scale, intptr_t stream);
void fake_quant_affine(const float* x, float* y, const ChannelLayout& layout, const float* scale,
                       const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream);
void fake_quant_affine_backward(const float* x, const float* grad, float* grad_x, const ChannelLayout& layout,
                                const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax,
                                RoundMode round, GradMask mask, double* grad_scale, double* grad_zero_point,
                                intptr_t stream);
// Forwards that also write the clipped straight-through mask (layout of kernels.h: element i is bit i % 8 of
// mask[i / 8]; ceil(numel / 8) device bytes, padding bits cleared), and the backward that reads it.
void fake_quant_symmetric_mask(const float* x, float* y, uint8_t* mask, const ChannelLayout& layout,
                               const float* scale, int32_t bin, RoundMode round, GradMask grad_mask, intptr_t stream);
void fake_quant_affine_mask(const float* x, float* y, uint8_t* mask, const ChannelLayout& layout, const float* scale,
                            const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream);
void apply_grad_mask(const float* grad, const uint8_t* mask, float* grad_x, int64_t n, intptr_t stream);
// Moving-average abs-max update on device scalars (one float each):
//   state = r*state + 1; accum = r*accum + abs_max(x); scale = accum / state
void moving_average_update(const float* x, int64_t n, float* state, float* accum, float* scale, float moving_rate,
                           intptr_t stream);
void quantize_int8(const float* x, int8_t* q, const ChannelLayout& layout, const float* scale,
                   const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream);
void quantize_int16(const float* x, int16_t* q, const ChannelLayout& layout, const float* scale,
                    const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, intptr_t stream);
void dequantize_int8(const int8_t* q, float* y, const ChannelLayout& layout, const float* scale,
                     const int32_t* zero_point, intptr_t stream);
void dequantize_int16(const int16_t* q, float* y, const ChannelLayout& layout, const float* scale,
                      const int32_t* zero_point, intptr_t stream);

// ---- int8 GEMM / depthwise convolution (same semantics as the CPU table entries in kernels.h) ----
// C[m][n] = sum_k A[m][k] * W[n][k], int32, exact. A: M x K (row stride lda; uint8 when !a_signed, else
// int8); W: N x K int8 row-major (unpacked); C: M x N int32 with row stride ldc.
void gemm_s32(const void* A, bool a_signed, int64_t lda, const int8_t* W, int64_t M, int64_t N, int64_t K,
              int32_t* C, int64_t ldc, intptr_t stream);

// The float epilogue shared by Linear and conv, applied to an int32 accumulator block (as in gemm.h):
//   y[m][n] = act((acc[m][n] - zp_m * col_sums[n]) * scale_m * weight_scale[n] + bias[n])
// with zp_m / scale_m from the per-row arrays when given, else the per-tensor values; bias may be null.
// activation: 0 none, 1 relu, 2 relu6.
void gemm_epilogue_f32(const int32_t* acc, int64_t ldacc, int64_t M, int64_t N, float act_scale,
                       int32_t act_zero_point, const float* row_scales, const int32_t* row_zero_points,
                       const float* weight_scale, const int32_t* col_sums, const float* bias, int activation,
                       float* out, int64_t ldo, intptr_t stream);

void depthwise_conv_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                        const DepthwiseShape& shape, intptr_t stream);

// General 2-D convolution over NHWC (any stride, padding, dilation, groups), exact int32, the semantics of the
// CPU driver conv2d_nhwc with an int32 epilogue (gemm.h):
//   out[b][oh][ow][g * cout_g + n] = sum_{i, j, c < cin_g} x[b][ih][iw][g * cin_g + c] * w[g * cout_g + n][(i * KW + j) * cin_g + c]
// with positions outside the input reading pad_value, which must be a byte of x's type (a zero point). w:
// out_c rows of KH * KW * cin_g int8 (torch's (Cout, Cin/g, KH, KW) weight permuted to (Cout, KH, KW, Cin/g)),
// unpacked. Each group is copied into `workspace` by an im2col kernel (pixels x KH * KW * cin_g bytes) and
// multiplied by gemm_s32; workspace: conv2d_workspace_bytes(shape) device bytes, reused group after group in
// stream order.
int64_t conv2d_workspace_bytes(const ConvShape& shape);
void conv2d_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                const ConvShape& shape, void* workspace, intptr_t stream);

// ---- FPGM scores ----
// out[i] = sum_j ||W[i] - W[j]||_2 for W: C x K float32 row-major (contiguous) on the device; out: C doubles
// on the device (overwritten). Each pair once, squared differences summed in double (see fpgm.cu).
void fpgm_scores(const float* W, int64_t C, int64_t K, double* out, intptr_t stream);

}  // namespace cuda
}  // namespace pyslim
