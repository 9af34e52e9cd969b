// The upper-triangle walk shared by the per-ISA FPGM kernels: tiles of kMR rows i x kNR rows j (j > i), a
// per-ISA `tile` computing the squared distances of one tile, and the distance added to both rows' sums.
//
// Everything here is in an anonymous namespace on purpose: each ISA translation unit compiles its own copy
// with its own flags, so the linker can never hand the AVX-512 instantiation to another path (and the
// per-ISA objects still export only their fill functions, see .ci/check_isa_symbols.sh).
#pragma once

#include <cmath>
#include <cstdint>

namespace pyslim {
namespace {

// tile(a, b, K, sq): sq[m * kNR + n] = sum_k (a[m][k] - b[n][k])^2 for kMR rows a and kNR rows b.
template <int kMR, int kNR, typename Tile>
inline void fpgm_walk_pairs(const float* W, int64_t K, int64_t ld, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                            double* row_sums, Tile tile) {
  for (int64_t ia = i0; ia < i1; ia += kMR) {
    const int64_t mr = i1 - ia < kMR ? i1 - ia : kMR;
    const float* a[kMR];
    for (int m = 0; m < kMR; ++m) a[m] = W + (ia + (m < mr ? m : 0)) * ld;  // short tiles repeat row 0
    for (int64_t jb = (j0 > ia + 1 ? j0 : ia + 1); jb < j1; jb += kNR) {
      const int64_t nr = j1 - jb < kNR ? j1 - jb : kNR;
      const float* b[kNR];
      for (int n = 0; n < kNR; ++n) b[n] = W + (jb + (n < nr ? n : 0)) * ld;
      double sq[kMR * kNR];
      tile(a, b, K, sq);
      for (int64_t m = 0; m < mr; ++m)
        for (int64_t n = 0; n < nr; ++n) {
          const int64_t i = ia + m, j = jb + n;
          if (j <= i) continue;
          const double d = std::sqrt(sq[m * kNR + n]);
          row_sums[i] += d;
          row_sums[j] += d;
        }
    }
  }
}

}  // namespace
}  // namespace pyslim
