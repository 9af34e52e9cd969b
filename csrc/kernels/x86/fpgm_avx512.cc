// FPGM distance sums, AVX-512F (compiled with the AVX-512 flags); see KernelTable::fpgm_pair_block.
//
// Micro-tile: kMR = 4 rows i x kNR = 2 rows j, 16 float32 lanes per zmm. Per 16 columns it loads 6 vectors and
// issues 8 vsubps + 8 vfmadd231ps (zmm) (d = a - b; acc += d * d), so each loaded row vector is reused 2-4 times.
// Accuracy (derived in kernels.h): every float32 lane accumulator holds at most kFpgmFloatTerms = 16 terms,
// then it is widened to double and added into double accumulators; the K % 16 tail is computed in double.
// Edge tiles (fewer than 4 / 2 rows) repeat a valid row pointer and drop the extra results; pairs with
// j <= i (diagonal blocks) are computed but not added.
//
// Everything except fill_avx512_fpgm has internal linkage and no std template is instantiated here, so no
// AVX-512 code can reach the baseline build through a shared weak symbol (.ci/check_isa_symbols.sh).
// (The maskz_ forms with full masks are the plain instructions; they avoid GCC 12's false
// -Wmaybe-uninitialized on the _mm512_undefined_* sources of the unmasked intrinsics.)
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "../fpgm_pair_walk.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace fpgm_avx512 {
namespace {

constexpr int kLanes = 16;
constexpr int kMR = 4;
constexpr int kNR = 2;

// sq[m * kNR + n] = sum_k (a[m][k] - b[n][k])^2 for the full tile.
inline void tile(const float* const* a, const float* const* b, int64_t K, double* sq) {
  __m512d dacc[kMR][kNR][2];
  for (int m = 0; m < kMR; ++m)
    for (int n = 0; n < kNR; ++n) dacc[m][n][0] = dacc[m][n][1] = _mm512_setzero_pd();
  const int64_t kvec = K - K % kLanes;
  int64_t k = 0;
  while (k < kvec) {
    int64_t steps = (kvec - k) / kLanes;
    if (steps > kFpgmFloatTerms) steps = kFpgmFloatTerms;
    __m512 facc[kMR][kNR];
    for (int m = 0; m < kMR; ++m)
      for (int n = 0; n < kNR; ++n) facc[m][n] = _mm512_setzero_ps();
    for (int64_t s = 0; s < steps; ++s, k += kLanes) {
      __m512 va[kMR];
      for (int m = 0; m < kMR; ++m) va[m] = _mm512_loadu_ps(a[m] + k);
      for (int n = 0; n < kNR; ++n) {
        const __m512 vb = _mm512_loadu_ps(b[n] + k);
        for (int m = 0; m < kMR; ++m) {
          const __m512 d = _mm512_sub_ps(va[m], vb);
          facc[m][n] = _mm512_fmadd_ps(d, d, facc[m][n]);
        }
      }
    }
    for (int m = 0; m < kMR; ++m)
      for (int n = 0; n < kNR; ++n) {
        const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(facc[m][n]), 0));
        dacc[m][n][0] = _mm512_add_pd(dacc[m][n][0], _mm512_maskz_cvtps_pd(0xFF, lo));
        const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(facc[m][n]), 1));
        dacc[m][n][1] = _mm512_add_pd(dacc[m][n][1], _mm512_maskz_cvtps_pd(0xFF, hi));
      }
  }
  for (int m = 0; m < kMR; ++m)
    for (int n = 0; n < kNR; ++n) {
      alignas(64) double lanes[8];
      _mm512_store_pd(lanes, _mm512_add_pd(dacc[m][n][0], dacc[m][n][1]));
      double s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
      for (int64_t t = kvec; t < K; ++t) {
        const double d = static_cast<double>(a[m][t]) - static_cast<double>(b[n][t]);
        s += d * d;
      }
      sq[m * kNR + n] = s;
    }
}

void fpgm_pair_block_avx512(const float* W, int64_t K, int64_t ld, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          double* row_sums) {
  fpgm_walk_pairs<kMR, kNR>(W, K, ld, i0, i1, j0, j1, row_sums, tile);
}

}  // namespace
}  // namespace fpgm_avx512

void fill_avx512_fpgm(KernelTable* t) { t->fpgm_pair_block = fpgm_avx512::fpgm_pair_block_avx512; }

}  // namespace pyslim
