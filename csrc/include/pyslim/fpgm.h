// FPGM (filter pruning via geometric median) scores on the CPU: the ISA-independent driver around
// KernelTable::fpgm_pair_block (kernels.h).
#pragma once

#include <cstdint>

#include "pyslim/kernels.h"

namespace pyslim {

// out[i] = sum_j ||W[i] - W[j]||_2 for the C rows of W (C x K float32, row stride ld >= K), in double.
// Each unordered pair is computed once (tiles (I, J) of row blocks with J >= I). The tiles are dealt
// round-robin to min(threads, tiles) tasks; each task adds into its own zeroed partial score vector and
// the partials are summed in task order, so the result is deterministic for a given thread count.
// Relative error <= 1e-6 per score (see kernels.h). Weights with max|W| outside [2^-20, 2^20] are first
// rescaled by an exact power of two into [0.5, 1) (a C x K copy), so float32 squares never overflow; the
// bound then needs every nonzero |W[i][k] - W[j][k]| >= 2^-43 max|W| (smaller differences may underflow when
// squared in float32 and count as 0). NaN/Inf weights give NaN/Inf scores.
// C, K >= 0; threads >= 1.
void fpgm_scores(const KernelTable& kernels, const float* W, int64_t C, int64_t K, int64_t ld, double* out,
                 int threads);

// Rows per tile for a row length K: a J block of that many rows (about 256 KiB) stays in L2 while the
// kernel sweeps it with each 4-row group of the I block. Exposed for the tests.
int64_t fpgm_block_rows(int64_t K);

}  // namespace pyslim
