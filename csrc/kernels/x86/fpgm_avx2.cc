// FPGM distance sums, AVX2 + FMA (compiled with -mavx2 -mfma); see KernelTable::fpgm_pair_block.
//
// Micro-tile: kMR = 4 rows i x kNR = 2 rows j, 8 float32 lanes per ymm. Per 8 columns it loads 6 vectors and
// issues 8 vsubps + 8 vfmadd231ps (d = a - b; acc += d * d), so each loaded row vector is reused 2-4 times.
// Accuracy (derived in kernels.h): every float32 lane accumulator holds at most kFpgmFloatTerms = 16 terms,
// then it is widened to double and added into double accumulators; the K % 8 tail is computed in double.
// Edge tiles (fewer than 4 / 2 rows) repeat a valid row pointer and drop the extra results; pairs with
// j <= i (diagonal blocks) are computed but not added.
//
// Everything except fill_avx2_fpgm has internal linkage and no std template is instantiated here, so no
// AVX2 code can reach the baseline build through a shared weak symbol (.ci/check_isa_symbols.sh).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "../fpgm_pair_walk.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace fpgm_avx2 {
namespace {

constexpr int kLanes = 8;
constexpr int kMR = 4;
constexpr int kNR = 2;

// sq[m * kNR + n] = sum_k (a[m][k] - b[n][k])^2 for the full tile.
inline void tile(const float* const* a, const float* const* b, int64_t K, double* sq) {
  __m256d dacc[kMR][kNR][2];
  for (int m = 0; m < kMR; ++m)
    for (int n = 0; n < kNR; ++n) dacc[m][n][0] = dacc[m][n][1] = _mm256_setzero_pd();
  const int64_t kvec = K - K % kLanes;
  int64_t k = 0;
  while (k < kvec) {
    int64_t steps = (kvec - k) / kLanes;
    if (steps > kFpgmFloatTerms) steps = kFpgmFloatTerms;
    __m256 facc[kMR][kNR];
    for (int m = 0; m < kMR; ++m)
      for (int n = 0; n < kNR; ++n) facc[m][n] = _mm256_setzero_ps();
    for (int64_t s = 0; s < steps; ++s, k += kLanes) {
      __m256 va[kMR];
      for (int m = 0; m < kMR; ++m) va[m] = _mm256_loadu_ps(a[m] + k);
      for (int n = 0; n < kNR; ++n) {
        const __m256 vb = _mm256_loadu_ps(b[n] + k);
        for (int m = 0; m < kMR; ++m) {
          const __m256 d = _mm256_sub_ps(va[m], vb);
          facc[m][n] = _mm256_fmadd_ps(d, d, facc[m][n]);
        }
      }
    }
    for (int m = 0; m < kMR; ++m)
      for (int n = 0; n < kNR; ++n) {
        dacc[m][n][0] = _mm256_add_pd(dacc[m][n][0], _mm256_cvtps_pd(_mm256_castps256_ps128(facc[m][n])));
        dacc[m][n][1] = _mm256_add_pd(dacc[m][n][1], _mm256_cvtps_pd(_mm256_extractf128_ps(facc[m][n], 1)));
      }
  }
  for (int m = 0; m < kMR; ++m)
    for (int n = 0; n < kNR; ++n) {
      alignas(32) double lanes[4];
      _mm256_store_pd(lanes, _mm256_add_pd(dacc[m][n][0], dacc[m][n][1]));
      double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
      for (int64_t t = kvec; t < K; ++t) {
        const double d = static_cast<double>(a[m][t]) - static_cast<double>(b[n][t]);
        s += d * d;
      }
      sq[m * kNR + n] = s;
    }
}

void fpgm_pair_block_avx2(const float* W, int64_t K, int64_t ld, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          double* row_sums) {
  fpgm_walk_pairs<kMR, kNR>(W, K, ld, i0, i1, j0, j1, row_sums, tile);
}

}  // namespace
}  // namespace fpgm_avx2

void fill_avx2_fpgm(KernelTable* t) { t->fpgm_pair_block = fpgm_avx2::fpgm_pair_block_avx2; }

}  // namespace pyslim
