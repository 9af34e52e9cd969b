// aarch64 int8 GEMM with the dot-product extension (sdot), compiled with
// -march=armv8.2-a+dotprod. Chosen only when the CPU reports asimddp (see cpu_features.cc). Depthwise
// convolution on this path is the NEON kernel of gemm_neon.cc (dot products do not help per-channel MACs).
//
// GEMM layout. W (N x K int8, row-major) is packed into panels of kPanel = 16 output columns, with N
// padded to a multiple of 16 and K to a multiple of kGroup = 4 by zeros. A panel is
//   int32 column_sum[16]                      sum_k W[16p + j][k], used for uint8 A (below); 64 bytes
//   int8  groups[K4 / 4][4][4][4]             groups[g][q][i][t] = W[16p + 4q + i][4g + t]
// so one 16-byte vector holds 4 columns x 4 consecutive k, the operand order of
// sdot (vdotq_lane_s32: lane i of the int32 accumulator += dot(W column 4q + i, one A k-group)). A panel
// is 64 + 16 * K4 bytes, a multiple of 64, so each one starts 64-byte aligned in the caller's buffer.
// gemm_n_step is 16; a column range that starts or ends inside a panel is still handled. The
// micro-kernel computes up to kRows = 4 rows x 16 columns in 16 int32x4 accumulators; A is read 8 bytes
// (2 k-groups, vdotq_lane_s32) per row per step with any row stride, the last K % 8 bytes through a
// zeroed stack copy so that no byte past a row's K-th element is read. (Reading 16 bytes of A per step
// would leave 16 accumulators + 16 weight vectors live once the compiler hoists the weight loads, and
// GCC then spills; 8 bytes keeps the hot loop within the 32 vector registers.)
//
// Exactness (no saturation, no rounding): sdot multiplies int8 x int8 and adds the four products to
// the int32 lane without intermediate narrowing, so signed A gives the reference's sum exactly. uint8 A
// (0..255) is not an int8, and u8 x s8 needs i8mm (usdot), which dotprod CPUs may lack, so A is
// re-centred: a ^ 0x80 reinterpreted as int8 equals a - 128, and
//   sum_k a[k] * w[k] = sum_k (a[k] - 128) * w[k] + 128 * sum_k w[k],
// the last term being 128 * column_sum from the packed buffer (added as column_sum << 7). All terms are
// int32 additions, exact whenever the reference's own int32 sum is (and equal modulo 2^32 otherwise).
// Zero-padded k positions hold W = 0, so the re-centred padding (0 - 128) still contributes 0.
//
// Depthwise convolution: the same algorithm as gemm_neon.cc (a per-channel product has no k reduction
// for sdot to exploit): 16 and then 8 channels per step, x and w widened to int16 and accumulated in
// int32 by vmlal_s16, a scalar loop for the last C % 8 channels; taps outside the input multiply pad_value
// (any int32) by the weight in int32 like the reference.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "pyslim/kernels.h"

namespace pyslim {
namespace neondot {
namespace {

constexpr int64_t kPanel = 16;             // output columns per packed panel (= gemm_n_step)
constexpr int64_t kGroup = 4;              // consecutive k per sdot lane
constexpr int64_t kStep = 8;               // k per A load (2 groups)
constexpr int64_t kGroupBytes = kPanel * kGroup;          // 64: one k-group of a panel
constexpr int64_t kSumBytes = kPanel * sizeof(int32_t);   // 64: the panel's column sums
constexpr int kRows = 4;                   // rows per micro-kernel call

int64_t padded_depth(int64_t K) { return (K + kGroup - 1) / kGroup * kGroup; }
int64_t panel_count(int64_t N) { return (N + kPanel - 1) / kPanel; }
int64_t panel_bytes(int64_t K) { return kSumBytes + kPanel * padded_depth(K); }

int64_t gemm_packed_size(int64_t N, int64_t K) { return panel_count(N) * panel_bytes(K); }

void gemm_pack(const int8_t* W, int64_t N, int64_t K, void* packed) {
  const int64_t groups = padded_depth(K) / kGroup;
  auto* out = static_cast<int8_t*>(packed);
  for (int64_t p = 0; p < panel_count(N); ++p) {
    int8_t* panel = out + p * panel_bytes(K);
    int32_t sums[kPanel];
    for (int64_t j = 0; j < kPanel; ++j) {
      const int64_t n = p * kPanel + j;
      // Summed in int64 and wrapped to int32 explicitly: only its value modulo 2^32 matters (see above).
      int64_t sum = 0;
      if (n < N) {
        for (int64_t k = 0; k < K; ++k) sum += W[n * K + k];
      }
      sums[j] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(sum)));
    }
    std::memcpy(panel, sums, sizeof(sums));
    int8_t* g_out = panel + kSumBytes;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < kPanel; ++j) {  // j = 4q + i
        const int64_t n = p * kPanel + j;
        for (int64_t t = 0; t < kGroup; ++t) {
          const int64_t k = g * kGroup + t;
          g_out[g * kGroupBytes + j * kGroup + t] = (n < N && k < K) ? W[n * K + k] : int8_t{0};
        }
      }
    }
  }
}

// Eight A bytes as int8: as is when signed, re-centred by a ^ 0x80 == a - 128 when unsigned.
template <bool kUnsigned>
inline int8x8_t load_a(const void* p) {
  if constexpr (kUnsigned) {
    return vreinterpret_s8_u8(veor_u8(vld1_u8(static_cast<const uint8_t*>(p)), vdup_n_u8(0x80)));
  } else {
    return vld1_s8(static_cast<const int8_t*>(p));
  }
}

// ---- GEMM micro-kernel ------------------------------------------------------------------------------------

// One k-group (lane kLane of each row's A vector = 4 consecutive k) times the panel's 16 columns.
// Always inlined: as a call, the accumulator array would live in memory.
template <int kR, int kLane>
__attribute__((always_inline)) inline void gemm_group(int32x4_t (&acc)[kR][4], const int8x8_t (&a)[kR],
                                                      const int8_t* w) {
  const int8_t* wg = w + kLane * kGroupBytes;
  const int8x16_t w0 = vld1q_s8(wg);
  const int8x16_t w1 = vld1q_s8(wg + 16);
  const int8x16_t w2 = vld1q_s8(wg + 32);
  const int8x16_t w3 = vld1q_s8(wg + 48);
#pragma GCC unroll 4
  for (int r = 0; r < kR; ++r) {
    acc[r][0] = vdotq_lane_s32(acc[r][0], w0, a[r], kLane);
    acc[r][1] = vdotq_lane_s32(acc[r][1], w1, a[r], kLane);
    acc[r][2] = vdotq_lane_s32(acc[r][2], w2, a[r], kLane);
    acc[r][3] = vdotq_lane_s32(acc[r][3], w3, a[r], kLane);
  }
}

// C[r][j - col_lo] for r < kR, j in [col_lo, col_hi) of one panel (0 <= col_lo < col_hi <= 16);
// C points at the output element of (row 0, column col_lo). A_T is uint8_t or int8_t.
template <typename A_T, int kR>
void gemm_tile(const A_T* A, int64_t lda, const int8_t* panel, int64_t K, int32_t* C, int64_t ldc,
               int64_t col_lo, int64_t col_hi) {
  constexpr bool kUnsigned = std::is_same_v<A_T, uint8_t>;
  int32x4_t acc[kR][4];
#pragma GCC unroll 4
  for (int r = 0; r < kR; ++r) {
    for (int q = 0; q < 4; ++q) acc[r][q] = vdupq_n_s32(0);
  }
  const int8_t* w = panel + kSumBytes;
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep, w += 2 * kGroupBytes) {
    int8x8_t a[kR];
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) a[r] = load_a<kUnsigned>(A + r * lda + k);
    gemm_group<kR, 0>(acc, a, w);
    gemm_group<kR, 1>(acc, a, w);
  }
  if (k < K) {
    // The last K % 8 positions, in ceil((K - k) / 4) groups (exactly the groups the panel still holds).
    const int64_t rest = K - k;
    int8x8_t a[kR];
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) {
      A_T tail[kStep] = {};
      std::memcpy(tail, A + r * lda + k, static_cast<size_t>(rest) * sizeof(A_T));
      a[r] = load_a<kUnsigned>(tail);
    }
    gemm_group<kR, 0>(acc, a, w);
    if (rest > 4) gemm_group<kR, 1>(acc, a, w);
  }
  if constexpr (kUnsigned) {
    const auto* sums = reinterpret_cast<const int32_t*>(panel);
    for (int q = 0; q < 4; ++q) {
      const int32x4_t correction = vshlq_n_s32(vld1q_s32(sums + 4 * q), 7);  // 128 * column sum
#pragma GCC unroll 4
      for (int r = 0; r < kR; ++r) acc[r][q] = vaddq_s32(acc[r][q], correction);
    }
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
  const int64_t bytes = panel_bytes(K);
  for (int64_t p = n_begin / kPanel; p * kPanel < n_end; ++p) {
    const int8_t* panel = packed + p * bytes;
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

}  // namespace
}  // namespace neondot

void fill_neondot_gemm(KernelTable* t) {
  t->gemm_n_step = neondot::kPanel;
  t->gemm_packed_size = neondot::gemm_packed_size;
  t->gemm_pack = neondot::gemm_pack;
  t->gemm_s32 = neondot::gemm_s32;
}

}  // namespace pyslim
