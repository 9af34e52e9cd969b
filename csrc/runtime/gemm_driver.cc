// Int8 GEMM / convolution drivers: split the output into blocks that run on the pool, call the ISA's
// gemm_s32 / depthwise_conv_s32 into a per-task int32 block that stays in cache, and apply the epilogue
// while it is hot. Accumulator blocks are indexed by absolute column (the micro-kernels write C[r*ldc + n]
// for n in [n_begin, n_end)), so a block buffer is addressed through a pointer offset by -n_begin.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "pyslim/gemm.h"
#include "pyslim/scratch.h"
#include "pyslim/thread_pool.h"

namespace pyslim {
namespace {

constexpr int64_t kRowBlock = 128;     // rows of A per task
constexpr int64_t kColBlock = 512;     // columns per task when there are enough row blocks
constexpr int64_t kPixelBlock = 144;   // output pixels per im2col task (at most; see conv2d_nhwc)
constexpr int64_t kBandBytes = 512 * 1024;  // padded input rows per implicit-convolution task (at most)
// Depthwise driver. Tasks are runs of whole output rows: as many as fit an int32 block of kDepthwiseAccBytes
// (kept in cache for the epilogue), and a multiple of the thread count so the threads get equal shares. The
// kernel rebuilds the input rows a task shares with its neighbours (KH - 1 per task for stride 1): 256 KiB
// tasks (8 rows of 56 x 144) measured ~4 % faster than 128 KiB ones, and larger ones no faster. With several
// threads a float input is quantized inside the tasks (see depthwise_conv2d_nhwc_float).
constexpr int64_t kDepthwiseAccBytes = 256 * 1024;

// Dynamic quantization parameters from a row's (or tensor's) statistics: symmetric -> zero point 0, scale
// max|a| / 127; asymmetric -> [lo, hi] onto [-128, 127].
inline void dynamic_params(bool symmetric, float lo, float hi, float* scale, int32_t* zero_point) {
  if (symmetric) {
    const float s = hi / 127.0f;
    *scale = (s > 0.0f || std::isnan(s)) ? s : 1.0f;
    *zero_point = 0;
  } else {
    const float s = (hi - lo) / 255.0f;
    *scale = (s > 0.0f || std::isnan(s)) ? s : 1.0f;
    const float z = std::isnan(s) ? 0.0f : -128.0f - std::nearbyint(lo / *scale);
    *zero_point = static_cast<int32_t>(std::fmin(std::fmax(z, -128.0f), 127.0f));
  }
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// memcpy of one im2col run (a kernel row of a 3-channel 3x3 convolution is 9 bytes): below 32 bytes, two
// fixed-size copies that overlap in the middle (inlined as loads and stores) instead of a library call each;
// the 3-channel stem spent most of its im2col in those calls.
inline void copy_run(uint8_t* dst, const uint8_t* src, int64_t n) {
  if (n >= 32) {
    std::memcpy(dst, src, static_cast<size_t>(n));
  } else if (n >= 16) {
    std::memcpy(dst, src, 16);
    std::memcpy(dst + n - 16, src + n - 16, 16);
  } else if (n >= 8) {
    std::memcpy(dst, src, 8);
    std::memcpy(dst + n - 8, src + n - 8, 8);
  } else if (n >= 4) {
    std::memcpy(dst, src, 4);
    std::memcpy(dst + n - 4, src + n - 4, 4);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An uninitialised int32 block of rows x (n_end - n_begin) in the thread's scratch, addressed by absolute
// column.
struct AccBlock {
  int32_t* base;  // scratch - n_begin
  int64_t ld;
  AccBlock(int64_t rows, int64_t n_begin, int64_t n_end)
      : base(thread_scratch_as<int32_t>(ScratchSlot::kAccumulator, static_cast<size_t>(rows * (n_end - n_begin))) -
             n_begin),
        ld(n_end - n_begin) {}
};

GemmEpilogue offset_epilogue(const GemmEpilogue& e, int64_t columns) {
  GemmEpilogue g = e;
  if (g.weight_scale) g.weight_scale += columns;
  if (g.col_sums) g.col_sums += columns;
  if (g.bias) g.bias += columns;
  return g;
}

size_t output_element_size(const GemmEpilogue& e) {
  return e.kind == GemmEpilogue::kQuantized ? 1 : 4;
}


// Task grid of a GEMM: rows_per_task x cols_per_task blocks, in task order row-block-major.
struct GemmGrid {
  int64_t row_block, col_block, row_blocks, col_blocks;
};

// Blocks small enough to keep the accumulator block in L2 (kRowBlock x kColBlock int32 = 256 KiB), and, with
// several threads, an even split: the task count is a multiple of the thread count where that costs no
// tiny tasks (with two threads, 3 equal tasks leave one thread idle a third of the time). Row blocks are
// whole multiples of kRowAlign rows (the micro-kernels' row tiles: a short edge tile per task is slow).
GemmGrid gemm_grid(int64_t M, int64_t N, int64_t step, int threads) {
  constexpr int64_t kRowAlign = 6;
  GemmGrid g{};
  int64_t row_blocks = ceil_div(M, kRowBlock);
  int64_t col_block = std::min(round_up(N, step), round_up(kColBlock, step));
  int64_t col_blocks = ceil_div(N, col_block);
  if (threads > 1) {
    if (row_blocks * col_blocks < 2 * threads && row_blocks < threads) {
      // Few rows (GEMV-like): split the columns evenly, one block per thread (or two when N allows).
      const int64_t steps = ceil_div(N, step);
      const int64_t want = std::min<int64_t>(steps, threads * (steps >= 4 * threads ? 2 : 1));
      col_block = ceil_div(steps, want) * step;
      col_blocks = ceil_div(N, col_block);
    } else if ((row_blocks * col_blocks) % threads != 0 && col_blocks == 1) {
      row_blocks = round_up(row_blocks, threads);
    }
  }
  int64_t row_block = round_up(ceil_div(M, row_blocks), kRowAlign);
  if (row_block > M) row_block = M;
  g.row_block = row_block;
  g.row_blocks = ceil_div(M, row_block);
  g.col_block = col_block;
  g.col_blocks = col_blocks;
  return g;
}

// The GEMM tasks. prepare(m0, rows) runs at the start of every task, before its gemm_s32 reads rows
// [m0, m0 + rows) of A (the dynamic path quantizes them there; it is used only with one column block, so that
// each row block is prepared exactly once).
template <typename Prepare>
void gemm_tasks(const KernelTable& k, const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M,
                int64_t N, int64_t K, const GemmEpilogue& e, void* out, int64_t ldo, int threads,
                const Prepare& prepare) {
  const int64_t step = std::max<int64_t>(k.gemm_n_step, 1);
  const GemmGrid grid = gemm_grid(M, N, step, threads);
  const auto* a_bytes = static_cast<const uint8_t*>(A);
  GemmEpilogue ek = e;
  ek.k = K;
  parallel_for(grid.row_blocks * grid.col_blocks, threads, [&](int64_t task) {
    const int64_t m0 = (task / grid.col_blocks) * grid.row_block;
    const int64_t rows = std::min(grid.row_block, M - m0);
    const int64_t n0 = (task % grid.col_blocks) * grid.col_block;
    const int64_t n1 = std::min(N, n0 + grid.col_block);
    prepare(m0, rows);
    const void* a = a_bytes + m0 * lda;
    if (e.kind == GemmEpilogue::kInt32) {
      k.gemm_s32(a, a_signed, lda, packed, rows, N, K, n0, n1, static_cast<int32_t*>(out) + m0 * ldo, ldo);
      return;
    }
    AccBlock acc(rows, n0, n1);
    k.gemm_s32(a, a_signed, lda, packed, rows, N, K, n0, n1, acc.base, acc.ld);
    k.gemm_epilogue(acc.base, acc.ld, rows, m0, n0, n1, ek, out, ldo);
  });
}

}  // namespace

void gemm(const KernelTable& k, const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M,
          int64_t N, int64_t K, const GemmEpilogue& e, void* out, int64_t ldo, int threads) {
  if (M <= 0 || N <= 0) return;
  gemm_tasks(k, A, a_signed, lda, packed, M, N, K, e, out, ldo, threads, [](int64_t, int64_t) {});
}

namespace {

// gemm on the int8 rows q (M x K) that quantize_rows(r0, r1) writes from a float source. Where every row block
// belongs to one task, the task quantizes its rows just before its GEMM, so they are still in the cache of the
// core that wrote them; otherwise (several column blocks share each row block) every row is quantized once in
// a parallel pass first.
template <typename QuantizeRows>
void gemm_quantizing(const KernelTable& k, const int8_t* q, const void* packed, int64_t M, int64_t N, int64_t K,
                     const GemmEpilogue& e, void* out, int64_t ldo, int threads, const QuantizeRows& quantize_rows) {
  if (gemm_grid(M, N, std::max<int64_t>(k.gemm_n_step, 1), threads).col_blocks == 1) {
    gemm_tasks(k, q, true, K, packed, M, N, K, e, out, ldo, threads,
               [&](int64_t m0, int64_t rows) { quantize_rows(m0, m0 + rows); });
    return;
  }
  const int64_t tasks = split_count(M * K, 1 << 16, threads);
  parallel_for(tasks, threads, [&](int64_t task) { quantize_rows(M * task / tasks, M * (task + 1) / tasks); });
  gemm(k, q, true, K, packed, M, N, K, e, out, ldo, threads);
}

}  // namespace

void gemm_dynamic(const KernelTable& k, const float* A, int64_t lda, bool per_row, bool symmetric,
                  const void* packed, int64_t M, int64_t N, int64_t K, GemmEpilogue e, float* out, int64_t ldo,
                  int threads) {
  if (M <= 0 || N <= 0) return;
  int8_t* q = thread_scratch_as<int8_t>(ScratchSlot::kQuantized, static_cast<size_t>(M * K));
  std::vector<float> scales(static_cast<size_t>(M));
  std::vector<int32_t> zero_points(static_cast<size_t>(M));
  e.kind = GemmEpilogue::kFloat32;
  e.row_scales = scales.data();
  e.row_zero_points = zero_points.data();
  // Per row: statistics, parameters and quantization in one visit of the row (it is still in L1 when the
  // quantize kernel reads it again). q = clamp(round(a / s) + zp) by the fake-quant table's quantize kernel.
  auto quantize_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t m = r0; m < r1; ++m) {
      const float* row = A + m * lda;
      float lo = 0.0f, hi;
      if (symmetric) {
        hi = k.abs_max(row, K);
      } else {
        k.range_with_zero(row, K, &lo, &hi);
      }
      dynamic_params(symmetric, lo, hi, &scales[m], &zero_points[m]);
      k.quantize_int8(row, q + m * K, K, &scales[m], &zero_points[m], 0, -128, 127, RoundMode::kHalfToEven);
    }
  };
  if (per_row) {
    gemm_quantizing(k, q, packed, M, N, K, e, out, ldo, threads, quantize_rows);
    return;
  }
  // Per tensor: statistics of every row, then one set of parameters, then quantization.
  std::vector<float> lows(static_cast<size_t>(M)), highs(static_cast<size_t>(M));
  const int64_t tasks = split_count(M * K, 1 << 16, threads);
  parallel_for(tasks, threads, [&](int64_t task) {
    for (int64_t m = M * task / tasks, r1 = M * (task + 1) / tasks; m < r1; ++m) {
      const float* row = A + m * lda;
      lows[m] = 0.0f;
      if (symmetric) {
        highs[m] = k.abs_max(row, K);
      } else {
        k.range_with_zero(row, K, &lows[m], &highs[m]);
      }
    }
  });
  float lo = 0.0f, hi = 0.0f;
  bool nan = false;
  for (int64_t m = 0; m < M; ++m) {
    nan = nan || std::isnan(highs[m]) || (!symmetric && std::isnan(lows[m]));
    hi = std::fmax(hi, highs[m]);
    if (!symmetric) lo = std::fmin(lo, lows[m]);
  }
  if (nan) hi = std::nanf("");
  float scale;
  int32_t zp;
  dynamic_params(symmetric, lo, hi, &scale, &zp);
  std::fill(scales.begin(), scales.end(), scale);
  std::fill(zero_points.begin(), zero_points.end(), zp);
  parallel_for(tasks, threads, [&](int64_t task) {
    for (int64_t m = M * task / tasks, r1 = M * (task + 1) / tasks; m < r1; ++m)
      k.quantize_int8(A + m * lda, q + m * K, K, &scale, &zp, 0, -128, 127, RoundMode::kHalfToEven);
  });
  gemm(k, q, true, K, packed, M, N, K, e, out, ldo, threads);
}

void gemm_float_static(const KernelTable& k, const float* A, float a_scale, int32_t a_zero_point, const void* packed,
                       int64_t M, int64_t N, int64_t K, const GemmEpilogue& e, void* out, int64_t ldo, int threads) {
  if (M <= 0 || N <= 0) return;
  int8_t* q = thread_scratch_as<int8_t>(ScratchSlot::kQuantized, static_cast<size_t>(M * K));
  gemm_quantizing(k, q, packed, M, N, K, e, out, ldo, threads, [&](int64_t r0, int64_t r1) {
    k.quantize_int8(A + r0 * K, q + r0 * K, (r1 - r0) * K, &a_scale, &a_zero_point, 0, -128, 127,
                    RoundMode::kHalfToEven);
  });
}

const int8_t* quantize_activations(const KernelTable& k, const float* x, int64_t n, float scale, int32_t zero_point,
                                  int threads) {
  int8_t* q = thread_scratch_as<int8_t>(ScratchSlot::kQuantized, static_cast<size_t>(n > 0 ? n : 1));
  const int64_t tasks = split_count(n, 1 << 16, threads);
  parallel_for(tasks, threads, [&](int64_t task) {
    const int64_t i0 = n * task / tasks, i1 = n * (task + 1) / tasks;
    k.quantize_int8(x + i0, q + i0, i1 - i0, &scale, &zero_point, 0, -128, 127, RoundMode::kHalfToEven);
  });
  return q;
}

namespace {

// One-group convolution without im2col (k.conv_implicit_s32), any stride. The input is copied into a
// zero-point-padded image of Hp x Wp pixels (Wp = W + 2 * pad_w), band by band; output pixel (oh, ow) is then
// row ow of run oh of a GEMM whose A row starts at pixel oh * sh * Wp + ow * sw of the padded image and whose K
// runs over the KH kernel rows, each KW * C contiguous bytes, dilation_h * Wp pixels apart. Against an im2col
// copy of KH * KW / (sh * sw) times the input, nothing is copied.
// 1x1, stride 1, no padding, one group: a plain GEMM over the pixels (see conv2d_nhwc).
bool pointwise(const ConvShape& s) {
  return s.groups == 1 && s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 &&
         s.pad_w == 0 && weight_channels(s) == s.in_c;
}

// True when conv2d_implicit applies (see conv2d_nhwc).
bool implicit_ok(const KernelTable& k, const ConvShape& s) {
  return k.conv_implicit_s32 != nullptr && s.groups == 1 && s.dilation_w == 1 &&
         (s.kernel_w * weight_channels(s)) % 4 == 0 && !pointwise(s);
}

// Bytes a pixel of the padded image has: in_c, or the zero-padded channel count (ConvShape::weight_c).
inline int64_t pixel_bytes(const ConvShape& s) { return s.weight_c > 0 ? s.weight_c * s.groups : s.in_c; }

// Padded rows [hp0, hp1) of image b (padded coordinates: row hp is input row hp - pad_h) into dst, rows of
// (in_w + 2 pad_w) pixels of weight_channels(s) bytes, the zero point (pad_value) around and outside the input.
// x is int8 / uint8 (x_float null), or x_float is float32, quantized row by row here with x_scale and pad_value
// as the zero point (the quantize op's int8: one pass instead of two). Pixels padded to more channels than x
// has (ConvShape::weight_c) get the zero point in their extra bytes.
void build_padded_rows(const KernelTable& k, const uint8_t* x, const float* x_float, float x_scale,
                       int32_t pad_value, const ConvShape& s, int64_t b, int64_t hp0, int64_t hp1, uint8_t* dst) {
  const auto pad_byte = static_cast<uint8_t>(pad_value & 0xff);
  const int64_t C = s.in_c, wc = pixel_bytes(s), row_bytes = s.in_w * C;
  const int64_t prow_bytes = (s.in_w + 2 * s.pad_w) * wc;
  const auto side = static_cast<size_t>(s.pad_w * wc);
  // Channel-padded pixels (C < 4, wc == 4): the row is quantized / copied into a scratch row first, then
  // spread a pixel at a time as one 32-bit word (C bytes of x, the zero point in the rest).
  uint8_t* tmp = wc != C ? thread_scratch_as<uint8_t>(ScratchSlot::kRow, static_cast<size_t>(row_bytes + 4)) : nullptr;
  const uint32_t keep = wc != C ? (1u << (8 * C)) - 1u : 0u, fill = pad_byte * 0x01010101u;
  for (int64_t hp = hp0; hp < hp1; ++hp, dst += prow_bytes) {
    const int64_t ih = hp - s.pad_h;
    if (ih < 0 || ih >= s.in_h) {
      std::memset(dst, pad_byte, static_cast<size_t>(prow_bytes));
      continue;
    }
    std::memset(dst, pad_byte, side);
    uint8_t* row = tmp ? tmp : dst + side;
    if (x_float != nullptr) {
      k.quantize_int8(x_float + (b * s.in_h + ih) * row_bytes, reinterpret_cast<int8_t*>(row), row_bytes, &x_scale,
                      &pad_value, 0, -128, 127, RoundMode::kHalfToEven);
    } else {
      std::memcpy(row, x + (b * s.in_h + ih) * row_bytes, static_cast<size_t>(row_bytes));
    }
    if (tmp) {
      for (int64_t w = 0; w < s.in_w; ++w) {
        uint32_t v;
        std::memcpy(&v, tmp + w * C, 4);  // C bytes of pixel w (the scratch row has 4 bytes of slack)
        v = (v & keep) | (fill & ~keep);
        std::memcpy(dst + side + w * 4, &v, 4);
      }
    }
    std::memset(dst + side + s.in_w * wc, pad_byte, side);
  }
}

// Bands of output rows per image for the band-by-band drivers: padded bands of at most kBandBytes; with several
// threads, at least two tasks per thread (taken as they come, so a core that falls behind — another process
// on it — takes fewer), but bands of at least four output rows; then a task count that is a multiple of the
// thread count. Each band rebuilds the KH - 1 padded rows it shares with the next, so a small image gains from
// fewer bands: at batch 1 and 2 threads, four tasks a thread (and rounding 3 bands up to 4) left (1,128,28,28)
// and (1,256,14,14) 3x3 layers at 0.97x torch.ao; two a thread (and 3 rounded down to 2): 1.10x.
int64_t band_count(const ConvShape& s, int threads) {
  const int64_t Hp = s.in_h + 2 * s.pad_h, prow_bytes = (s.in_w + 2 * s.pad_w) * pixel_bytes(s);
  int64_t bands = std::max<int64_t>(1, ceil_div(Hp * prow_bytes, kBandBytes));
  if (threads > 1) bands = std::max(bands, ceil_div(2 * threads, s.batch));
  bands = std::min(bands, std::max<int64_t>(1, s.out_h / 4));
  if ((s.batch * bands) % threads != 0 && s.batch * bands > threads) {
    int64_t down = bands;
    while (down > 1 && (s.batch * down) % threads != 0) --down;
    if ((s.batch * down) % threads == 0) return down;
  }
  while ((s.batch * bands) % threads != 0 && bands < s.out_h) ++bands;
  return bands;
}

// The band-by-band skeleton of conv2d_implicit and conv2d_grouped. x is either int8 / uint8 (x_float null) or
// float32 quantized row by row while the padded image is built (x_float, with x_scale / pad_value as the zero
// point: the quantize op's int8, one pass instead of two). Tasks are bands of output rows of one image
// (band_count): each builds the padded rows its band reads in its own thread's scratch, then goes over blocks
// of whole output rows, about kPixelBlock pixels each, so the padded rows are read from the cache of the core
// that wrote them (a whole padded batch built first ran from L3 at batch 8: 878 vs 954 GOPS per image at batch
// 1). Neighbouring bands both build the KH - 1 rows they share. For each block, block_sums(xp, padded_rows,
// r0, rows, acc, ldacc) writes the int32 sums of output rows [r0, r0 + rows) of the band (xp: its first padded
// row) into acc, row j * out_w + i for output row r0 + j, column n; the epilogue then takes the block whole.
template <typename BlockSums>
void conv_bands(const KernelTable& k, const uint8_t* x, const float* x_float, float x_scale, int32_t pad_value,
                const ConvShape& s, const GemmEpilogue& e, void* out, int threads, const BlockSums& block_sums) {
  const int64_t N = s.out_c, prow_bytes = (s.in_w + 2 * s.pad_w) * pixel_bytes(s);
  const int64_t halo = s.dilation_h * (s.kernel_h - 1), bands = band_count(s, threads);
  GemmEpilogue ek = e;
  ek.k = s.kernel_h * s.kernel_w * weight_channels(s);
  const int64_t out_image = s.out_h * s.out_w;
  parallel_for(s.batch * bands, threads, [&](int64_t task) {
    const int64_t b = task / bands, band = task % bands;
    const int64_t oh0 = s.out_h * band / bands, oh1 = s.out_h * (band + 1) / bands;
    if (oh1 <= oh0) return;
    // Output row oh reads padded rows oh * sh .. oh * sh + halo.
    const int64_t hp0 = oh0 * s.stride_h, hp1 = (oh1 - 1) * s.stride_h + halo + 1;
    auto* xp = thread_scratch_as<uint8_t>(ScratchSlot::kPadded, static_cast<size_t>((hp1 - hp0) * prow_bytes));
    build_padded_rows(k, x, x_float, x_scale, pad_value, s, b, hp0, hp1, xp);
    const int64_t band_rows = oh1 - oh0;
    const int64_t per_block = std::max<int64_t>(1, kPixelBlock / s.out_w);
    const int64_t block = ceil_div(band_rows, ceil_div(band_rows, per_block));
    for (int64_t r0 = 0; r0 < band_rows; r0 += block) {
      const int64_t rows = std::min(block, band_rows - r0);
      AccBlock acc(rows * s.out_w, 0, N);
      block_sums(xp, hp1 - hp0, r0, rows, acc.base, acc.ld);
      k.gemm_epilogue(acc.base, acc.ld, rows * s.out_w, b * out_image + (oh0 + r0) * s.out_w, 0, N, ek, out, N);
    }
  });
}

// Every output row of a block is one run of the kernel's rows, so the padding columns between output rows
// are skipped.
void conv2d_implicit(const KernelTable& k, const uint8_t* x, const float* x_float, float x_scale, bool x_signed,
                     int32_t pad_value, const void* packed, const ConvShape& s, const GemmEpilogue& e, void* out,
                     int threads) {
  const int64_t C = pixel_bytes(s), prow_bytes = (s.in_w + 2 * s.pad_w) * C;
  conv_bands(k, x, x_float, x_scale, pad_value, s, e, out, threads,
             [&](const uint8_t* xp, int64_t, int64_t r0, int64_t rows, int32_t* acc, int64_t ldacc) {
               k.conv_implicit_s32(xp + r0 * s.stride_h * prow_bytes, x_signed, s.stride_w * C,
                                   s.dilation_h * prow_bytes, s.kernel_h, s.kernel_w * C, s.out_w,
                                   s.stride_h * prow_bytes, packed, rows * s.out_w, s.out_c, 0, s.out_c, acc, ldacc);
             });
}

// True when conv2d_grouped applies: groups of a few channels that the path bundles (conv_grouped_fits).
bool grouped_ok(const KernelTable& k, const ConvShape& s) {
  return k.conv_grouped_s32 != nullptr && s.groups > 1 &&
         k.conv_grouped_fits(s.groups, s.in_c / s.groups, s.out_c / s.groups, s.kernel_h * s.kernel_w);
}

// Grouped convolution on the path's bundled kernel (kernels.h conv_grouped_s32), any stride / dilation /
// padding, band by band (conv_bands); the kernel reorders a band in place on its first block.
void conv2d_grouped(const KernelTable& k, const uint8_t* x, const float* x_float, float x_scale, bool x_signed,
                    int32_t pad_value, const void* packed, int64_t group_stride, const ConvShape& s,
                    const GemmEpilogue& e, void* out, int threads) {
  conv_bands(k, x, x_float, x_scale, pad_value, s, e, out, threads,
             [&](uint8_t* xp, int64_t padded_rows, int64_t r0, int64_t rows, int32_t* acc, int64_t ldacc) {
               GroupedConvBand g{};
               g.x = xp;
               g.x_signed = x_signed;
               g.padded_rows = padded_rows;
               g.padded_w = s.in_w + 2 * s.pad_w;
               g.channels = s.in_c;
               g.groups = s.groups;
               g.cin_g = s.in_c / s.groups;
               g.cout_g = s.out_c / s.groups;
               g.kernel_h = s.kernel_h;
               g.kernel_w = s.kernel_w;
               g.stride_h = s.stride_h;
               g.stride_w = s.stride_w;
               g.dilation_h = s.dilation_h;
               g.dilation_w = s.dilation_w;
               g.row_begin = r0;
               g.row_end = r0 + rows;
               g.out_w = s.out_w;
               g.prepare = r0 == 0;
               g.packed = packed;
               g.group_stride = group_stride;
               g.acc = acc;
               g.ldacc = ldacc;
               k.conv_grouped_s32(g);
             });
}

}  // namespace

void conv2d_nhwc(const KernelTable& k, const void* x, bool x_signed, int32_t pad_value, const void* packed,
                 int64_t group_stride, const ConvShape& s, const GemmEpilogue& e, void* out, int threads) {
  const int64_t groups = s.groups;
  const int64_t cin_g = s.in_c / groups, cout_g = s.out_c / groups;
  const int64_t wc = weight_channels(s);  // bytes per tap in an im2col row (cin_g, or cin_g zero-padded)
  const int64_t kg = s.kernel_h * s.kernel_w * wc;
  const int64_t pixels = s.batch * s.out_h * s.out_w;
  const size_t out_elem = output_element_size(e);
  const auto* xb = static_cast<const uint8_t*>(x);
  const auto* wb = static_cast<const uint8_t*>(packed);
  if (pixels == 0 || s.out_c == 0) return;
  // 1x1, stride 1, no padding, one group: the activations already are the GEMM's A matrix.
  if (pointwise(s)) {
    gemm(k, x, x_signed, s.in_c, packed, pixels, s.out_c, s.in_c, e, out, s.out_c, threads);
    return;
  }
  const auto pad_byte = static_cast<uint8_t>(pad_value & 0xff);
  if (implicit_ok(k, s)) {
    conv2d_implicit(k, xb, nullptr, 1.0f, x_signed, pad_value, packed, s, e, out, threads);
    return;
  }
  if (grouped_ok(k, s)) {
    conv2d_grouped(k, xb, nullptr, 1.0f, x_signed, pad_value, packed, group_stride, s, e, out, threads);
    return;
  }
  // Pixel blocks: whole row tiles (multiples of 6), about kPixelBlock pixels, so that a task's im2col block
  // (rows x kg bytes), its packed copy and its accumulator block stay in L2, with enough rows per task that
  // the per-task costs (packing, the first and last tiles) stay small; then an even count per thread.
  const int64_t target = std::max<int64_t>(6, std::min<int64_t>(kPixelBlock, (96 << 10) / std::max<int64_t>(kg, 1)));
  int64_t pixel_blocks = ceil_div(pixels, target);
  if (threads > 1 && (pixel_blocks * groups) % threads != 0) pixel_blocks = round_up(pixel_blocks, threads);
  const int64_t pixel_block = std::min(pixels, round_up(ceil_div(pixels, pixel_blocks), 6));
  pixel_blocks = ceil_div(pixels, pixel_block);
  // The kernel_w taps of one kernel row are one contiguous run of the NHWC input when they are adjacent
  // pixels (dilation 1) and every channel is used (one group): one copy instead of kernel_w.
  const bool row_runs = groups == 1 && s.dilation_w == 1 && wc == cin_g;
  parallel_for(pixel_blocks * groups, threads, [&](int64_t task) {
    const int64_t g = task % groups;
    const int64_t p0 = (task / groups) * pixel_block;
    const int64_t rows = std::min(pixel_block, pixels - p0);
    uint8_t* a = thread_scratch_as<uint8_t>(ScratchSlot::kIm2col, static_cast<size_t>(rows * kg));
    // (b, oh, ow) of pixel p0, then stepped pixel by pixel (three 64-bit divisions a pixel were a third of the
    // 3-channel stem's im2col).
    int64_t b = p0 / (s.out_h * s.out_w), oh = (p0 / s.out_w) % s.out_h, ow = p0 % s.out_w - 1;
    for (int64_t r = 0; r < rows; ++r) {
      if (++ow == s.out_w) {
        ow = 0;
        if (++oh == s.out_h) {
          oh = 0;
          ++b;
        }
      }
      uint8_t* dst = a + r * kg;
      const int64_t iw0 = ow * s.stride_w - s.pad_w;
      const bool w_inside = iw0 >= 0 && iw0 + (s.kernel_w - 1) * s.dilation_w < s.in_w;
      for (int64_t i = 0; i < s.kernel_h; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
        const bool row_in = ih >= 0 && ih < s.in_h;
        if (row_runs && row_in && w_inside) {
          copy_run(dst, xb + ((b * s.in_h + ih) * s.in_w + iw0) * s.in_c, s.kernel_w * cin_g);
          dst += s.kernel_w * cin_g;
          continue;
        }
        for (int64_t j = 0; j < s.kernel_w; ++j, dst += wc) {
          const int64_t iw = iw0 + j * s.dilation_w;
          if (row_in && iw >= 0 && iw < s.in_w) {
            copy_run(dst, xb + ((b * s.in_h + ih) * s.in_w + iw) * s.in_c + g * cin_g, cin_g);
            if (wc != cin_g) std::memset(dst + cin_g, pad_byte, static_cast<size_t>(wc - cin_g));
          } else {
            std::memset(dst, pad_byte, static_cast<size_t>(wc));
          }
        }
      }
    }
    AccBlock acc(rows, 0, cout_g);
    k.gemm_s32(a, x_signed, kg, wb + g * group_stride, rows, cout_g, kg, 0, cout_g, acc.base, acc.ld);
    GemmEpilogue eg = offset_epilogue(e, g * cout_g);
    eg.k = kg;
    k.gemm_epilogue(acc.base, acc.ld, rows, p0, 0, cout_g, eg,
                        static_cast<uint8_t*>(out) + static_cast<size_t>(g * cout_g) * out_elem, s.out_c);
  });
}

namespace {

// The depthwise tasks: runs of whole (b, oh) output rows, as many as fit an int32 block of
// kDepthwiseAccBytes, and a multiple of the thread count. x_float non-null: x is float32, and each task first
// quantizes the input rows its output rows read (halo included) into its own thread's scratch.
void depthwise_tasks(const KernelTable& k, const void* x, bool x_signed, const float* x_float, float x_scale,
                     int32_t pad_value, const int8_t* w, const ConvShape& s, const GemmEpilogue& e, void* out,
                     int threads) {
  const int64_t rows = s.batch * s.out_h;  // (b, oh) rows of out_w x C outputs
  if (rows == 0 || s.out_w == 0 || s.out_c == 0) return;
  DepthwiseShape d{s.batch, s.in_h, s.in_w, s.in_c, s.kernel_h, s.kernel_w, s.out_h, s.out_w,
                   s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dilation_h, s.dilation_w};
  const int64_t row_elems = s.out_w * s.out_c, in_row = s.in_w * s.in_c;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, rows));
  const int64_t max_rows = std::max<int64_t>(1, kDepthwiseAccBytes / (row_elems * 4));
  const int64_t tasks = std::min(rows, nt * ceil_div(rows, nt * max_rows));
  GemmEpilogue ek = e;
  ek.k = s.kernel_h * s.kernel_w;
  parallel_for(tasks, threads, [&](int64_t task) {
    const int64_t r0 = rows * task / tasks, r1 = rows * (task + 1) / tasks;
    const void* xt = x;
    if (x_float != nullptr) {
      // Input rows (flattened b * in_h + ih) that output rows [r0, r1) read: from the first tap row of the
      // first to the last tap row of the last, clipped to their images (padding rows are never read).
      const int64_t b0 = r0 / s.out_h, oh0 = r0 % s.out_h, b1 = (r1 - 1) / s.out_h, oh1 = (r1 - 1) % s.out_h;
      const int64_t lo = b0 * s.in_h + std::max<int64_t>(0, oh0 * s.stride_h - s.pad_h);
      const int64_t hi = b1 * s.in_h + std::min<int64_t>(s.in_h - 1, oh1 * s.stride_h - s.pad_h +
                                                                        (s.kernel_h - 1) * s.dilation_h);
      // The kernel addresses rows by their index in the whole tensor: a base pointer offset by -lo rows.
      uint8_t* q = thread_scratch_as<uint8_t>(ScratchSlot::kQuantized,
                                              static_cast<size_t>(std::max<int64_t>(hi - lo + 1, 1) * in_row));
      if (hi >= lo)
        k.quantize_int8(x_float + lo * in_row, reinterpret_cast<int8_t*>(q), (hi - lo + 1) * in_row, &x_scale,
                        &pad_value, 0, -128, 127, RoundMode::kHalfToEven);
      xt = q - lo * in_row;
    }
    int32_t* acc = thread_scratch_as<int32_t>(ScratchSlot::kAccumulator, static_cast<size_t>((r1 - r0) * row_elems));
    int32_t* base = acc - r0 * row_elems;  // the kernel writes absolute (b, oh) rows
    k.depthwise_conv_s32(xt, x_signed, pad_value, w, base, d, r0, r1);
    k.gemm_epilogue(acc, s.out_c, (r1 - r0) * s.out_w, r0 * s.out_w, 0, s.out_c, ek, out, s.out_c);
  });
}

}  // namespace

void depthwise_conv2d_nhwc(const KernelTable& k, const void* x, bool x_signed, int32_t pad_value, const int8_t* w,
                           const ConvShape& s, const GemmEpilogue& e, void* out, int threads) {
  depthwise_tasks(k, x, x_signed, nullptr, 1.0f, pad_value, w, s, e, out, threads);
}

void depthwise_conv2d_nhwc_float(const KernelTable& k, const float* x, float x_scale, int32_t x_zero_point,
                                 const int8_t* w, const ConvShape& s, const GemmEpilogue& e, void* out, int threads) {
  if (threads <= 1) {  // one core: quantize every input row once (the tasks' shared rows are not done twice)
    const int8_t* q = quantize_activations(k, x, s.batch * s.in_h * s.in_w * s.in_c, x_scale, x_zero_point, 1);
    depthwise_tasks(k, q, true, nullptr, 1.0f, x_zero_point, w, s, e, out, 1);
    return;
  }
  depthwise_tasks(k, nullptr, true, x, x_scale, x_zero_point, w, s, e, out, threads);
}

void conv2d_nhwc_float(const KernelTable& k, const float* x, float x_scale, int32_t x_zero_point, const void* packed,
                       int64_t group_stride, const ConvShape& s, const GemmEpilogue& e, void* out, int threads) {
  if (s.batch * s.out_h * s.out_w == 0 || s.out_c == 0) return;
  if (implicit_ok(k, s)) {
    conv2d_implicit(k, nullptr, x, x_scale, true, x_zero_point, packed, s, e, out, threads);
    return;
  }
  if (grouped_ok(k, s)) {
    conv2d_grouped(k, nullptr, x, x_scale, true, x_zero_point, packed, group_stride, s, e, out, threads);
    return;
  }
  if (pointwise(s)) {
    gemm_float_static(k, x, x_scale, x_zero_point, packed, s.batch * s.out_h * s.out_w, s.out_c, s.in_c, e, out,
                      s.out_c, threads);
    return;
  }
  const int8_t* q = quantize_activations(k, x, s.batch * s.in_h * s.in_w * s.in_c, x_scale, x_zero_point, threads);
  conv2d_nhwc(k, q, true, x_zero_point, packed, group_stride, s, e, out, threads);
}

}  // namespace pyslim
