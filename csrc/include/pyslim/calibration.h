// Calibration statistics for post-training quantization (PaddleSlim / Paddle `PostTrainingQuantization`).
//
// Torch-free CPU routines on raw pointers, threaded with pyslim::parallel_for. They are statistics, not
// per-ISA microkernels: one portable implementation compiled with the baseline flags (the work is
// dominated by memory traffic and libm-free double arithmetic), and every result is independent of the
// thread count (work is split into fixed-size chunks whose partial results are reduced in chunk order).
#pragma once

#include <cstdint>

namespace pyslim {

// Adds the histogram of |x| over `bins` equal bins spanning [lo, hi] to `hist` (float64 counts), with
// numpy.histogram's rule computed in float64 on |x| upcast from float32:
//   values outside [lo, hi] are ignored, a value equal to hi goes to the last bin, and the bin index
//   f = (v - lo) * (bins / (hi - lo)) is corrected against the edges lo + k * ((hi - lo) / bins) exactly
//   as numpy does, so counts match np.histogram(np.abs(x).astype(np.float64), bins, (lo, hi)) exactly.
// Requires lo < hi (both finite) and bins >= 1. Returns the number of NaN values in x; when it is not
// zero, `hist` is left untouched (the caller raises an error).
int64_t abs_histogram_accumulate(const float* x, int64_t n, double lo, double hi, int64_t bins, double* hist,
                                 int threads);
// The same into int64 counts.
int64_t abs_histogram_accumulate(const float* x, int64_t n, double lo, double hi, int64_t bins, int64_t* hist,
                                 int threads);

// Paddle's `cal_kl_threshold(hist, bin_width, bits)` (entropy calibration): for every candidate
// i in [int((bins - 1) / 2), bins - 1]:
//   P = hist[0:i] with the mass of hist[i:] (outliers) folded into P[i-1]; skipped when hist[i-1] == 0;
//   Q = hist[0:i] merged into 2^(bits-1)-1 buckets of int(i / buckets) bins (the last bucket takes the
//       remainder), then expanded back, each bucket's mass spread evenly over the bins where P != 0;
//   KL = (sum p*log(Q_sum*p) - sum p*log(P_sum*q)) / P_sum   (both sums over p != 0, in index order;
//       P_sum = sum(hist), Q_sum = sum(expanded Q)).
// The first i with the smallest KL wins; threshold = (i + 0.5) * bin_width. If no candidate qualified,
// the index falls back to the last non-empty bin at or below int((bins - 1) / 2) (0 if none).
// `kl_curve` (optional, `bins` doubles) receives KL per i, NaN where i is not a candidate or skipped.
// Requires int((bins - 1) / 2) >= 2^(bits-1)-1 (so that every bucket holds at least one bin).
double kl_threshold(const double* hist, int64_t bins, double bin_width, int bits, double* kl_curve, int threads);

// The MSE / EMD search of Paddle's PostTrainingQuantization ("onnx format" quant-dequant) for a list of
// candidate scales, in one pass over x: for each scale s,
//   x_hat = clip(round_half_even(x / s * bin), -bin - 1, bin) / bin * s     (bin = 2^(bits-1)-1, float64)
// and writes per candidate k: out[3k] = mean((x - x_hat)^2), out[3k+1] = mean(x_hat),
// out[3k+2] = std(x_hat) (population). x_stats receives {mean(x), std(x)}. Sums are taken around mean(x)
// (computed in a first pass) so the standard deviations do not suffer from cancellation.
// Returns the number of non-finite values in x (out is undefined then; the caller raises an error).
int64_t quant_error_sweep(const float* x, int64_t n, const double* scales, int64_t num_scales, int bits,
                          double* out, double* x_stats, int threads);

}  // namespace pyslim
