// AVX2 int8 GEMM and depthwise convolution (compiled with -mavx2 -mfma). Also serves the AVX-512 table
// (CPUs without VNNI), see dispatch.cc.
//
// GEMM: C[m][n] = sum_k A[m][k] * W[n][k], exact in int32 (see kernels.h and the reference).
//
// The saturation hazard, and the choice made here: vpmaddubsw (u8 x s8, pairs summed into int16 with
// saturation) is NOT used. Two products of 255 * -128 sum to -65280, far outside int16, so it would clamp
// silently for ordinary data (A = 255, W = -128), and every exact repair of it (splitting A into a 7-bit
// part and a top bit, or into nibbles) costs at least as many instructions as the plain widening below.
// Instead both operands are widened to int16 and multiplied with vpmaddwd (s16 x s16, adjacent pairs
// summed into int32): |a0*w0 + a1*w1| <= 2 * 255 * 128 = 65280, which int32 holds with room to spare, so
// there is no saturation anywhere. Widening A to int16 (zero- or sign-extension) also makes uint8 and int8 A
// the same case: no +128 offset or column-sum correction is needed on this path.
//   * W is packed as int8 in k-pairs and widened in the micro-kernel with vpmovsxbw (one instruction per
//     8 columns x 2 k, shared by all rows of the tile), so the packed W is N*K bytes, not 2*N*K.
//   * A is widened once per K block into a stack scratch of int32 words, each holding (a[2g], a[2g+1]) as
//     two int16, laid out [group][row] so the micro-kernel broadcasts consecutive words.
//   * Micro-kernel: kMR = 6 rows x kNR = 16 columns (12 ymm accumulators, 2 ymm of W, 1 broadcast);
//     gemm_n_step = kNR. Edge tiles: fewer rows by template instantiation, fewer columns by vpmaskmovd
//     stores (the packed W is zero past N and K).
//   * Blocking: K in blocks of 256 (W sub-panel 16 x 256 = 4 KiB, resident in L1), M in blocks of up to
//     kMC = 120 rows (A scratch 120 x 128 words = 60 KiB of stack). The first K block writes C, the later
//     ones add onto it.
//
// Packed W layout (this file's private format; 64-byte aligned buffer):
//   Np / 16 panels of K2 * 32 bytes     Np = N rounded up to 16, K2 = ceil(K / 2); panel p, pair g, column c,
//                                       byte i: W[16p + c][2g + i] at (p * K2 + g) * 32 + c * 2 + i, 0 past N / K
//
// Depthwise: vectorised over channels (8 int32 lanes per ymm, 32 channels per step, then steps of 8, then a
// scalar tail for C % 8); bytes widened to int32 and multiplied with vpmulld, so every product is exact.
//
// Everything except fill_avx2_gemm has internal linkage (no std templates are instantiated here), so no
// AVX2 code can leak into the baseline build through a shared weak symbol.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "pyslim/kernels.h"
#include "../gemm_epilogue_impl.h"

namespace pyslim {
namespace avx2_gemm {
namespace {

constexpr int64_t kMR = 6;     // rows per micro-tile
constexpr int64_t kNR = 16;    // columns per micro-tile (2 ymm of 8 int32)
constexpr int64_t kKCg = 128;  // k-pairs per K block (256 k)
constexpr int64_t kMC = 120;   // rows per A block (multiple of kMR)
static_assert(kMC % kMR == 0, "the A block holds whole row tiles");

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

int64_t gemm_packed_size(int64_t N, int64_t K) { return round_up(N, kNR) * ((K + 1) / 2) * 2; }

void gemm_pack(const int8_t* W, int64_t N, int64_t K, void* packed) {
  const int64_t k2 = (K + 1) / 2;
  auto* panels = static_cast<int8_t*>(packed);
  std::memset(panels, 0, static_cast<size_t>(gemm_packed_size(N, K)));
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* w = W + n * K;
    int8_t* panel = panels + (n / kNR) * k2 * kNR * 2 + (n % kNR) * 2;
    for (int64_t k = 0; k < K; ++k) panel[(k / 2) * kNR * 2 + (k % 2)] = w[k];
  }
}

template <bool kSigned>
inline uint32_t widen_pair(const uint8_t* a, bool second_inside) {
  const int32_t a0 = kSigned ? static_cast<int32_t>(static_cast<int8_t>(a[0])) : static_cast<int32_t>(a[0]);
  const int32_t a1 = !second_inside ? 0
                     : kSigned      ? static_cast<int32_t>(static_cast<int8_t>(a[1]))
                                    : static_cast<int32_t>(a[1]);
  return (static_cast<uint32_t>(a0) & 0xffffu) | (static_cast<uint32_t>(a1) << 16);
}

// Widens rows [0, rows) x pairs [g0, g0 + kg) of A into ap: tile t, pair g, row r at ap[(t * kg + g) * kMR + r],
// each word (int16 a[2g], int16 a[2g + 1]); rows past `rows` and k past K are zero.
template <bool kSigned>
void pack_a(const uint8_t* A, int64_t lda, int64_t rows, int64_t K, int64_t g0, int64_t kg, uint32_t* ap) {
  const int64_t tiles = (rows + kMR - 1) / kMR;
  const int64_t full = (g0 + kg) * 2 <= K ? kg : kg - 1;  // pairs with both k inside K
  for (int64_t t = 0; t < tiles; ++t) {
    for (int64_t r = 0; r < kMR; ++r) {
      const int64_t row = t * kMR + r;
      uint32_t* dst = ap + t * kg * kMR + r;
      if (row >= rows) {
        for (int64_t g = 0; g < kg; ++g) dst[g * kMR] = 0;
        continue;
      }
      const uint8_t* a = A + row * lda + g0 * 2;
      int64_t g = 0;
      // 16 pairs at a time: 32 bytes widened to 32 int16, which are already the interleaved words.
      for (; g + 16 <= full; g += 16) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 2 * g));
        const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
        const __m256i w0 = kSigned ? _mm256_cvtepi8_epi16(lo) : _mm256_cvtepu8_epi16(lo);
        const __m256i w1 = kSigned ? _mm256_cvtepi8_epi16(hi) : _mm256_cvtepu8_epi16(hi);
        alignas(32) uint32_t words[16];
        _mm256_store_si256(reinterpret_cast<__m256i*>(words), w0);
        _mm256_store_si256(reinterpret_cast<__m256i*>(words + 8), w1);
        for (int i = 0; i < 16; ++i) dst[(g + i) * kMR] = words[i];
      }
      for (; g < full; ++g) dst[g * kMR] = widen_pair<kSigned>(a + 2 * g, true);
      if (full < kg) dst[full * kMR] = widen_pair<kSigned>(a + 2 * full, false);  // K odd: last k alone
    }
  }
}

// One R x 16 tile over kg pairs. first: start from 0, else from the C tile. cols <= 16 valid.
// The 12 accumulators are named variables, not an array: GCC 12 may keep a __m256i[R][2] array in memory
// and store it every iteration. Rows >= R vanish at compile time.
// acc0 += madd(a, w0); acc1 += madd(a, w1), as one asm block with one temporary: with intrinsics GCC 12
// hoists all six broadcasts and spills accumulators to the stack (16 ymm registers: 12 accumulators, 2 W,
// 1 A, 1 temporary fit exactly only in this order). Same instructions, same result.
inline void madd_add2(__m256i& acc0, __m256i& acc1, __m256i a, __m256i w0, __m256i w1) {
  __m256i t;
  __asm__(
      "vpmaddwd %[w0], %[a], %[t]\n\t"
      "vpaddd %[t], %[c0], %[c0]\n\t"
      "vpmaddwd %[w1], %[a], %[t]\n\t"
      "vpaddd %[t], %[c1], %[c1]"
      : [c0] "+x"(acc0), [c1] "+x"(acc1), [t] "=&x"(t)
      : [a] "x"(a), [w0] "x"(w0), [w1] "x"(w1));
}
#define PYSLIM_AVX2_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int R>
__attribute__((noinline)) void micro_kernel(const uint32_t* ap, const int8_t* wp, int64_t kg, int32_t* C, int64_t ldc, bool first,
                  int64_t cols) {
  static_assert(R >= 1 && R <= kMR, "row count");
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)), iota);
  const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - 8)), iota);
#define PYSLIM_DECL(r) __m256i c##r##0, c##r##1;
  PYSLIM_AVX2_ROWS(PYSLIM_DECL)
#undef PYSLIM_DECL
#define PYSLIM_INIT(r)                                                  \
  if constexpr (R > r) {                                                \
    if (first) {                                                        \
      c##r##0 = _mm256_setzero_si256();                                 \
      c##r##1 = _mm256_setzero_si256();                                 \
    } else {                                                            \
      c##r##0 = _mm256_maskload_epi32(C + r * ldc, mask0);              \
      c##r##1 = _mm256_maskload_epi32(C + r * ldc + 8, mask1);          \
    }                                                                   \
  }
  PYSLIM_AVX2_ROWS(PYSLIM_INIT)
#undef PYSLIM_INIT
  for (int64_t g = 0; g < kg; ++g) {
    const int8_t* w = wp + g * kNR * 2;
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(w)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(w + 16)));
    const uint32_t* a = ap + g * kMR;
#define PYSLIM_STEP(r)                                                  \
  if constexpr (R > r) {                                                \
    const __m256i av = _mm256_set1_epi32(static_cast<int>(a[r]));       \
    madd_add2(c##r##0, c##r##1, av, w0, w1);                            \
  }
    PYSLIM_AVX2_ROWS(PYSLIM_STEP)
#undef PYSLIM_STEP
  }
#define PYSLIM_STORE(r)                                                         \
  if constexpr (R > r) {                                                        \
    if (cols == kNR) {                                                          \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + r * ldc), c##r##0);    \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + r * ldc + 8), c##r##1); \
    } else {                                                                    \
      _mm256_maskstore_epi32(C + r * ldc, mask0, c##r##0);                      \
      _mm256_maskstore_epi32(C + r * ldc + 8, mask1, c##r##1);                  \
    }                                                                           \
  }
  PYSLIM_AVX2_ROWS(PYSLIM_STORE)
#undef PYSLIM_STORE
}
#undef PYSLIM_AVX2_ROWS

template <bool kSigned>
void gemm(const uint8_t* A, int64_t lda, const void* packed, int64_t M, int64_t K, int64_t n_begin, int64_t n_end,
          int32_t* C, int64_t ldc) {
  const int64_t k2 = (K + 1) / 2;
  const int8_t* panels = static_cast<const int8_t*>(packed);
  alignas(64) uint32_t ap[kMC * kKCg];
  for (int64_t m0 = 0; m0 < M; m0 += kMC) {
    const int64_t mc = min64(kMC, M - m0);
    for (int64_t g0 = 0; g0 < k2; g0 += kKCg) {
      const int64_t kg = min64(kKCg, k2 - g0);
      pack_a<kSigned>(A + m0 * lda, lda, mc, K, g0, kg, ap);
      const bool first = g0 == 0;
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kNR) {
        const int64_t cols = min64(kNR, n_end - n0);
        const int8_t* wp = panels + ((n0 / kNR) * k2 + g0) * kNR * 2;
        for (int64_t r0 = 0, t = 0; r0 < mc; r0 += kMR, ++t) {
          const uint32_t* at = ap + t * kg * kMR;
          int32_t* c = C + (m0 + r0) * ldc + n0;
          switch (min64(kMR, mc - r0)) {
            case 1: micro_kernel<1>(at, wp, kg, c, ldc, first, cols); break;
            case 2: micro_kernel<2>(at, wp, kg, c, ldc, first, cols); break;
            case 3: micro_kernel<3>(at, wp, kg, c, ldc, first, cols); break;
            case 4: micro_kernel<4>(at, wp, kg, c, ldc, first, cols); break;
            case 5: micro_kernel<5>(at, wp, kg, c, ldc, first, cols); break;
            default: micro_kernel<6>(at, wp, kg, c, ldc, first, cols); break;
          }
        }
      }
    }
  }
}

void gemm_s32(const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M, int64_t /*N*/, int64_t K,
              int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc) {
  if (M <= 0 || K <= 0 || n_end <= n_begin) return;
  if (a_signed) {
    gemm<true>(static_cast<const uint8_t*>(A), lda, packed, M, K, n_begin, n_end, C, ldc);
  } else {
    gemm<false>(static_cast<const uint8_t*>(A), lda, packed, M, K, n_begin, n_end, C, ldc);
  }
}

// ---- depthwise ----

template <bool kSigned>
inline __m256i load8(const uint8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return kSigned ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
}
inline __m256i load8w(const int8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// V vectors of 8 channels starting at channel c of one output pixel.
template <bool kSigned, int V>
inline void dw_pixel(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* o, const DepthwiseShape& s,
                     int64_t b, int64_t oh, int64_t ow, int64_t c) {
  const int64_t C = s.channels;
  __m256i acc[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_si256();
  const __m256i pad = _mm256_set1_epi32(pad_value);
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
    const bool row_in = ih >= 0 && ih < s.height;
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
      const int8_t* wk = w + (i * s.kernel_w + j) * C + c;
      if (row_in && iw >= 0 && iw < s.width) {
        const uint8_t* xp = x + ((b * s.height + ih) * s.width + iw) * C + c;
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
          acc[v] = _mm256_add_epi32(acc[v], _mm256_mullo_epi32(load8<kSigned>(xp + 8 * v), load8w(wk + 8 * v)));
      } else {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[v] = _mm256_add_epi32(acc[v], _mm256_mullo_epi32(pad, load8w(wk + 8 * v)));
      }
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c + 8 * v), acc[v]);
}

// Channels [c, C) (fewer than 8) of one output pixel, scalar, in the reference's order.
template <bool kSigned>
void dw_pixel_tail(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* o, const DepthwiseShape& s,
                   int64_t b, int64_t oh, int64_t ow, int64_t c0) {
  const int64_t C = s.channels;
  for (int64_t c = c0; c < C; ++c) o[c] = 0;
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
      const int8_t* wk = w + (i * s.kernel_w + j) * C;
      const bool inside = ih >= 0 && ih < s.height && iw >= 0 && iw < s.width;
      const uint8_t* xp = inside ? x + ((b * s.height + ih) * s.width + iw) * C : nullptr;
      for (int64_t c = c0; c < C; ++c) {
        const int32_t v = !inside ? pad_value
                          : kSigned ? static_cast<int32_t>(static_cast<int8_t>(xp[c]))
                                    : static_cast<int32_t>(xp[c]);
        // Wrapping multiply-add, as vpmulld / vpaddd do (the reference overflows only where this wraps).
        o[c] = static_cast<int32_t>(static_cast<uint32_t>(o[c]) +
                                    static_cast<uint32_t>(v) * static_cast<uint32_t>(static_cast<int32_t>(wk[c])));
      }
    }
  }
}

template <bool kSigned>
void depthwise_rows(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* out, const DepthwiseShape& s,
                    int64_t row_begin, int64_t row_end) {
  const int64_t C = s.channels;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.out_h, oh = row % s.out_h;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      int32_t* o = out + ((b * s.out_h + oh) * s.out_w + ow) * C;
      int64_t c = 0;
      for (; c + 32 <= C; c += 32) dw_pixel<kSigned, 4>(x, pad_value, w, o, s, b, oh, ow, c);
      for (; c + 8 <= C; c += 8) dw_pixel<kSigned, 1>(x, pad_value, w, o, s, b, oh, ow, c);
      if (c < C) dw_pixel_tail<kSigned>(x, pad_value, w, o, s, b, oh, ow, c);
    }
  }
}

// Fast path (pad_value within int16), the AVX2 form of the AVX-512 VNNI file's: vpmaddwd on PAIRS of
// horizontally adjacent taps (j, j+1) of one kernel row, read straight from "pair rows" P of int32 words
// holding the int16 pair (x[iw][c], x[iw + dw][c]) for every position of the padded row (pad_value outside
// the input), built once per input row and cached (KH slots tagged by input row) across the output rows of
// one call. An odd last tap is paired with a zero weight. |a0*w0 + a1*w1| <= 2 * 32768 * 128: exact;
// vpaddd wraps like the reference's int32 sum. Channels in blocks of 16 (the tail through a zero-padded
// copy); vpunpck{l,h}wd scramble them within 128-bit lanes (lo: 0-3, 8-11; hi: 4-7, 12-15), the weights
// are scrambled the same way, and vperm2i128 restores the order at the store.
constexpr int kDwPix = 4;        // output pixels per register block (8 accumulators)
constexpr int64_t kDwMaxKh = 16;  // taller kernels take the generic path

template <bool kSigned>
inline __m256i widen16(const uint8_t* p, int64_t left) {
  __m128i b;
  if (left >= 16) {
    b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else {
    alignas(16) uint8_t tmp[16] = {};
    std::memcpy(tmp, p, static_cast<size_t>(left));
    b = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
  }
  return kSigned ? _mm256_cvtepi8_epi16(b) : _mm256_cvtepu8_epi16(b);
}

template <int NB>
inline void dw_pairs_block(const int32_t* const* prow, const int32_t* wt, int32_t* o, const DepthwiseShape& s,
                           int64_t ow, int64_t cb, int64_t nCB, int64_t npairs) {
  __m256i acc[NB][2];
#pragma GCC unroll 8
  for (int n = 0; n < NB; ++n) acc[n][0] = acc[n][1] = _mm256_setzero_si256();
  const int64_t pix = s.stride_w * nCB * 16, tap2 = 2 * s.dilation_w * nCB * 16;
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    const int32_t* q = prow[i] + (ow * s.stride_w * nCB + cb) * 16;
    const int32_t* wk = wt + ((i * npairs) * nCB + cb) * 16;
    for (int64_t jp = 0; jp < npairs; ++jp, q += tap2, wk += nCB * 16) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + 8));
#pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) {
        const __m256i* qn = reinterpret_cast<const __m256i*>(q + n * pix);
        acc[n][0] = _mm256_add_epi32(acc[n][0], _mm256_madd_epi16(_mm256_loadu_si256(qn), w0));
        acc[n][1] = _mm256_add_epi32(acc[n][1], _mm256_madd_epi16(_mm256_loadu_si256(qn + 1), w1));
      }
    }
  }
  const int64_t C = s.channels, left = C - cb * 16;
#pragma GCC unroll 8
  for (int n = 0; n < NB; ++n) {
    int32_t* on = o + (ow + n) * C + cb * 16;
    const __m256i lo = _mm256_permute2x128_si256(acc[n][0], acc[n][1], 0x20);
    const __m256i hi = _mm256_permute2x128_si256(acc[n][0], acc[n][1], 0x31);
    if (left >= 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(on), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(on + 8), hi);
    } else {
      alignas(32) int32_t tmp[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), hi);
      std::memcpy(on, tmp, static_cast<size_t>(left) * sizeof(int32_t));
    }
  }
}

// Per-thread scratch, grown on demand, 64-byte aligned so that no ymm load of a pair row splits a cache line
// (plain C allocation: no std templates in this file, see check_isa_symbols).
struct DwScratch {
  int32_t* buf = nullptr;
  size_t size = 0;
  int32_t* get(size_t n) {
    if (n > size) {
      std::free(buf);
      buf = static_cast<int32_t*>(std::aligned_alloc(64, (n * sizeof(int32_t) + 63) / 64 * 64));
      size = buf != nullptr ? n : 0;
    }
    return buf;
  }
  ~DwScratch() { std::free(buf); }
};

// Returns false (having written nothing) when its scratch cannot be allocated.
template <bool kSigned>
bool depthwise_rows_pairs(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* out,
                          const DepthwiseShape& s, int64_t row_begin, int64_t row_end) {
  const int64_t C = s.channels, KH = s.kernel_h, KW = s.kernel_w;
  const int64_t nCB = (C + 15) / 16, npairs = (KW + 1) / 2;
  const int64_t Wp = (s.out_w - 1) * s.stride_w + (KW - 1) * s.dilation_w + 1;  // positions iw = p - pad_w
  const int64_t row_words = Wp * nCB * 16, wt_words = KH * npairs * nCB * 16;
  static thread_local DwScratch scratch;
  int32_t* wt = scratch.get(static_cast<size_t>(wt_words + KH * row_words));
  if (wt == nullptr) return false;
  int32_t* rows = wt + wt_words;
  for (int64_t i = 0; i < KH; ++i) {
    for (int64_t jp = 0; jp < npairs; ++jp) {
      for (int64_t cb = 0; cb < nCB; ++cb) {
        const int64_t left = C - cb * 16;
        const int8_t* w0 = w + (i * KW + 2 * jp) * C + cb * 16;
        const __m256i a = widen16<true>(reinterpret_cast<const uint8_t*>(w0), left);
        const __m256i b = 2 * jp + 1 < KW ? widen16<true>(reinterpret_cast<const uint8_t*>(w0 + C), left)
                                          : _mm256_setzero_si256();
        auto* d = reinterpret_cast<__m256i*>(wt + ((i * npairs + jp) * nCB + cb) * 16);
        _mm256_storeu_si256(d, _mm256_unpacklo_epi16(a, b));
        _mm256_storeu_si256(d + 1, _mm256_unpackhi_epi16(a, b));
      }
    }
  }
  const int64_t kNoRow = -1, kPadRow = -2;
  int64_t tag[kDwMaxKh], want[kDwMaxKh];
  const int32_t* prow[kDwMaxKh];
  for (int64_t k = 0; k < KH; ++k) tag[k] = kNoRow;
  const __m256i padv = _mm256_set1_epi16(static_cast<int16_t>(pad_value));
  auto build = [&](int32_t* dst, int64_t b, int64_t ih) {
    const bool row_in = ih >= 0 && ih < s.height;
    const uint8_t* xr = row_in ? x + (b * s.height + ih) * s.width * C : nullptr;
    for (int64_t p = 0; p < Wp; ++p) {
      const int64_t iw = p - s.pad_w, iw2 = iw + s.dilation_w;
      const bool in_a = row_in && iw >= 0 && iw < s.width, in_b = row_in && iw2 >= 0 && iw2 < s.width;
      for (int64_t cb = 0; cb < nCB; ++cb) {
        const int64_t left = C - cb * 16;
        const __m256i a = in_a ? widen16<kSigned>(xr + iw * C + cb * 16, left) : padv;
        const __m256i bb = in_b ? widen16<kSigned>(xr + iw2 * C + cb * 16, left) : padv;
        auto* d = reinterpret_cast<__m256i*>(dst + (p * nCB + cb) * 16);
        _mm256_storeu_si256(d, _mm256_unpacklo_epi16(a, bb));
        _mm256_storeu_si256(d + 1, _mm256_unpackhi_epi16(a, bb));
      }
    }
  };
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.out_h, oh = row % s.out_h;
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
      want[i] = ih >= 0 && ih < s.height ? b * s.height + ih : kPadRow;
    }
    // Reuse cached rows; build the missing ones into slots no current kernel row needs.
    for (int64_t i = 0; i < KH; ++i) {
      prow[i] = nullptr;
      for (int64_t k = 0; k < KH; ++k)
        if (tag[k] == want[i]) prow[i] = rows + k * row_words;
    }
    for (int64_t i = 0; i < KH; ++i) {
      if (prow[i] != nullptr) continue;
      int64_t slot = 0;
      for (; slot < KH; ++slot) {
        bool used = false;
        for (int64_t k = 0; k < KH; ++k) used = used || (prow[k] == rows + slot * row_words);
        if (!used) break;
      }
      build(rows + slot * row_words, b, oh * s.stride_h - s.pad_h + i * s.dilation_h);
      tag[slot] = want[i];
      for (int64_t k = i; k < KH; ++k)
        if (want[k] == want[i]) prow[k] = rows + slot * row_words;
    }
    int32_t* o = out + (b * s.out_h + oh) * s.out_w * C;
    for (int64_t cb = 0; cb < nCB; ++cb) {
      int64_t ow = 0;
      for (; ow + kDwPix <= s.out_w; ow += kDwPix) dw_pairs_block<kDwPix>(prow, wt, o, s, ow, cb, nCB, npairs);
      for (; ow < s.out_w; ++ow) dw_pairs_block<1>(prow, wt, o, s, ow, cb, nCB, npairs);
    }
  }
  return true;
}

void depthwise_conv_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                        const DepthwiseShape& shape, int64_t row_begin, int64_t row_end) {
  if (row_end <= row_begin || shape.out_w <= 0 || shape.channels <= 0) return;
  if (pad_value >= -32768 && pad_value <= 32767 && shape.kernel_h >= 1 && shape.kernel_h <= kDwMaxKh &&
      shape.kernel_w >= 1) {
    const bool done = x_signed ? depthwise_rows_pairs<true>(static_cast<const uint8_t*>(x), pad_value, w, out, shape,
                                                            row_begin, row_end)
                               : depthwise_rows_pairs<false>(static_cast<const uint8_t*>(x), pad_value, w, out,
                                                             shape, row_begin, row_end);
    if (done) return;
  }
  if (x_signed) {
    depthwise_rows<true>(static_cast<const uint8_t*>(x), pad_value, w, out, shape, row_begin, row_end);
  } else {
    depthwise_rows<false>(static_cast<const uint8_t*>(x), pad_value, w, out, shape, row_begin, row_end);
  }
}

}  // namespace
}  // namespace avx2_gemm

// Called by the dispatcher only on a CPU with AVX2 (the whole file is compiled with its flags). Used for
// both the avx2 and the avx512 tables.
void fill_avx2_gemm(KernelTable* t) {
  t->gemm_epilogue = gemm_epilogue_impl;
  t->gemm_n_step = avx2_gemm::kNR;
  t->gemm_packed_size = avx2_gemm::gemm_packed_size;
  t->gemm_pack = avx2_gemm::gemm_pack;
  t->gemm_s32 = avx2_gemm::gemm_s32;
  t->depthwise_conv_s32 = avx2_gemm::depthwise_conv_s32;
}

}  // namespace pyslim
