// FPGM scores driver: tiling of the symmetric pair space, threading and the reduction (see fpgm.h).
#include "pyslim/fpgm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "pyslim/thread_pool.h"

namespace pyslim {

int64_t fpgm_block_rows(int64_t K) {
  const int64_t bytes_per_row = (K > 0 ? K : 1) * static_cast<int64_t>(sizeof(float));
  // Two blocks in a 1 MiB L2; 256 KiB blocks made twice the passes over a W that exceeds L3 (2048 x 4608).
  int64_t rows = (512 * 1024) / bytes_per_row;
  if (rows > 256) rows = 256;
  rows -= rows % 4;  // whole micro-tiles (4 rows) except at the end of the matrix
  return rows < 8 ? 8 : rows;
}

namespace {

void fpgm_scores_unscaled(const KernelTable& kernels, const float* W, int64_t C, int64_t K, int64_t ld, double* out,
                          int threads);

}  // namespace

void fpgm_scores(const KernelTable& kernels, const float* W, int64_t C, int64_t K, int64_t ld, double* out,
                 int threads) {
  for (int64_t i = 0; i < C; ++i) out[i] = 0.0;
  if (C < 2 || K == 0) return;
  // The SIMD kernels square float32 differences in float32: |d| above ~2^61 could overflow a 16-term partial
  // sum, and below 2^-63 its square leaves the normal range. Weights far from 1 are therefore rescaled by
  // an exact power of two 2^-e (a copy), and the scores multiplied back by 2^e (exact in double). NaN/Inf
  // weights skip this and propagate into the scores.
  float amax = 0.0f;
  for (int64_t r = 0; r < C; ++r) {
    const float m = kernels.abs_max(W + r * ld, K);
    if (!(m <= amax)) amax = m;  // NaN sticks
  }
  if (std::isfinite(amax) && amax > 0.0f && (amax > 0x1p20f || amax < 0x1p-20f)) {
    int e = 0;
    std::frexp(amax, &e);  // amax = f * 2^e, f in [0.5, 1): the scaled maximum lies in [0.5, 1)
    std::vector<float> scaled(static_cast<size_t>(C * K));
    for (int64_t r = 0; r < C; ++r)
      for (int64_t k = 0; k < K; ++k) scaled[r * K + k] = std::ldexp(W[r * ld + k], -e);
    fpgm_scores_unscaled(kernels, scaled.data(), C, K, K, out, threads);
    for (int64_t i = 0; i < C; ++i) out[i] = std::ldexp(out[i], e);
    return;
  }
  fpgm_scores_unscaled(kernels, W, C, K, ld, out, threads);
}

namespace {

void fpgm_scores_unscaled(const KernelTable& kernels, const float* W, int64_t C, int64_t K, int64_t ld, double* out,
                          int threads) {
  // At least ~2^19 pair-elements (about 25-80 us of kernel time) per task, so that small matrices do not pay
  // the fork-join and the partial vectors for nothing.
  const double pair_elements = 0.5 * static_cast<double>(C) * static_cast<double>(C - 1) * static_cast<double>(K);
  int64_t tasks = threads < 1 ? 1 : threads;
  const double by_work = pair_elements / static_cast<double>(int64_t{1} << 19);
  if (by_work < static_cast<double>(tasks)) tasks = by_work < 1.0 ? 1 : static_cast<int64_t>(by_work);
  // Blocks of rows that fit the cache (fpgm_block_rows); smaller ones when the matrix is one block but there
  // are several tasks (64 x 576 is one 64-row block: two 32-row blocks make three tiles for two threads).
  int64_t B = fpgm_block_rows(K);
  auto tile_count = [&](int64_t b) { const int64_t n = (C + b - 1) / b; return n * (n + 1) / 2; };
  while (tasks > 1 && tile_count(B) < tasks && B > 8) B = std::max<int64_t>(8, (B / 2 + 3) / 4 * 4);
  const int64_t nb = (C + B - 1) / B;
  // Tiles (bi, bj) with bj >= bi, in row-major order of the upper triangle.
  std::vector<std::pair<int64_t, int64_t>> tiles;
  tiles.reserve(static_cast<size_t>(nb * (nb + 1) / 2));
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t bj = bi; bj < nb; ++bj) tiles.emplace_back(bi, bj);
  const int64_t ntiles = static_cast<int64_t>(tiles.size());
  if (tasks > ntiles) tasks = ntiles;
  auto run_tile = [&](int64_t t, double* sums) {
    const int64_t i0 = tiles[t].first * B, j0 = tiles[t].second * B;
    const int64_t i1 = i0 + B < C ? i0 + B : C, j1 = j0 + B < C ? j0 + B : C;
    kernels.fpgm_pair_block(W, K, ld, i0, i1, j0, j1, sums);
  };
  if (tasks == 1) {
    for (int64_t t = 0; t < ntiles; ++t) run_tile(t, out);
    return;
  }
  std::vector<double> partial(static_cast<size_t>(tasks * C), 0.0);
  parallel_for(tasks, static_cast<int>(tasks), [&](int64_t task) {
    double* sums = partial.data() + task * C;
    for (int64_t t = task; t < ntiles; t += tasks) run_tile(t, sums);
  });
  for (int64_t task = 0; task < tasks; ++task) {
    const double* p = partial.data() + task * C;
    for (int64_t i = 0; i < C; ++i) out[i] += p[i];
  }
}

}  // namespace

}  // namespace pyslim
