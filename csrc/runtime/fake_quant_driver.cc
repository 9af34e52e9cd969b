// Splits a [outer, channels, inner] tensor into spans that share one parameter set (param_stride 0:
// inner > 1, or per-tensor) or that walk the parameters element by element (param_stride 1: per-channel
// along the last axis, inner == 1), and runs the spans on the pool.
#include <algorithm>
#include <cmath>
#include <vector>

#include "pyslim/fake_quant.h"
#include "pyslim/thread_pool.h"

namespace pyslim {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task: enough to amortise a wake-up (~5 us)

struct SpanPlan {
  int64_t numel, channels, inner, segment, stride;
  int64_t tasks, chunk;
};

SpanPlan plan(const ChannelLayout& l, int threads) {
  SpanPlan p;
  p.numel = l.numel();
  p.channels = l.channels;
  p.inner = l.channels == 1 ? p.numel : l.inner;
  const bool vector = l.channels > 1 && l.inner == 1;
  p.segment = vector ? l.channels : p.inner;
  p.stride = vector ? 1 : 0;
  p.tasks = split_count(p.numel, kGrain, std::max(threads, 1));
  p.chunk = p.tasks ? (p.numel + p.tasks - 1) / p.tasks : 0;
  // Task starts on multiples of 64 elements: cache-line aligned for float data, and byte (indeed 8-byte)
  // aligned in a gradient bit mask, so that no two tasks ever write the same mask byte.
  p.chunk = (p.chunk + 63) / 64 * 64;
  return p;
}

// fn(task, offset, length, param_index, param_stride) over every span of every task.
template <typename Fn>
void for_each_span(const SpanPlan& p, int threads, Fn&& fn) {
  if (p.numel == 0 || p.segment == 0) return;
  parallel_for(p.tasks, threads, [&](int64_t task) {
    const int64_t begin = task * p.chunk;
    const int64_t end = std::min(p.numel, begin + p.chunk);
    for (int64_t i = begin; i < end;) {
      const int64_t seg_end = std::min(end, (i / p.segment + 1) * p.segment);
      const int64_t param = p.stride ? i % p.channels : (i / p.inner) % p.channels;
      fn(task, i, seg_end - i, param, p.stride);
      i = seg_end;
    }
  });
}

inline float nan_sticky_max(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::nanf("");
  return a > b ? a : b;
}

// Runs a backward pass with per-task double accumulators, then sums them into the outputs.
template <typename Fn>
void backward_with_sums(const SpanPlan& p, int threads, double* sum_a, double* sum_b, Fn&& fn) {
  const bool want = sum_a != nullptr || sum_b != nullptr;
  const size_t width = want ? static_cast<size_t>(p.channels) : 0;
  std::vector<double> local_a(sum_a ? width * std::max<int64_t>(p.tasks, 1) : 0, 0.0);
  std::vector<double> local_b(sum_b ? width * std::max<int64_t>(p.tasks, 1) : 0, 0.0);
  for_each_span(p, threads, [&](int64_t task, int64_t off, int64_t len, int64_t param, int64_t stride) {
    double* a = sum_a ? local_a.data() + task * width + param : nullptr;
    double* b = sum_b ? local_b.data() + task * width + param : nullptr;
    fn(off, len, param, stride, a, b);
  });
  auto reduce = [&](double* out, const std::vector<double>& local) {
    if (!out) return;
    for (size_t c = 0; c < width; ++c) out[c] = 0.0;
    for (int64_t t = 0; t < p.tasks; ++t)
      for (size_t c = 0; c < width; ++c) out[c] += local[t * width + c];
  };
  reduce(sum_a, local_a);
  reduce(sum_b, local_b);
}

}  // namespace

void abs_max_channels(const KernelTable& k, const float* x, const ChannelLayout& layout, float* out, int threads) {
  const SpanPlan p = plan(layout, threads);
  const size_t width = static_cast<size_t>(layout.channels);
  std::vector<float> local(width * std::max<int64_t>(p.tasks, 1), 0.0f);
  for_each_span(p, threads, [&](int64_t task, int64_t off, int64_t len, int64_t param, int64_t stride) {
    float* acc = local.data() + task * width + param;
    if (stride) {
      k.abs_max_accumulate(x + off, len, acc);
    } else {
      *acc = nan_sticky_max(*acc, k.abs_max(x + off, len));
    }
  });
  for (size_t c = 0; c < width; ++c) out[c] = 0.0f;
  for (int64_t t = 0; t < p.tasks; ++t)
    for (size_t c = 0; c < width; ++c) out[c] = nan_sticky_max(out[c], local[t * width + c]);
}

void fake_quant_symmetric(const KernelTable& k, const float* x, float* y, const ChannelLayout& layout,
                          const float* scale, int32_t bin, RoundMode round, int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.fake_quant_symmetric(x + off, y + off, len, scale + param, stride, bin, round);
                });
}

void fake_quant_symmetric_backward(const KernelTable& k, const float* x, const float* grad, float* grad_x,
                                   const ChannelLayout& layout, const float* scale, int32_t bin, RoundMode round,
                                   GradMask mask, double* grad_scale, int threads) {
  backward_with_sums(plan(layout, threads), threads, grad_scale, nullptr,
                     [&](int64_t off, int64_t len, int64_t param, int64_t stride, double* gs, double*) {
                       k.fake_quant_symmetric_backward(x + off, grad + off, grad_x + off, len, scale + param, stride,
                                                       bin, round, mask, gs);
                     });
}

void fake_quant_affine(const KernelTable& k, const float* x, float* y, const ChannelLayout& layout,
                       const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round,
                       int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.fake_quant_affine(x + off, y + off, len, scale + param, zero_point + param, stride, qmin, qmax,
                                      round);
                });
}

void fake_quant_affine_backward(const KernelTable& k, const float* x, const float* grad, float* grad_x,
                                const ChannelLayout& layout, const float* scale, const int32_t* zero_point,
                                int32_t qmin, int32_t qmax, RoundMode round, GradMask mask, double* grad_scale,
                                double* grad_zero_point, int threads) {
  backward_with_sums(plan(layout, threads), threads, grad_scale, grad_zero_point,
                     [&](int64_t off, int64_t len, int64_t param, int64_t stride, double* gs, double* gz) {
                       k.fake_quant_affine_backward(x + off, grad + off, grad_x + off, len, scale + param,
                                                    zero_point + param, stride, qmin, qmax, round, mask, gs, gz);
                     });
}

// A span starting at element `off` owns bits from bit off % 8 of mask byte off / 8 (kernels.h). Spans of one
// task run in order, so a span that starts inside a byte finds the earlier bits of that byte already written.
void fake_quant_affine_mask(const KernelTable& k, const float* x, float* y, uint8_t* mask_bits,
                            const ChannelLayout& layout, const float* scale, const int32_t* zero_point, int32_t qmin,
                            int32_t qmax, RoundMode round, int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.fake_quant_affine_mask(x + off, y + off, mask_bits + off / 8, off % 8, len, scale + param,
                                           zero_point + param, stride, qmin, qmax, round);
                });
}

void fake_quant_symmetric_mask(const KernelTable& k, const float* x, float* y, uint8_t* mask_bits,
                               const ChannelLayout& layout, const float* scale, int32_t bin, RoundMode round,
                               GradMask mask, int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.fake_quant_symmetric_mask(x + off, y + off, mask_bits + off / 8, off % 8, len, scale + param,
                                              stride, bin, round, mask);
                });
}

void apply_grad_mask(const KernelTable& k, const float* grad, const uint8_t* mask_bits, float* grad_x, int64_t n,
                     int threads) {
  ChannelLayout flat;
  flat.inner = n;
  for_each_span(plan(flat, threads), threads, [&](int64_t, int64_t off, int64_t len, int64_t, int64_t) {
    k.apply_grad_mask(grad + off, mask_bits + off / 8, off % 8, grad_x + off, len);
  });
}

void quantize_int8(const KernelTable& k, const float* x, int8_t* q, const ChannelLayout& layout, const float* scale,
                   const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round, int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.quantize_int8(x + off, q + off, len, scale + param, zero_point + param, stride, qmin, qmax, round);
                });
}

void quantize_int16(const KernelTable& k, const float* x, int16_t* q, const ChannelLayout& layout,
                    const float* scale, const int32_t* zero_point, int32_t qmin, int32_t qmax, RoundMode round,
                    int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.quantize_int16(x + off, q + off, len, scale + param, zero_point + param, stride, qmin, qmax,
                                   round);
                });
}

void dequantize_int8(const KernelTable& k, const int8_t* q, float* y, const ChannelLayout& layout, const float* scale,
                     const int32_t* zero_point, int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.dequantize_int8(q + off, y + off, len, scale + param, zero_point + param, stride);
                });
}

void dequantize_int16(const KernelTable& k, const int16_t* q, float* y, const ChannelLayout& layout,
                      const float* scale, const int32_t* zero_point, int threads) {
  for_each_span(plan(layout, threads), threads,
                [&](int64_t, int64_t off, int64_t len, int64_t param, int64_t stride) {
                  k.dequantize_int16(q + off, y + off, len, scale + param, zero_point + param, stride);
                });
}

}  // namespace pyslim
