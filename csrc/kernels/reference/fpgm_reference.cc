// FPGM distance sums, scalar reference (the executable spec of KernelTable::fpgm_pair_block).
//
// Every difference is taken in double (exact: the difference of two float32 values is representable in
// double unless it over/underflows, which float32 inputs cannot), squared and summed in double, so the
// squared distance is accurate to ~K * 2^-53 relative and d(i, j) = sqrt of it to about half that.
#include <cmath>
#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {
namespace {

void fpgm_pair_block_reference(const float* W, int64_t K, int64_t ld, int64_t i0, int64_t i1, int64_t j0,
                               int64_t j1, double* row_sums) {
  for (int64_t i = i0; i < i1; ++i) {
    const float* a = W + i * ld;
    for (int64_t j = (j0 > i + 1 ? j0 : i + 1); j < j1; ++j) {
      const float* b = W + j * ld;
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double d = static_cast<double>(a[k]) - static_cast<double>(b[k]);
        s += d * d;
      }
      const double dist = std::sqrt(s);
      row_sums[i] += dist;
      row_sums[j] += dist;
    }
  }
}

}  // namespace

void fill_reference_fpgm(KernelTable* t) { t->fpgm_pair_block = fpgm_pair_block_reference; }

}  // namespace pyslim
