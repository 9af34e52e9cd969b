// The micro-kernel table: one function pointer per kernel, one table per ISA path.
//
// Micro-kernels work on one contiguous span of float32 elements; threading, channel layout and
// reductions across spans live in the ISA-independent drivers (fake_quant.h). Every pointer is valid
// for n elements (n >= 0; n == 0 must be a no-op). No kernel allocates, throws or sees Python/torch.
//
// Parameter vectors (scale, zero_point) are read with `param_stride`: 0 means one value for the whole
// span (scale[0]), 1 means element i uses scale[i] (per-channel quantization along the last axis).
//
// Exactness contract: every path computes the same IEEE float32 operations in the same order as the
// reference (the build disables FMA contraction with -ffp-contract=off), so float outputs are
// bit-identical to the reference. Only the grad_scale / grad_zero_point reductions may differ, by the
// summation order (float32 partial sums over at most kMaxFloatPartial elements per lane, then double).
#pragma once

#include <cstdint>

#include "pyslim/isa.h"

namespace pyslim {

enum class RoundMode : int {
  kHalfToEven = 0,        // nearbyint under the default FE_TONEAREST (torch, numpy)
  kHalfAwayFromZero = 1,  // std::round (PaddleSlim's dygraph QAT, round_type=1)
};

enum class GradMask : int {
  kNone = 0,       // plain straight-through: grad_x = grad (PaddleSlim)
  kInclusive = 1,  // clipped straight-through: grad_x = grad where the value is inside the range, bounds included
  kStrict = 2,     // as kInclusive but bounds excluded (PACT: 1[|x| < alpha])
};

constexpr int64_t kMaxFloatPartial = 4096;
// Most float32 terms per lane a SIMD FPGM kernel sums before widening to double (see fpgm_pair_block).
constexpr int64_t kFpgmFloatTerms = 16;

// Geometry of a depthwise 2-D convolution over NHWC tensors (one filter per channel, multiplier 1).
struct DepthwiseShape {
  int64_t batch, height, width, channels;         // input N, H, W, C
  int64_t kernel_h, kernel_w;                     // KH, KW
  int64_t out_h, out_w;                           // OH, OW
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// PaddleSlim's guarded reciprocal of a scale (fake_quantize_op.h `inverse`). `static` on purpose: an
// `inline` function gets one weak definition per translation unit, and the linker could keep the copy
// compiled with -mavx512f for the baseline reference code. Every header function used by ISA-specific
// files must have internal linkage.
static inline float paddle_inverse(float s) { return s <= 1e-30f ? 1.0f / (s + 1e-6f) : 1.0f / s; }

// kGelu: the exact (erf) GELU, y * 0.5 * (1 + erf(y / sqrt(2))), as torch.nn.GELU() computes it, with erf from
// Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7) and a polynomial exp: within 2e-7 * |y| of the exact
// value (measured: 4.8e-7 at most for |y| <= 6.4); not bit-identical to torch's erf, bit-identical across
// pyslim's CPU paths (the CUDA epilogue has no GELU).
enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2, kGelu = 3 };

// What becomes of the int32 accumulator acc[m][n] = sum_k a[m][k] * w[n][k].
//   kInt32:     out = acc
//   kFloat32:   y = act(float(acc - zp_m * col_sums[n]) * (scale_m * weight_scale[n]) + bias[n])
//   kQuantized: y as above, then out = saturate(nearbyint(y * (1.0f / out_scale)) + out_zero_point) as int8 /
//               uint8 (NaN -> out_zero_point): exactly the quantize_int8 entry's result on the float output, so a
//               layer can hand the next one its already-quantized input.
// (zp_m, scale_m) are the activation zero point and scale: per row when row_scales is given (the dynamic
// path), else act_zero_point / act_scale for the whole tensor. Weights are symmetric (zero point 0).
struct GemmEpilogue {
  enum Kind : int { kInt32 = 0, kFloat32 = 1, kQuantized = 2 };
  Kind kind = kInt32;
  float act_scale = 1.0f;
  int32_t act_zero_point = 0;
  const float* row_scales = nullptr;
  const int32_t* row_zero_points = nullptr;
  const float* weight_scale = nullptr;  // [N]
  const int32_t* col_sums = nullptr;    // [N]; required when a zero point can be nonzero
  const float* bias = nullptr;          // [N] or null
  Activation activation = Activation::kNone;
  float out_scale = 1.0f;
  int32_t out_zero_point = 0;
  bool out_signed = true;
  // Reduction length of the accumulators (set by the drivers): above 32768 the zero-point correction
  // acc - zp * col_sums can leave the int32 range and is computed in int64.
  int64_t k = 0;
};

// One band of a grouped convolution (KernelTable::conv_grouped_s32).
struct GroupedConvBand {
  uint8_t* x;
  bool x_signed;
  int64_t padded_rows, padded_w, channels;
  int64_t groups, cin_g, cout_g;
  int64_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
  int64_t row_begin, row_end, out_w;
  bool prepare;
  const void* packed;
  int64_t group_stride;
  int32_t* acc;
  int64_t ldacc;
};

struct KernelTable {
  // ---- reductions ----
  // max_i |x[i]|; NaN if any x[i] is NaN; 0 for n == 0.
  float (*abs_max)(const float* x, int64_t n);
  // acc[i] = max(acc[i], |x[i]|) for i < n; a NaN in x or acc makes acc[i] NaN.
  void (*abs_max_accumulate)(const float* x, int64_t n, float* acc);
  // *lo = min(0, min_i x[i]), *hi = max(0, max_i x[i]) (the range an asymmetric int8 grid must cover); both
  // NaN if any x[i] is NaN. A zero result may come back as -0.0 or +0.0.
  void (*range_with_zero)(const float* x, int64_t n, float* lo, float* hi);

  // ---- symmetric fake quantization (PaddleSlim form), bin = 2^(bits-1) - 1 ----
  //   m = (float)bin * paddle_inverse(s);  u = min(max(x, -s), s) * m;  q = round(u);  y = (q * s) / (float)bin
  // NaN x gives NaN y; +-Inf x gives +-s.
  void (*fake_quant_symmetric)(const float* x, float* y, int64_t n, const float* scale, int64_t param_stride,
                               int32_t bin, RoundMode round);
  // grad_x = grad masked by |x| <= s (kInclusive) or |x| < s (kStrict), or unmasked (kNone); NaN x masks to 0.
  // If grad_scale_acc is not null it receives the LSQ/PACT scale gradient sum_i grad[i] * c_i with
  //   c_i = +1 if x > s, -1 if x < -s, (q - u) / bin otherwise (0 for NaN x),
  // added into grad_scale_acc[0] (param_stride 0) or grad_scale_acc[i] (param_stride 1).
  void (*fake_quant_symmetric_backward)(const float* x, const float* grad, float* grad_x, int64_t n,
                                        const float* scale, int64_t param_stride, int32_t bin, RoundMode round,
                                        GradMask mask, double* grad_scale_acc);

  // ---- affine fake quantization (torch form) ----
  //   inv = 1.0f / s;  v = round(x * inv) + (float)zp;  c = min(max(v, qmin), qmax);  y = (c - zp) * s
  // NaN x gives NaN y (torch's result for NaN is undefined behaviour of an int64 cast).
  void (*fake_quant_affine)(const float* x, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                            int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round);
  // grad_x = grad where qmin <= v <= qmax (kInclusive, torch's mask) or unmasked (kNone).
  // Optional learnable-parameter sums (LSQ form, torch's _fake_quantize_learnable_* without grad_factor):
  //   d y/d s  = round(x*inv) - x*inv inside [qmin, qmax]; qmin - zp below; qmax - zp above
  //   d y/d zp = 0 inside; -s outside.   NaN x contributes 0 to both.
  void (*fake_quant_affine_backward)(const float* x, const float* grad, float* grad_x, int64_t n,
                                     const float* scale, const int32_t* zero_point, int64_t param_stride,
                                     int32_t qmin, int32_t qmax, RoundMode round, GradMask mask,
                                     double* grad_scale_acc, double* grad_zero_point_acc);

  // ---- forward that also saves the clipped straight-through mask as bits ----
  // With grad "clipped" and no parameter gradient, the backward needs only one bit per element: whether the
  // gradient passes. Writing it in the forward (n/8 bytes) lets the backward read the mask and grad instead
  // of x and grad (8.125 B/elem instead of 12 B/elem for the backward; 16.25 instead of 20 for both).
  //
  // Bit layout (whole tensor): element i is bit (i % 8) of byte i / 8, least significant bit first. A
  // micro-kernel gets `mask_bits` pointing at the byte that holds its first element and `bit_offset` in
  // [0, 8): its element j is bit (bit_offset + j) % 8 of mask_bits[(bit_offset + j) / 8].
  // Writers touch only the bytes [0, ceil((bit_offset + n) / 8)) of mask_bits; in the first byte they keep
  // the bits below bit_offset (written by the previous span of the same task), and in the last byte they
  // clear the bits at and above bit_offset + n (so a tensor written span after span ends with zero padding).
  // The drivers start each task on a multiple of 64 elements, so two threads never share a byte.
  //
  // y is exactly fake_quant_affine's; the bit is 1 where qmin <= round(x * inv) + zp <= qmax (0 for NaN),
  // exactly the kInclusive keep of fake_quant_affine_backward.
  void (*fake_quant_affine_mask)(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                                 const float* scale, const int32_t* zero_point, int64_t param_stride, int32_t qmin,
                                 int32_t qmax, RoundMode round);
  // y is exactly fake_quant_symmetric's; the bit is fake_quant_symmetric_backward's keep: |x| <= s
  // (kInclusive), |x| < s (kStrict), 0 for NaN x; kNone sets every bit.
  void (*fake_quant_symmetric_mask)(const float* x, float* y, uint8_t* mask_bits, int64_t bit_offset, int64_t n,
                                    const float* scale, int64_t param_stride, int32_t bin, RoundMode round,
                                    GradMask mask);
  // grad_x[j] = bit j of the mask (same layout and bit_offset as above) ? grad[j] : 0.0f, bit-exactly the
  // grad_x of the x-based backward (a masked NaN/Inf gradient becomes +0). grad_x may equal grad.
  void (*apply_grad_mask)(const float* grad, const uint8_t* mask_bits, int64_t bit_offset, float* grad_x,
                          int64_t n);

  // ---- real quantization ----
  //   q = (int)min(max(round(x * (1.0f / s)) + (float)zp, qmin), qmax);  NaN x gives q = zp.
  void (*quantize_int8)(const float* x, int8_t* q, int64_t n, const float* scale, const int32_t* zero_point,
                        int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round);
  void (*quantize_int16)(const float* x, int16_t* q, int64_t n, const float* scale, const int32_t* zero_point,
                         int64_t param_stride, int32_t qmin, int32_t qmax, RoundMode round);
  //   y = (float)(q - zp) * s
  void (*dequantize_int8)(const int8_t* q, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                          int64_t param_stride);
  void (*dequantize_int16)(const int16_t* q, float* y, int64_t n, const float* scale, const int32_t* zero_point,
                           int64_t param_stride);

  // ---- int8 GEMM, exact int32 accumulation (no saturation anywhere) ----
  //   C[m][n] = sum_k A[m][k] * W[n][k]      for m in [0, M), n in [n_begin, n_end)
  // A: M x K row-major with row stride lda (in elements), uint8 when !a_signed, int8 when a_signed.
  // W: N x K int8 row-major (torch's Linear / flattened conv weight layout), given as the buffer written by
  //    gemm_pack *of the same table* (each path has its own private layout; the buffer is 64-byte aligned
  //    and gemm_packed_size(N, K) bytes long).
  // C: int32, row stride ldc; only the [0, M) x [n_begin, n_end) block is written.
  // n_begin is a multiple of gemm_n_step; n_end is a multiple of gemm_n_step or N. M, N, K >= 1.
  // The caller (the driver) splits M and N across threads; a call must be safe to run concurrently with
  // other calls on disjoint C blocks and may use only stack memory as scratch (up to ~100 KiB: fine for the
  // default 8 MiB thread stacks). Inputs must keep every partial sum inside int32 (|K| * 255 * 128 < 2^31,
  // i.e. K <= 65793), as the reference's int32 accumulator does.
  int64_t gemm_n_step;
  int64_t (*gemm_packed_size)(int64_t N, int64_t K);
  void (*gemm_pack)(const int8_t* W, int64_t N, int64_t K, void* packed);
  void (*gemm_s32)(const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M, int64_t N, int64_t K,
                   int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc);
  // Implicit-GEMM convolution (optional: null on paths without one; the driver then uses im2col + gemm_s32).
  // The same product as gemm_s32, with K = segments * seg_len and row m of A gathered from `segments` runs of
  // bytes; the rows come in runs of `run` rows, run j starting run_stride bytes after run j - 1:
  //   A[m][s * seg_len + t] = X[(m / run) * run_stride + (m % run) * pixel_stride + s * segment_stride + t]
  // (bytes; t < seg_len; run >= 1, and a run >= M makes it one run). For a convolution with strides (sh, sw),
  // dilation_w 1 and one group over a padded NHWC image, m indexes the output pixels, a run is one output row
  // (run = OW, pixel_stride = sw * C, run_stride = sh * padded width * C), segment s is kernel row s (seg_len = KW * C
  // bytes, segment_stride = dilation_h * padded width * C), and W is the flattened (kh, kw, c) weight packed by
  // gemm_pack with K = KH * KW * C — so no im2col copy is made, and no product is computed for the padding
  // columns. seg_len % 4 == 0. C row m is output row m (compact).
  // The epilogue of a block of int32 accumulators (GemmEpilogue above): rows [0, rows) x columns
  // [n_begin, n_end) of acc (row r is matrix row row0 + r; acc is indexed by absolute column) into `out`,
  // element (0, 0) of the output matrix (row stride ldo), typed by e.kind. Every path compiles the same source
  // (gemm_epilogue_impl.h) with its own flags: the same float operations in the same order, so the results
  // are bit-identical across paths; only the vector width differs.
  void (*gemm_epilogue)(const int32_t* acc, int64_t ldacc, int64_t rows, int64_t row0, int64_t n_begin,
                        int64_t n_end, const GemmEpilogue& e, void* out, int64_t ldo);
  void (*conv_implicit_s32)(const void* X, bool x_signed, int64_t pixel_stride, int64_t segment_stride,
                            int64_t segments, int64_t seg_len, int64_t run, int64_t run_stride, const void* packed,
                            int64_t M, int64_t N, int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc);

  // Grouped convolution with small groups (optional: null on paths without one; the driver then uses im2col +
  // gemm_s32 per group). For output rows j in [row_begin, row_end) of a band, x out_w columns, computes every
  // output channel's exact int32 sum_{kh, kw, c < cin_g} x_pad[j*sh + kh*dh][i*sw + kw*dw][g*cin_g + c] *
  // W_g[o][(kh, kw, c)] into acc row (j - row_begin) * out_w + i, column g * cout_g + o (the same sums as
  // gemm_s32 on the group's im2col rows). x is the zero-point-padded band: `padded_rows` rows of padded_w
  // pixels of `channels` bytes, x_pad row 0 = x's first row. A call with `prepare` rewrites the band in place
  // into the path's own layout first; the later calls over the same band must pass prepare = false. packed
  // holds the groups' weights as gemm_pack makes them, group g at packed + g * group_stride.
  // conv_grouped_fits says which (groups, cin_g, cout_g, taps = KH * KW) the path takes; the driver calls
  // conv_grouped_s32 only for those.
  bool (*conv_grouped_fits)(int64_t groups, int64_t cin_g, int64_t cout_g, int64_t taps);
  void (*conv_grouped_s32)(const GroupedConvBand& band);

  // ---- depthwise 2-D convolution, NHWC, exact int32 accumulation ----
  //   out[b][oh][ow][c] = sum_{i<KH, j<KW} x[b][oh*sh - ph + i*dh][ow*sw - pw + j*dw][c] * w[i][j][c]
  // where positions outside the input read as pad_value (the activation zero point, so that padding means
  // 0.0 after dequantization). x: N x H x W x C contiguous (uint8 when !x_signed, else int8);
  // w: KH x KW x C int8 contiguous; out: N x OH x OW x C int32 contiguous. Computes the output rows
  // [row_begin, row_end) of the flattened (b, oh) index; safe to run concurrently on disjoint rows.
  void (*depthwise_conv_s32)(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                             const DepthwiseShape& shape, int64_t row_begin, int64_t row_end);

  // ---- FPGM distance sums (geometric-median pruning) ----
  // W: rows of K float32 values, row r at W + r * ld (ld >= K). For every pair (i, j) with i in [i0, i1),
  // j in [j0, j1) and j > i (so each unordered pair is visited once, and a diagonal block i0 == j0 is
  // allowed), adds d(i, j) = sqrt(sum_k (W[i][k] - W[j][k])^2) into both row_sums[i] and row_sums[j]
  // (row_sums is indexed by the global row and must not be shared with a concurrent call). K >= 0.
  //
  // Accuracy contract (not bit-exact across paths): relative error of every d(i, j) <= 1e-6 against the
  // exact value for float32 inputs. The reference subtracts and squares in double (error ~K * 2^-53). The
  // SIMD paths subtract in float32 (one rounding, relative u = 2^-24), square and add with FMA into float32
  // lanes holding at most kFpgmFloatTerms = 16 terms each, then widen the lanes to double. All terms are
  // >= 0, so a float partial of n terms has relative error <= (n + 2) u to first order (2u from the rounded
  // difference squared, one rounding per FMA), i.e. 18 u = 1.07e-6 on the squared distance; the double sums
  // add ~K * 2^-53, and sqrt halves the relative error: <= 5.4e-7 on d(i, j). Sums of such non-negative
  // distances (in double) keep that relative bound, so every score is within 1e-6 of the float64 value.
  void (*fpgm_pair_block)(const float* W, int64_t K, int64_t ld, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          double* row_sums);
};

// The table of a path, or nullptr when that path was not built into this binary or this CPU cannot run it
// (a table is filled only when its ISA is detected: fill functions are compiled with their ISA's flags).
const KernelTable* kernel_table(Isa isa);
// The table of the active path (see isa.h).
const KernelTable& active_kernels();

// Per-ISA table fillers; each lives in its own translation unit compiled with that ISA's flags.
void fill_reference_kernels(KernelTable* t);
void fill_avx2_kernels(KernelTable* t);
void fill_avx512_kernels(KernelTable* t);
void fill_neon_kernels(KernelTable* t);
// The int8 GEMM / depthwise entries (gemm_*, depthwise_conv_s32) of each table. A path whose file is not
// built keeps the reference entries (see dispatch.cc); avx512 uses the AVX2 GEMM, avx512vnni its own;
// fill_neondot_gemm sets only the gemm_* entries (neondot takes the NEON depthwise kernel).
void fill_reference_gemm(KernelTable* t);
void fill_avx2_gemm(KernelTable* t);
void fill_avx512vnni_gemm(KernelTable* t);
void fill_neon_gemm(KernelTable* t);
void fill_neondot_gemm(KernelTable* t);
// The fpgm_pair_block entry: every table first gets the reference, then its path's file when built
// (avx512 and avx512vnni share fpgm_avx512.cc; neon and neondot share fpgm_neon.cc).
void fill_reference_fpgm(KernelTable* t);
void fill_avx2_fpgm(KernelTable* t);
void fill_avx512_fpgm(KernelTable* t);
void fill_neon_fpgm(KernelTable* t);

}  // namespace pyslim
