// FPGM distance sums, AArch64 Advanced SIMD (compiled with -march=armv8-a); see KernelTable::fpgm_pair_block.
// Serves the neon and neondot tables (dotprod adds nothing for float32).
//
// Micro-tile: kMR = 4 rows i x kNR = 2 rows j, 4 float32 lanes per q register. Per 4 columns it loads 6
// vectors and issues 8 fsub + 8 fmla (d = a - b; acc += d * d; fmla is fused). Accuracy (derived in
// kernels.h): every float32 lane accumulator holds at most kFpgmFloatTerms = 16 terms, then it is widened to
// double (fcvtl / fcvtl2) and added into double accumulators; the K % 4 tail is computed in double.
// 8 float + 16 double accumulators + 6 operands fit the 32 vector registers.
// Edge tiles repeat a valid row pointer and drop the extra results; pairs with j <= i are not added.
//
// Everything except fill_neon_fpgm has internal linkage (.ci/check_isa_symbols.sh).
#include <arm_neon.h>

#include <cmath>
#include <cstdint>

#include "../fpgm_pair_walk.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace fpgm_neon {
namespace {

constexpr int kLanes = 4;
constexpr int kMR = 4;
constexpr int kNR = 2;

// sq[m * kNR + n] = sum_k (a[m][k] - b[n][k])^2 for the full tile.
inline void tile(const float* const* a, const float* const* b, int64_t K, double* sq) {
  float64x2_t dacc[kMR][kNR][2];
  for (int m = 0; m < kMR; ++m)
    for (int n = 0; n < kNR; ++n) dacc[m][n][0] = dacc[m][n][1] = vdupq_n_f64(0.0);
  const int64_t kvec = K - K % kLanes;
  int64_t k = 0;
  while (k < kvec) {
    int64_t steps = (kvec - k) / kLanes;
    if (steps > kFpgmFloatTerms) steps = kFpgmFloatTerms;
    float32x4_t facc[kMR][kNR];
    for (int m = 0; m < kMR; ++m)
      for (int n = 0; n < kNR; ++n) facc[m][n] = vdupq_n_f32(0.0f);
    for (int64_t s = 0; s < steps; ++s, k += kLanes) {
      float32x4_t va[kMR];
      for (int m = 0; m < kMR; ++m) va[m] = vld1q_f32(a[m] + k);
      for (int n = 0; n < kNR; ++n) {
        const float32x4_t vb = vld1q_f32(b[n] + k);
        for (int m = 0; m < kMR; ++m) {
          const float32x4_t d = vsubq_f32(va[m], vb);
          facc[m][n] = vfmaq_f32(facc[m][n], d, d);
        }
      }
    }
    for (int m = 0; m < kMR; ++m)
      for (int n = 0; n < kNR; ++n) {
        dacc[m][n][0] = vaddq_f64(dacc[m][n][0], vcvt_f64_f32(vget_low_f32(facc[m][n])));
        dacc[m][n][1] = vaddq_f64(dacc[m][n][1], vcvt_high_f64_f32(facc[m][n]));
      }
  }
  for (int m = 0; m < kMR; ++m)
    for (int n = 0; n < kNR; ++n) {
      double s = vaddvq_f64(vaddq_f64(dacc[m][n][0], dacc[m][n][1]));
      for (int64_t t = kvec; t < K; ++t) {
        const double d = static_cast<double>(a[m][t]) - static_cast<double>(b[n][t]);
        s += d * d;
      }
      sq[m * kNR + n] = s;
    }
}

void fpgm_pair_block_neon(const float* W, int64_t K, int64_t ld, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          double* row_sums) {
  fpgm_walk_pairs<kMR, kNR>(W, K, ld, i0, i1, j0, j1, row_sums, tile);
}

}  // namespace
}  // namespace fpgm_neon

void fill_neon_fpgm(KernelTable* t) { t->fpgm_pair_block = fpgm_neon::fpgm_pair_block_neon; }

}  // namespace pyslim
