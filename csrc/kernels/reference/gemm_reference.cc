// Scalar int8 GEMM and depthwise convolution: the executable spec of the int32 results, which every path
// must reproduce exactly. The reference "packing" is a plain copy of W (N x K).
#include <cstdint>
#include <cstring>

#include "pyslim/kernels.h"
#include "../gemm_epilogue_impl.h"

namespace pyslim {
namespace reference {
namespace {

int64_t gemm_packed_size(int64_t N, int64_t K) { return N * K; }

void gemm_pack(const int8_t* W, int64_t N, int64_t K, void* packed) {
  std::memcpy(packed, W, static_cast<size_t>(N * K));
}

template <typename A_T>
void gemm_rows(const A_T* A, int64_t lda, const int8_t* W, int64_t M, int64_t K, int64_t n_begin, int64_t n_end,
               int32_t* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    const A_T* a = A + m * lda;
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int8_t* w = W + n * K;
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<int32_t>(a[k]) * static_cast<int32_t>(w[k]);
      C[m * ldc + n] = acc;
    }
  }
}

void gemm_s32(const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M, int64_t /*N*/, int64_t K,
              int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc) {
  const auto* W = static_cast<const int8_t*>(packed);
  if (a_signed) {
    gemm_rows(static_cast<const int8_t*>(A), lda, W, M, K, n_begin, n_end, C, ldc);
  } else {
    gemm_rows(static_cast<const uint8_t*>(A), lda, W, M, K, n_begin, n_end, C, ldc);
  }
}

template <typename X_T>
void depthwise_rows(const X_T* x, int32_t pad_value, const int8_t* w, int32_t* out, const DepthwiseShape& s,
                    int64_t row_begin, int64_t row_end) {
  const int64_t C = s.channels;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.out_h, oh = row % s.out_h;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      int32_t* o = out + ((b * s.out_h + oh) * s.out_w + ow) * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0;
      for (int64_t i = 0; i < s.kernel_h; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
        for (int64_t j = 0; j < s.kernel_w; ++j) {
          const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
          const int8_t* wk = w + (i * s.kernel_w + j) * C;
          const bool inside = ih >= 0 && ih < s.height && iw >= 0 && iw < s.width;
          const X_T* xp = inside ? x + ((b * s.height + ih) * s.width + iw) * C : nullptr;
          for (int64_t c = 0; c < C; ++c) {
            const int32_t v = inside ? static_cast<int32_t>(xp[c]) : pad_value;
            o[c] += v * static_cast<int32_t>(wk[c]);
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
}  // namespace reference

void fill_reference_gemm(KernelTable* t) {
  t->gemm_epilogue = gemm_epilogue_impl;
  t->gemm_n_step = 1;
  t->gemm_packed_size = reference::gemm_packed_size;
  t->gemm_pack = reference::gemm_pack;
  t->gemm_s32 = reference::gemm_s32;
  t->conv_implicit_s32 = nullptr;  // optional; the driver falls back to im2col + gemm_s32
  t->conv_grouped_fits = nullptr;  // optional, likewise
  t->conv_grouped_s32 = nullptr;
  t->depthwise_conv_s32 = reference::depthwise_conv_s32;
}

}  // namespace pyslim
