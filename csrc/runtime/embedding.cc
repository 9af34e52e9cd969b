// Quantized embedding lookup: see pyslim/embedding.h for layout and rounding.
#include "pyslim/embedding.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "pyslim/thread_pool.h"

namespace pyslim {
namespace {

constexpr int64_t kGrainElements = 16384;  // output elements per task: enough to amortise a wake-up

// Splits `count` looked-up rows of `dim` elements into tasks and runs row_fn(r) for each row.
template <typename RowFn>
void for_each_row(int64_t count, int64_t dim, int threads, RowFn&& row_fn) {
  if (count <= 0 || dim <= 0) return;
  const int64_t rows_per_grain = std::max<int64_t>(1, kGrainElements / dim);
  const int64_t tasks = split_count(count, rows_per_grain, std::max(threads, 1));
  const int64_t chunk = (count + tasks - 1) / tasks;
  parallel_for(tasks, threads, [&](int64_t task) {
    const int64_t begin = task * chunk;
    const int64_t end = std::min(count, begin + chunk);
    for (int64_t r = begin; r < end; ++r) row_fn(r);
  });
}

// The inner loops take restrict pointers so that the compiler vectorises them (int8 -> float widening,
// multiply, divide) without alias checks.
void dequantize_row_abs_max(const int8_t* __restrict src, float* __restrict dst, int64_t dim, float scale,
                            float max_range) {
  for (int64_t j = 0; j < dim; ++j) dst[j] = (static_cast<float>(src[j]) * scale) / max_range;
}

void decode_row_log(const int8_t* __restrict src, float* __restrict dst, int64_t dim, const float* __restrict lut) {
  for (int64_t j = 0; j < dim; ++j) dst[j] = lut[static_cast<uint8_t>(src[j])];
}

}  // namespace

int64_t first_out_of_range_index(const int64_t* indices, int64_t count, int64_t num_rows) {
  // One branch-free pass for the largest index seen as unsigned (a negative one wraps above any row count);
  // the position is searched only when something is out of range. The pass costs little next to the
  // lookup itself, which writes `dim` floats per index.
  const uint64_t rows = static_cast<uint64_t>(num_rows);
  uint64_t largest = 0;
  for (int64_t i = 0; i < count; ++i) largest = std::max(largest, static_cast<uint64_t>(indices[i]));
  if (count == 0 || largest < rows) return -1;
  for (int64_t i = 0; i < count; ++i)
    if (static_cast<uint64_t>(indices[i]) >= rows) return i;
  return -1;
}

void embedding_lookup_abs_max(const int8_t* table, int64_t num_rows, int64_t dim, float scale, int32_t max_range,
                              const int64_t* indices, int64_t count, float* out, int threads) {
  (void)num_rows;
  const float range = static_cast<float>(max_range);
  for_each_row(count, dim, threads, [&](int64_t r) {
    dequantize_row_abs_max(table + indices[r] * dim, out + r * dim, dim, scale, range);
  });
}

void embedding_lookup_log(const int8_t* table, int64_t num_rows, int64_t dim, const float* dictionary,
                          int32_t dictionary_size, const int64_t* indices, int64_t count, float* out, int threads) {
  (void)num_rows;
  // A 256-entry table indexed by the code's byte turns the sign-dependent decode into one load per element.
  float lut[256];
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int code = -128; code < 128; ++code) {
    float v = nan;
    if (code >= 0 && code < dictionary_size) v = dictionary[code];
    else if (code < 0 && code >= -dictionary_size) v = -dictionary[code + dictionary_size];
    lut[static_cast<uint8_t>(static_cast<int8_t>(code))] = v;
  }
  for_each_row(count, dim, threads,
               [&](int64_t r) { decode_row_log(table + indices[r] * dim, out + r * dim, dim, lut); });
}

}  // namespace pyslim
