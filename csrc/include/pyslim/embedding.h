// Quantized embedding lookup (PaddleSlim quant_embedding): gather rows of an int8 table and dequantize
// them in the same pass, so the float32 table never exists.
//
// Layout: table is row-major int8 [num_rows, dim]; indices is a flat int64 array of `count` row numbers;
// out is row-major float32 [count, dim] (out row r is table row indices[r], dequantized).
// Indices must already lie in [0, num_rows): the binding checks them with first_out_of_range_index before
// any lookup, so a bad index is a Python error, never a read outside the table.
//
// Both kernels are plain loops built for the baseline ISA (no per-ISA variants: the work is a memory-bound
// gather, and the inner loop over `dim` vectorises with SSE2/NEON), threaded over rows with parallel_for.
#pragma once

#include <cstdint>

namespace pyslim {

// Position (in the flat index array) of the first index outside [0, num_rows), or -1 if all are valid.
int64_t first_out_of_range_index(const int64_t* indices, int64_t count, int64_t num_rows);

// abs_max: out[r][j] = (float(table[indices[r]][j]) * scale) / float(max_range), in float32 and in that
// order (Paddle's dequantize_abs_max: in * scale / max_range), so results are bit-identical to numpy's
// `q.astype(float32) * scale / float32(max_range)`. max_range = 2^(bits-1) - 1 (127 for 8 bits).
void embedding_lookup_abs_max(const int8_t* table, int64_t num_rows, int64_t dim, float scale, int32_t max_range,
                              const int64_t* indices, int64_t count, float* out, int threads);

// log: a code c >= 0 decodes to dictionary[c], a code c < 0 to -dictionary[c + dictionary_size]
// (Paddle's dequantize_log with dictionary_size = 2^(bits-1) = 128 for 8 bits). dictionary_size must be a
// power of two in [1, 128]; codes outside [-dictionary_size, dictionary_size) decode to NaN (a table that
// was not produced for this dictionary is visible, never an out-of-bounds read). Exact: a pure copy.
void embedding_lookup_log(const int8_t* table, int64_t num_rows, int64_t dim, const float* dictionary,
                          int32_t dictionary_size, const int64_t* indices, int64_t count, float* out, int threads);

}  // namespace pyslim
