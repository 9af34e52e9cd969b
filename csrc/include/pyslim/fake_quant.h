// Whole-tensor fake-quantization drivers (CPU): channel layout, threading and cross-span reductions
// around the per-ISA micro-kernels of kernels.h. A tensor quantized per channel along `axis` is seen as
// a contiguous [outer, channels, inner] array; per-tensor quantization is channels == 1.
#pragma once

#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {

struct ChannelLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 0;
  int64_t numel() const { return outer * channels * inner; }
};

// out[c] = max |x| over channel c (NaN if the channel holds a NaN; 0 for an empty channel).
void abs_max_channels(const KernelTable& k, const float* x, const ChannelLayout& layout, float* out, int threads);

void fake_quant_symmetric(const KernelTable& k, const float* x, float* y, const ChannelLayout& layout,
                          const float* scale, int32_t bin, RoundMode round, int threads);
// grad_scale, when not null, has `channels` doubles and is overwritten with the per-channel sums.
void fake_quant_symmetric_backward(const KernelTable& k, const float* x, const float* grad, float* grad_x,
                                   const ChannelLayout& layout, const float* scale, int32_t bin, RoundMode round,
                                   GradMask mask, double* grad_scale, int threads);

void fake_quant_affine(const KernelTable& k, const float* x, float* y, const ChannelLayout& layout,
                       const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round,
                       int threads);
void fake_quant_affine_backward(const KernelTable& k, const float* x, const float* grad, float* grad_x,
                                const ChannelLayout& layout, const float* scale, const int32_t* zero_point,
                                int32_t qmin, int32_t qmax, RoundMode round, GradMask mask, double* grad_scale,
                                double* grad_zero_point, int threads);

// Forwards that also write the clipped straight-through mask (kernels.h: element i of the tensor is bit i % 8
// of mask_bits[i / 8]; ceil(numel / 8) bytes, the padding bits of the last byte cleared). Tasks start on
// multiples of 64 elements, so no two threads write the same mask byte.
void fake_quant_affine_mask(const KernelTable& k, const float* x, float* y, uint8_t* mask_bits,
                            const ChannelLayout& layout, const float* scale, const int32_t* zero_point, int32_t qmin,
                            int32_t qmax, RoundMode round, int threads);
void fake_quant_symmetric_mask(const KernelTable& k, const float* x, float* y, uint8_t* mask_bits,
                               const ChannelLayout& layout, const float* scale, int32_t bin, RoundMode round,
                               GradMask mask, int threads);
// grad_x[i] = bit i of mask_bits ? grad[i] : 0 over n elements (the backward of the two above).
void apply_grad_mask(const KernelTable& k, const float* grad, const uint8_t* mask_bits, float* grad_x, int64_t n,
                     int threads);

void quantize_int8(const KernelTable& k, const float* x, int8_t* q, const ChannelLayout& layout, const float* scale,
                   const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, int threads);
void quantize_int16(const KernelTable& k, const float* x, int16_t* q, const ChannelLayout& layout,
                    const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round,
                    int threads);
void dequantize_int8(const KernelTable& k, const int8_t* q, float* y, const ChannelLayout& layout, const float* scale,
                     const int32_t* zero_point, int threads);
void dequantize_int16(const KernelTable& k, const int16_t* q, float* y, const ChannelLayout& layout,
                      const float* scale, const int32_t* zero_point, int threads);

}  // namespace pyslim
