// Calibration statistics for post-training quantization; see calibration.h for the contracts.
//
// Determinism: every routine splits its input into fixed-size chunks (independent of the thread count),
// computes one partial result per chunk, and reduces the partials in chunk order, so a result is the same
// bit for bit whatever the number of threads. Compiled with the baseline flags (-ffp-contract=off, no
// fast-math): the round-to-nearest-even trick below relies on the compiler keeping (v + M) - M.
#include "pyslim/calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "pyslim/thread_pool.h"

namespace pyslim {
namespace {

constexpr int64_t kHistChunk = 65536;   // elements per histogram task (numpy uses the same block size)
constexpr int64_t kSweepChunk = 16384;  // elements per MSE/EMD chunk: 64 KiB of float32, stays in L2

int64_t chunk_count(int64_t n, int64_t chunk) { return n <= 0 ? 0 : (n + chunk - 1) / chunk; }

// Runs fn(chunk) for every chunk on the pool; tasks take contiguous runs of chunks.
template <typename Fn>
void for_each_chunk(int64_t chunks, int threads, Fn&& fn) {
  if (chunks <= 0) return;
  const int64_t tasks = std::min<int64_t>(chunks, std::max(threads, 1));
  const int64_t per_task = (chunks + tasks - 1) / tasks;
  parallel_for(tasks, static_cast<int>(tasks), [&](int64_t t) {
    const int64_t begin = t * per_task, end = std::min(chunks, begin + per_task);
    for (int64_t c = begin; c < end; ++c) fn(c);
  });
}

// numpy.histogram's uniform-bin index for a finite v in [lo, hi] (numpy >= 1.x `_histogram` fast path):
//   f = ((v - lo) / (hi - lo)) * bins;  i = int(f);  i == bins -> bins - 1;
//   then corrected by one against the np.linspace edges (edge k = k * step + lo, edge bins = hi).
struct UniformBins {
  double lo, hi, delta, step;
  int64_t bins;
  bool step_zero;

  UniformBins(double lo_, double hi_, int64_t bins_) : lo(lo_), hi(hi_), delta(hi_ - lo_), bins(bins_) {
    step = delta / static_cast<double>(bins);
    step_zero = step == 0.0;
  }
  double edge(int64_t k) const {
    if (k >= bins) return hi;
    const double kd = static_cast<double>(k);
    // np.linspace: y = arange(num) * step + start (or (arange / div) * delta when step underflows to 0).
    return step_zero ? (kd / static_cast<double>(bins)) * delta + lo : kd * step + lo;
  }
  int64_t index(double v) const {
    const double f = ((v - lo) / delta) * static_cast<double>(bins);
    int64_t i = static_cast<int64_t>(f);
    if (i == bins) i -= 1;
    if (v < edge(i)) {
      i -= 1;
    } else if (i != bins - 1 && v >= edge(i + 1)) {
      i += 1;
    }
    return i;
  }
};

template <typename Count>
int64_t abs_histogram_impl(const float* x, int64_t n, double lo, double hi, int64_t bins, Count* hist,
                           int threads) {
  if (n <= 0) return 0;
  const UniformBins ub(lo, hi, bins);
  // One local int64 histogram per task (not per chunk): counts are integers, so the reduction order
  // cannot change the result.
  const int64_t chunks = chunk_count(n, kHistChunk);
  const int64_t tasks = std::min<int64_t>(chunks, std::max(threads, 1));
  const int64_t per_task = (chunks + tasks - 1) / tasks;
  std::vector<int64_t> local(static_cast<size_t>(tasks * bins), 0);
  std::vector<int64_t> nans(static_cast<size_t>(tasks), 0);
  parallel_for(tasks, static_cast<int>(tasks), [&](int64_t t) {
    int64_t* h = local.data() + t * bins;
    int64_t nan_count = 0;
    const int64_t begin = std::min(n, t * per_task * kHistChunk);
    const int64_t end = std::min(n, (t + 1) * per_task * kHistChunk);
    for (int64_t j = begin; j < end; ++j) {
      const float xv = x[j];
      if (xv != xv) {
        ++nan_count;
        continue;
      }
      const double v = std::fabs(static_cast<double>(xv));
      if (v < lo || v > hi) continue;  // outside the range (Inf included): ignored, like numpy
      ++h[ub.index(v)];
    }
    nans[t] = nan_count;
  });
  int64_t nan_total = 0;
  for (int64_t c : nans) nan_total += c;
  if (nan_total) return nan_total;
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t* h = local.data() + t * bins;
    for (int64_t b = 0; b < bins; ++b) hist[b] += static_cast<Count>(h[b]);
  }
  return 0;
}

// KL divergence of candidate i (Paddle's cal_kl_threshold loop body); NaN when hist[i-1] == 0 (skipped).
double kl_candidate(const double* hist, int64_t bins, int64_t i, int quant_range, double p_sum,
                    std::vector<double>& P, std::vector<double>& Q) {
  if (hist[i - 1] == 0.0) return std::numeric_limits<double>::quiet_NaN();
  P.assign(hist, hist + i);
  double outliers = 0.0;
  for (int64_t j = i; j < bins; ++j) outliers += hist[j];
  P[i - 1] += outliers;

  // Merge hist[0:i] (no outliers) into quant_range buckets of int(i / quant_range) bins; the last bucket
  // runs to i. Then expand each bucket over its bins where P (with outliers) is non-zero.
  const int64_t merged = i / quant_range;
  Q.assign(static_cast<size_t>(i), 0.0);
  for (int idx = 0; idx < quant_range; ++idx) {
    const int64_t j_start = idx * merged;
    const int64_t j_end = idx == quant_range - 1 ? i : j_start + merged;
    double bucket = 0.0;
    int64_t zeros = 0;
    for (int64_t j = j_start; j < j_end; ++j) {
      bucket += hist[j];
      zeros += P[j] == 0.0;
    }
    const int64_t width = j_end - j_start;
    const double avg = zeros == width ? 0.0 : bucket / static_cast<double>(width - zeros);
    for (int64_t j = j_start; j < j_end; ++j) Q[j] = P[j] == 0.0 ? 0.0 : avg;
  }
  double q_sum = 0.0;
  for (int64_t j = 0; j < i; ++j) q_sum += Q[j];

  // Paddle's safe_entropy: two running sums, subtracted at the end.
  double sum1 = 0.0, sum2 = 0.0;
  for (int64_t j = 0; j < i; ++j) {
    const double p = P[j];
    if (p == 0.0) continue;
    sum1 += p * std::log(q_sum * p);
    sum2 += p * std::log(p_sum * Q[j]);
  }
  return (sum1 - sum2) / p_sum;
}

// Round half to even for |v| <= 2^51 in the default rounding mode, without a libm call (the baseline
// x86-64 target has no roundsd): adding and subtracting 1.5 * 2^52 leaves an integer.
inline double round_half_even(double v) {
  constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  return (v + kMagic) - kMagic;
}

}  // namespace

int64_t abs_histogram_accumulate(const float* x, int64_t n, double lo, double hi, int64_t bins, double* hist,
                                 int threads) {
  return abs_histogram_impl(x, n, lo, hi, bins, hist, threads);
}

int64_t abs_histogram_accumulate(const float* x, int64_t n, double lo, double hi, int64_t bins, int64_t* hist,
                                 int threads) {
  return abs_histogram_impl(x, n, lo, hi, bins, hist, threads);
}

double kl_threshold(const double* hist, int64_t bins, double bin_width, int bits, double* kl_curve, int threads) {
  const int quant_range = (1 << (bits - 1)) - 1;
  const int64_t start = (bins - 1) / 2;  // Paddle: int((hist_bins - 1) * 0.5)
  double p_sum = 0.0;
  for (int64_t j = 0; j < bins; ++j) p_sum += hist[j];

  std::vector<double> kl(static_cast<size_t>(bins), std::numeric_limits<double>::quiet_NaN());
  const int64_t candidates = bins - start;
  const int64_t tasks = std::min<int64_t>(candidates, std::max(threads, 1));
  const int64_t per_task = (candidates + tasks - 1) / tasks;
  parallel_for(tasks, static_cast<int>(tasks), [&](int64_t t) {
    std::vector<double> P, Q;
    const int64_t begin = start + t * per_task, end = std::min(bins, begin + per_task);
    for (int64_t i = begin; i < end; ++i) kl[i] = kl_candidate(hist, bins, i, quant_range, p_sum, P, Q);
  });

  // Paddle keeps the first candidate and replaces it only on a strictly smaller divergence.
  int64_t best = 0;
  bool found = false;
  double best_kl = 0.0;
  for (int64_t i = start; i < bins; ++i) {
    if (std::isnan(kl[i])) continue;
    if (!found || kl[i] < best_kl) {
      best_kl = kl[i];
      best = i;
      found = true;
    }
  }
  if (best == 0) {
    // No candidate qualified: the last non-empty bin at or below the starting index.
    int64_t s = start;
    while (s > 0 && hist[s] == 0.0) --s;
    best = s;
  }
  if (kl_curve) std::copy(kl.begin(), kl.end(), kl_curve);
  return (static_cast<double>(best) + 0.5) * bin_width;
}

int64_t quant_error_sweep(const float* x, int64_t n, const double* scales, int64_t num_scales, int bits,
                          double* out, double* x_stats, int threads) {
  const int64_t chunks = chunk_count(n, kSweepChunk);
  if (chunks == 0) return 0;
  const double bin = static_cast<double>((1 << (bits - 1)) - 1);

  // Pass 1: sum of x and the non-finite count, per chunk.
  std::vector<double> sums(static_cast<size_t>(chunks), 0.0);
  std::vector<int64_t> bad(static_cast<size_t>(chunks), 0);
  for_each_chunk(chunks, threads, [&](int64_t c) {
    const int64_t begin = c * kSweepChunk, end = std::min(n, begin + kSweepChunk);
    double s = 0.0;
    int64_t b = 0;
    for (int64_t j = begin; j < end; ++j) {
      const float v = x[j];
      if (!std::isfinite(v)) {
        ++b;
        continue;
      }
      s += static_cast<double>(v);
    }
    sums[c] = s;
    bad[c] = b;
  });
  int64_t bad_total = 0;
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    bad_total += bad[c];
    total += sums[c];
  }
  if (bad_total) return bad_total;
  const double mean = total / static_cast<double>(n);

  // Pass 2: per chunk, sum (x - mean)^2 and per candidate {sum (x - x_hat)^2, sum d, sum d^2} with
  // d = x_hat - mean. The candidate loop is outside the element loop so the inner loop vectorises.
  const int64_t width = 1 + 3 * num_scales;
  std::vector<double> part(static_cast<size_t>(chunks * width), 0.0);
  for_each_chunk(chunks, threads, [&](int64_t c) {
    const int64_t begin = c * kSweepChunk, end = std::min(n, begin + kSweepChunk);
    double* p = part.data() + c * width;
    double sx = 0.0;
    for (int64_t j = begin; j < end; ++j) {
      const double d = static_cast<double>(x[j]) - mean;
      sx += d * d;
    }
    p[0] = sx;
    for (int64_t k = 0; k < num_scales; ++k) {
      const double s = scales[k];
      double sse = 0.0, sd = 0.0, sd2 = 0.0;
      for (int64_t j = begin; j < end; ++j) {
        const double v = static_cast<double>(x[j]);
        // clip(round(v / s * bin), -bin - 1, bin): clamping to [-bin - 2, bin + 1] first does not change the
        // clipped result and keeps the rounding trick in range.
        double t = v / s * bin;
        t = std::min(std::max(t, -bin - 2.0), bin + 1.0);
        double q = round_half_even(t);
        q = std::min(std::max(q, -bin - 1.0), bin);
        const double xh = q / bin * s;
        const double e = v - xh;
        const double d = xh - mean;
        sse += e * e;
        sd += d;
        sd2 += d * d;
      }
      p[1 + 3 * k] = sse;
      p[2 + 3 * k] = sd;
      p[3 + 3 * k] = sd2;
    }
  });
  std::vector<double> acc(static_cast<size_t>(width), 0.0);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t w = 0; w < width; ++w) acc[w] += part[c * width + w];
  const double nd = static_cast<double>(n);
  x_stats[0] = mean;
  x_stats[1] = std::sqrt(acc[0] / nd);
  for (int64_t k = 0; k < num_scales; ++k) {
    const double md = acc[2 + 3 * k] / nd;
    const double var = acc[3 + 3 * k] / nd - md * md;
    out[3 * k] = acc[1 + 3 * k] / nd;
    out[3 * k + 1] = mean + md;
    out[3 * k + 2] = std::sqrt(std::max(var, 0.0));
  }
  return 0;
}

}  // namespace pyslim
