// Native parity tests for the int8 GEMM and depthwise-convolution kernels: every usable path's table
// (packed with its own gemm_pack) against the reference table. The contract is exact int32 results
// (kernels.h), so every comparison is equality, with no tolerance. ISA-agnostic: on x86 this runs the
// AVX2 / AVX-512 / VNNI tables, on aarch64 (under qemu) the NEON ones, everywhere the reference itself.
//
// Cells outside the requested C block (ldc > N padding, columns outside [n_begin, n_end), rows outside
// [row_begin, row_end)) are filled with a sentinel and must keep it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "pyslim/gemm.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace {

constexpr int32_t kSentinel = 0x5a5a5a5a;

const KernelTable& ref() { return *kernel_table(Isa::kReference); }

// A 64-byte aligned buffer (the packing contract).
struct Aligned {
  void* p = nullptr;
  explicit Aligned(int64_t bytes) {
    const size_t n = static_cast<size_t>((bytes + 63) / 64 * 64);
    p = std::aligned_alloc(64, n == 0 ? 64 : n);
    std::memset(p, 0xcd, n == 0 ? 64 : n);  // packing must not depend on the buffer's prior contents
  }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

std::string gemm_trace(Isa isa, int64_t M, int64_t N, int64_t K, bool a_signed, int64_t n_step, const char* what) {
  std::ostringstream os;
  os << "isa=" << isa_name(isa) << " M x N x K = " << M << " x " << N << " x " << K
     << " a_signed=" << a_signed << " n_step=" << n_step << " " << what;
  return os.str();
}

enum class Fill { kRandom, kMax, kMin, kAlternate };

// A: M rows of lda bytes (uint8 or int8 values stored as bytes); W: N x K int8.
struct GemmCase {
  int64_t M, N, K, lda, ldc;
  bool a_signed;
  std::vector<uint8_t> A;
  std::vector<int8_t> W;
  GemmCase(int64_t m, int64_t n, int64_t k, bool s, uint32_t seed, Fill fa = Fill::kRandom, Fill fw = Fill::kRandom,
           int64_t lda_extra = 5, int64_t ldc_extra = 3)
      : M(m), N(n), K(k), lda(k + lda_extra), ldc(n + ldc_extra), a_signed(s), A(m * lda), W(n * k) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> byte(0, 255);
    const uint8_t a_hi = s ? 0x7f : 0xff, a_lo = s ? 0x80 : 0x00;  // 127 / -128 for int8, 255 / 0 for uint8
    for (int64_t i = 0; i < m * lda; ++i) {
      switch (fa) {
        case Fill::kRandom: A[i] = static_cast<uint8_t>(byte(rng)); break;
        case Fill::kMax: A[i] = s ? a_lo : a_hi; break;  // the largest magnitude: -128 or 255
        case Fill::kMin: A[i] = s ? a_hi : a_lo; break;
        case Fill::kAlternate: A[i] = (i % 3) ? (s ? a_lo : a_hi) : (s ? a_hi : a_lo); break;
      }
    }
    for (int64_t i = 0; i < n * k; ++i) {
      switch (fw) {
        case Fill::kRandom: W[i] = static_cast<int8_t>(byte(rng) - 128); break;
        case Fill::kMax: W[i] = 127; break;
        case Fill::kMin: W[i] = -128; break;
        case Fill::kAlternate: W[i] = (i % 2) ? -128 : 127; break;
      }
    }
  }
};

// C (M x ldc, sentinel-filled) from table t, columns [n_begin, n_end).
std::vector<int32_t> run_gemm(const KernelTable& t, const GemmCase& g, int64_t n_begin, int64_t n_end) {
  Aligned packed(t.gemm_packed_size(g.N, g.K));
  t.gemm_pack(g.W.data(), g.N, g.K, packed.p);
  std::vector<int32_t> C(g.M * g.ldc, kSentinel);
  t.gemm_s32(g.A.data(), g.a_signed, g.lda, packed.p, g.M, g.N, g.K, n_begin, n_end, C.data(), g.ldc);
  return C;
}

// Expected C for columns [n_begin, n_end): the reference's values there, the sentinel elsewhere.
std::vector<int32_t> expected_gemm(const GemmCase& g, int64_t n_begin, int64_t n_end) {
  std::vector<int32_t> full = run_gemm(ref(), g, 0, g.N);
  std::vector<int32_t> out(full.size(), kSentinel);
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = n_begin; n < n_end; ++n) out[m * g.ldc + n] = full[m * g.ldc + n];
  return out;
}

// Compares with the first mismatch reported (an element-wise EXPECT would flood the log).
void expect_same(const std::vector<int32_t>& got, const std::vector<int32_t>& want, int64_t ld) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      ADD_FAILURE() << "first mismatch at row " << static_cast<int64_t>(i) / ld << " col "
                    << static_cast<int64_t>(i) % ld << ": got " << got[i] << " want " << want[i]
                    << (want[i] == kSentinel ? " (cell outside the requested block)" : "");
      return;
    }
  }
}

void check_gemm(Isa isa, const GemmCase& g, const char* what) {
  const KernelTable& t = *kernel_table(isa);
  SCOPED_TRACE(gemm_trace(isa, g.M, g.N, g.K, g.a_signed, t.gemm_n_step, what));
  expect_same(run_gemm(t, g, 0, g.N), expected_gemm(g, 0, g.N), g.ldc);
}

TEST(GemmKernels, TablesAreComplete) {
  for (Isa isa : usable_isas()) {
    const KernelTable* t = kernel_table(isa);
    ASSERT_NE(t, nullptr) << isa_name(isa);
    EXPECT_GE(t->gemm_n_step, 1) << isa_name(isa);
    EXPECT_NE(t->gemm_packed_size, nullptr) << isa_name(isa);
    EXPECT_NE(t->gemm_pack, nullptr) << isa_name(isa);
    EXPECT_NE(t->gemm_s32, nullptr) << isa_name(isa);
    EXPECT_NE(t->depthwise_conv_s32, nullptr) << isa_name(isa);
    EXPECT_GE(t->gemm_packed_size(3, 5), 15) << isa_name(isa);
  }
}

TEST(GemmKernels, SmallShapeGridMatchesReference) {
  const int64_t sizes[] = {1, 2, 3, 15, 17, 63, 65};
  uint32_t seed = 1;
  for (Isa isa : usable_isas()) {
    for (int64_t M : sizes)
      for (int64_t N : sizes)
        for (int64_t K : sizes)
          for (bool s : {false, true}) check_gemm(isa, GemmCase(M, N, K, s, seed++), "grid");
  }
}

TEST(GemmKernels, LargeShapesMatchReference) {
  // K and N of 4097 (one past a power of two: every tile and block edge), M past the row blocks, K past the
  // K blocks; kept small in the other dimensions so the scalar reference stays fast.
  const int64_t shapes[][3] = {{1, 17, 4097},  {3, 65, 4097}, {17, 4097, 3},  {2, 4097, 65},  {65, 63, 1025},
                               {200, 70, 520}, {257, 33, 513}, {130, 129, 257}, {7, 300, 4097}, {1, 4097, 64}};
  uint32_t seed = 1000;
  for (Isa isa : usable_isas())
    for (const auto& s : shapes)
      for (bool sg : {false, true}) check_gemm(isa, GemmCase(s[0], s[1], s[2], sg, seed++), "large");
}

TEST(GemmKernels, KBlockSplitsMatchReference) {
  // The K-blocking rules of the fast paths: a K just above one block taken whole (576, 640 = 160 groups of 4),
  // one group more than that split in balanced blocks (644, 1028), rows past the A block that a deeper K block
  // shrinks (200 > 150), and one row tile over a K of several blocks taken in one run (M <= 6, K = 8195).
  const int64_t shapes[][3] = {{200, 64, 576}, {151, 65, 640}, {200, 66, 644}, {13, 64, 1028},
                               {6, 70, 8195},  {1, 129, 8195}, {7, 64, 8195}, {155, 17, 577}};
  uint32_t seed = 3000;
  for (Isa isa : usable_isas())
    for (const auto& s : shapes)
      for (bool sg : {false, true}) check_gemm(isa, GemmCase(s[0], s[1], s[2], sg, seed++), "k-blocks");
}

TEST(GemmKernels, ExtremeValuesAreExact) {
  // The saturation hazard: u8 x s8 pairs of 255 * -128 (or int8 -128 * -128) overflow int16 intermediates.
  const Fill fills[] = {Fill::kMax, Fill::kMin, Fill::kAlternate};
  const int64_t shapes[][3] = {{3, 17, 4097}, {7, 65, 63}, {1, 2, 2}, {13, 33, 1000}};
  for (Isa isa : usable_isas())
    for (const auto& s : shapes)
      for (bool sg : {false, true})
        for (Fill fa : fills)
          for (Fill fw : fills) {
            GemmCase g(s[0], s[1], s[2], sg, 7, fa, fw);
            check_gemm(isa, g, "extreme");
          }
}

TEST(GemmKernels, TightAndLooseStrides) {
  for (Isa isa : usable_isas())
    for (bool sg : {false, true}) {
      check_gemm(isa, GemmCase(9, 40, 33, sg, 11, Fill::kRandom, Fill::kRandom, 0, 0), "lda == K, ldc == N");
      check_gemm(isa, GemmCase(9, 40, 33, sg, 12, Fill::kRandom, Fill::kRandom, 1000, 77), "lda >> K, ldc >> N");
    }
}

TEST(GemmKernels, ColumnSubRangesOnStepBoundaries) {
  for (Isa isa : usable_isas()) {
    const KernelTable& t = *kernel_table(isa);
    const int64_t step = t.gemm_n_step;
    for (int64_t N : {step * 3 + 5, step * 2, int64_t{1}, step + 1}) {
      for (bool sg : {false, true}) {
        GemmCase g(11, N, 70, sg, static_cast<uint32_t>(N));
        // Every [i * step, min(j * step, N)) with i < j, which includes the ragged end at N.
        for (int64_t b = 0; b < N; b += step) {
          for (int64_t e = b + step;; e += step) {
            const int64_t end = e < N ? e : N;
            std::ostringstream os;
            os << "n_range=[" << b << ", " << end << ")";
            SCOPED_TRACE(gemm_trace(isa, g.M, g.N, g.K, sg, step, os.str().c_str()));
            expect_same(run_gemm(t, g, b, end), expected_gemm(g, b, end), g.ldc);
            if (end == N) break;
          }
        }
      }
    }
  }
}

// gemm_epilogue: every path's copy (the same source compiled with its flags) bit-identical to the reference,
// for each output kind, activation, per-row / per-tensor parameters, zero points, bias, a wide K (int64
// correction) and column ranges with vector tails; values include NaN-producing scales and saturation.
TEST(GemmKernels, EpilogueIsBitIdenticalAcrossPaths) {
  const int64_t rows = 5, ld = 77;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> acc_d(-2000000, 2000000);
  std::uniform_real_distribution<float> f_d(-1.0f, 1.0f);
  std::vector<int32_t> acc(rows * ld), col_sums(ld);
  std::vector<float> ws(ld), bias(ld), row_scales(rows + 2);  // rows 2 .. rows + 1 are used (row0 = 2)
  std::vector<int32_t> row_zps(rows + 2);
  for (auto& v : acc) v = acc_d(rng);
  acc[3] = 2147483647;
  acc[4] = -2147483647 - 1;
  for (int64_t n = 0; n < ld; ++n) {
    col_sums[n] = acc_d(rng) / 100;
    ws[n] = 1e-4f * (1.5f + f_d(rng));
    bias[n] = 3.0f * f_d(rng);
  }
  ws[7] = 0.0f;
  for (int64_t r = 0; r < rows + 2; ++r) {
    row_scales[r] = 0.01f * (1.2f + f_d(rng));
    row_zps[r] = static_cast<int32_t>(r * 37 % 256) - 128;
  }
  row_scales[3] = std::nanf("");
  const GemmEpilogue::Kind kinds[] = {GemmEpilogue::kInt32, GemmEpilogue::kFloat32, GemmEpilogue::kQuantized};
  const Activation acts[] = {Activation::kNone, Activation::kRelu, Activation::kRelu6, Activation::kGelu};
  for (Isa isa : usable_isas()) {
    const KernelTable& t = *kernel_table(isa);
    for (auto kind : kinds)
      for (auto act : acts)
        for (int variant = 0; variant < 8; ++variant) {
          GemmEpilogue e;
          e.kind = kind;
          e.activation = act;
          e.weight_scale = ws.data();
          e.col_sums = col_sums.data();
          e.bias = (variant & 1) ? bias.data() : nullptr;
          if (variant & 2) {
            e.row_scales = row_scales.data();
            e.row_zero_points = row_zps.data();
          } else {
            e.act_scale = 0.02f;
            e.act_zero_point = (variant & 4) ? -7 : 0;
          }
          e.k = (variant & 4) ? 40000 : 576;
          e.out_scale = 0.05f;
          e.out_zero_point = (variant & 1) ? 3 : -2;
          e.out_signed = (variant & 2) == 0;
          for (auto [n0, n1] : {std::pair<int64_t, int64_t>{0, ld}, {5, 70}, {64, 77}}) {
            SCOPED_TRACE(std::string("isa=") + isa_name(isa) + " kind=" + std::to_string(kind) + " act=" +
                         std::to_string(static_cast<int>(act)) + " variant=" + std::to_string(variant) + " cols " +
                         std::to_string(n0) + ".." + std::to_string(n1));
            const size_t esize = kind == GemmEpilogue::kQuantized ? 1 : 4;
            std::vector<uint8_t> want(static_cast<size_t>((rows + 2) * ld) * esize, 0xab), got = want;
            ref().gemm_epilogue(acc.data(), ld, rows, 2, n0, n1, e, want.data(), ld);
            t.gemm_epilogue(acc.data(), ld, rows, 2, n0, n1, e, got.data(), ld);
            ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size()));
          }
        }
  }
}

// conv_implicit_s32 (where a path has it): the rows it gathers from segments are built explicitly into a plain
// A matrix, whose reference GEMM is the expected result; column sub-ranges on step boundaries included. Rows
// come in runs (output rows of a convolution): runs that divide M or not, of one row, of fewer rows than a
// tile, of more rows than the kernel's row block, and one run over all rows.
TEST(GemmKernels, ImplicitConvolutionMatchesGatheredGemm) {
  struct Case {
    int64_t pixel_stride, segment_stride, segments, seg_len, M, N, run, run_stride;
  };
  const Case cases[] = {
      {64, 58 * 64, 3, 192, 131, 64, 131, 0},       // one run: a 3x3 over 64 channels, 58-pixel-wide image
      {64, 58 * 64, 3, 192, 168, 64, 56, 58 * 64},  // three output rows of 56 pixels (tiles 6 x 8 + 4 + 4)
      {8, 13 * 8 * 2, 3, 40, 50, 70, 9, 13 * 8},    // dilation 2 rows, KW = 5, two column panels, a partial run
      {4, 9 * 4, 2, 8, 7, 3, 7, 9 * 4},             // tiny: one partial row tile, N < one panel
      {256, 10 * 256, 3, 768, 20, 40, 2, 10 * 256}, // kernel rows longer than one K block (chunked); 2-row runs
      {12, 11 * 12, 1, 36, 45, 130, 1, 3 * 12},     // a single segment; runs of one row
      {16, 260 * 16, 3, 48, 450, 20, 223, 260 * 16},  // runs longer than the kernel's row block
      {64, 9 * 64, 3, 192, 49, 128, 7, 9 * 64},     // a 7 x 7 output: tiles of 4 + 3 rows
  };
  for (Isa isa : usable_isas()) {
    const KernelTable& t = *kernel_table(isa);
    if (t.conv_implicit_s32 == nullptr) continue;
    for (const Case& c : cases) {
      for (bool sg : {false, true}) {
        const int64_t K = c.segments * c.seg_len;
        auto row_at = [&](int64_t m) { return (m / c.run) * c.run_stride + (m % c.run) * c.pixel_stride; };
        const int64_t span = row_at(c.M - 1) + (c.segments - 1) * c.segment_stride + c.seg_len;
        GemmCase g(c.M, c.N, K, sg, static_cast<uint32_t>(K + c.M), Fill::kRandom, Fill::kRandom, 0, 3);
        std::vector<uint8_t> X(static_cast<size_t>(span));
        std::mt19937 rng(static_cast<uint32_t>(span));
        for (auto& v : X) v = static_cast<uint8_t>(rng());
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t sgm = 0; sgm < c.segments; ++sgm)
            for (int64_t i = 0; i < c.seg_len; ++i)
              g.A[m * g.lda + sgm * c.seg_len + i] = X[row_at(m) + sgm * c.segment_stride + i];
        const int64_t step = t.gemm_n_step;
        for (auto [n0, n1] : {std::pair<int64_t, int64_t>{0, c.N}, {step < c.N ? step : 0, c.N}}) {
          SCOPED_TRACE(gemm_trace(isa, c.M, c.N, K, sg, step, "implicit conv") + " cols " + std::to_string(n0) +
                       ".." + std::to_string(n1) + " run " + std::to_string(c.run));
          Aligned packed(t.gemm_packed_size(c.N, K));
          t.gemm_pack(g.W.data(), c.N, K, packed.p);
          std::vector<int32_t> C(c.M * g.ldc, kSentinel);
          t.conv_implicit_s32(X.data(), sg, c.pixel_stride, c.segment_stride, c.segments, c.seg_len, c.run,
                              c.run_stride, packed.p, c.M, c.N, n0, n1, C.data(), g.ldc);
          expect_same(C, expected_gemm(g, n0, n1), g.ldc);
        }
      }
    }
  }
}

// Grouped and strided convolutions through the driver (conv2d_nhwc, int32 output) on every path against the
// reference table's: the bundled grouped kernel where a path has one (16 / cout_g groups a vector, cin_g of 4
// to 32, the in-place reorder, strides, dilation, padding, channel counts that are not a multiple of 64, one
// and two threads), shapes it declines (cout_g 64, cin_g 6, groups not a multiple of the bundle), which take
// im2col, and strided one-group convolutions (implicit GEMM where KW * C % 4 == 0). Extreme inputs (all -128 /
// 255 against all -128 or 127 weights) included.
TEST(GemmKernels, ConvolutionDriverMatchesReference) {
  struct Case {
    int64_t batch, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  };
  const Case cases[] = {
      {2, 13, 11, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 16},   // cin_g 4, cout_g 4
      {1, 15, 14, 128, 128, 3, 3, 2, 2, 1, 1, 1, 1, 16}, // cin_g 8, cout_g 8, reordered, stride 2
      {1, 12, 9, 64, 32, 3, 3, 1, 1, 2, 2, 2, 2, 4},     // cin_g 16, cout_g 8, dilated
      {2, 10, 13, 48, 48, 3, 3, 1, 2, 1, 1, 1, 1, 3},    // cin_g 16, cout_g 16, 48 channels
      {1, 7, 30, 32, 16, 1, 3, 1, 1, 0, 1, 1, 1, 8},     // cin_g 4, cout_g 2, 30 columns
      {1, 9, 12, 64, 32, 3, 3, 2, 1, 0, 1, 1, 1, 2},     // cin_g 32, cout_g 16
      {1, 8, 8, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 2},      // cin_g 32, cout_g 32: two vectors a group
      {2, 7, 15, 48, 32, 3, 3, 1, 1, 1, 1, 1, 1, 2},     // cin_g 24 (6 quads), cout_g 16
      {1, 6, 7, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, 2},    // cout_g 64: declined
      {1, 6, 7, 18, 24, 3, 3, 1, 1, 1, 1, 1, 1, 3},      // cin_g 6: declined
      {1, 6, 7, 24, 24, 3, 3, 1, 1, 1, 1, 1, 1, 3},      // 3 groups of 8 outputs (bundles of 2): declined
      // One group, strided: the implicit-GEMM path where a path has one (KW * C % 4 == 0), im2col otherwise.
      {2, 17, 19, 16, 40, 3, 3, 2, 2, 1, 1, 1, 1, 1},
      {1, 15, 14, 32, 24, 1, 1, 2, 2, 0, 0, 1, 1, 1},
      {1, 19, 23, 8, 70, 3, 5, 2, 3, 1, 2, 2, 1, 1},
      {1, 23, 22, 4, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1},
      {1, 23, 22, 3, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1},     // 3 channels: im2col, or implicit with padded channels
      {1, 20, 21, 3, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1},    // the 3x3 stride-2 stem
      {2, 9, 11, 1, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1},     // one channel
      {1, 9, 13, 2, 16, 3, 5, 1, 2, 2, 1, 2, 1, 1},     // two channels, dilated rows
  };
  for (Isa isa : usable_isas()) {
    const KernelTable& t = *kernel_table(isa);
    for (const Case& c : cases) {
      const int64_t cin_g = c.cin / c.groups, cout_g = c.cout / c.groups, kg = c.kh * c.kw * cin_g;
      const int64_t oh = (c.h + 2 * c.ph - c.dh * (c.kh - 1) - 1) / c.sh + 1;
      const int64_t ow = (c.w + 2 * c.pw - c.dw * (c.kw - 1) - 1) / c.sw + 1;
      const ConvShape s{c.batch, c.h, c.w, c.cin, c.cout, c.kh, c.kw, oh, ow, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw,
                        c.groups};
      for (int fill = 0; fill < 3; ++fill) {
        for (bool sg : {true, false}) {
          std::mt19937 rng(static_cast<uint32_t>(c.cin * 131 + c.h + fill));
          std::vector<uint8_t> x(static_cast<size_t>(c.batch * c.h * c.w * c.cin));
          std::vector<int8_t> w(static_cast<size_t>(c.cout * kg));
          for (auto& v : x) v = fill == 0 ? static_cast<uint8_t>(rng()) : (sg ? 0x80 : 0xff);
          for (auto& v : w) v = fill == 0 ? static_cast<int8_t>(rng()) : fill == 1 ? -128 : 127;
          const int32_t pad = sg ? -7 : 200;
          std::vector<std::vector<int32_t>> results;
          // 1-3 input channels, one group, a kernel above 1x1: also with the weights' channels zero-padded to 4
          // (ConvShape::weight_c), on every path.
          const bool paddable = c.groups == 1 && c.cin < 4 && c.kh * c.kw > 1;
          for (int variant = 0; variant < (paddable ? 3 : 2); ++variant) {
            const KernelTable* table = variant == 0 ? &ref() : &t;
            const int64_t wc = variant == 2 ? 4 : cin_g, kgw = c.kh * c.kw * wc;
            std::vector<int8_t> wp(static_cast<size_t>(c.cout * kgw), 0);
            for (int64_t n = 0; n < c.cout; ++n)
              for (int64_t tap = 0; tap < c.kh * c.kw; ++tap)
                for (int64_t ch = 0; ch < cin_g; ++ch) wp[n * kgw + tap * wc + ch] = w[n * kg + tap * cin_g + ch];
            const int64_t gs = (table->gemm_packed_size(cout_g, kgw) + 63) / 64 * 64;
            Aligned packed(gs * c.groups);
            for (int64_t g = 0; g < c.groups; ++g)
              table->gemm_pack(wp.data() + g * cout_g * kgw, cout_g, kgw, static_cast<uint8_t*>(packed.p) + g * gs);
            ConvShape sv = s;
            if (variant == 2) sv.weight_c = 4;
            for (int threads : {1, 2}) {
              std::vector<int32_t> out(static_cast<size_t>(c.batch * oh * ow * c.cout), kSentinel);
              GemmEpilogue e;
              e.kind = GemmEpilogue::kInt32;
              conv2d_nhwc(*table, x.data(), sg, pad, packed.p, gs, sv, e, out.data(), threads);
              results.push_back(std::move(out));
            }
          }
          SCOPED_TRACE(std::string("isa=") + isa_name(isa) + " groups=" + std::to_string(c.groups) + " cin=" +
                       std::to_string(c.cin) + " cout=" + std::to_string(c.cout) + " fill=" + std::to_string(fill) +
                       " signed=" + std::to_string(sg));
          for (size_t i = 1; i < results.size(); ++i) ASSERT_EQ(results[0], results[i]) << "result " << i;
        }
      }
    }
  }
}

TEST(GemmKernels, ConcurrentDisjointBlocks) {
  // Two threads share one packed W and one C, each writing its own block (the driver's split: rows, and
  // columns on n_step boundaries).
  for (Isa isa : usable_isas()) {
    const KernelTable& t = *kernel_table(isa);
    const int64_t step = t.gemm_n_step;
    for (bool sg : {false, true}) {
      GemmCase g(300, step * 4 + 3, 300, sg, 99);
      SCOPED_TRACE(gemm_trace(isa, g.M, g.N, g.K, sg, step, "2 threads"));
      Aligned packed(t.gemm_packed_size(g.N, g.K));
      t.gemm_pack(g.W.data(), g.N, g.K, packed.p);
      std::vector<int32_t> C(g.M * g.ldc, kSentinel);
      const int64_t msplit = 137, nsplit = step * 2;
      auto block = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
        const auto* a = g.A.data() + m0 * g.lda;
        t.gemm_s32(a, sg, g.lda, packed.p, m1 - m0, g.N, g.K, n0, n1, C.data() + m0 * g.ldc, g.ldc);
      };
      for (int pass = 0; pass < 2; ++pass) {  // split by rows, then by columns
        std::fill(C.begin(), C.end(), kSentinel);
        std::thread t1 = pass == 0 ? std::thread(block, 0, msplit, 0, g.N) : std::thread(block, 0, g.M, 0, nsplit);
        std::thread t2 = pass == 0 ? std::thread(block, msplit, g.M, 0, g.N) : std::thread(block, 0, g.M, nsplit, g.N);
        t1.join();
        t2.join();
        expect_same(C, expected_gemm(g, 0, g.N), g.ldc);
      }
    }
  }
}

// ---- depthwise ----

struct DwCase {
  DepthwiseShape s;
  bool x_signed;
  int32_t pad_value;
  std::vector<uint8_t> x;
  std::vector<int8_t> w;
  std::string describe() const {
    std::ostringstream os;
    os << "N=" << s.batch << " H=" << s.height << " W=" << s.width << " C=" << s.channels << " k=" << s.kernel_h
       << "x" << s.kernel_w << " stride=" << s.stride_h << "," << s.stride_w << " pad=" << s.pad_h << ","
       << s.pad_w << " dil=" << s.dilation_h << "," << s.dilation_w << " out=" << s.out_h << "x" << s.out_w
       << " x_signed=" << x_signed << " pad_value=" << pad_value;
    return os.str();
  }
};

std::vector<int32_t> run_dw(const KernelTable& t, const DwCase& d, int64_t row_begin, int64_t row_end) {
  const DepthwiseShape& s = d.s;
  std::vector<int32_t> out(s.batch * s.out_h * s.out_w * s.channels, kSentinel);
  t.depthwise_conv_s32(d.x.data(), d.x_signed, d.pad_value, d.w.data(), out.data(), s, row_begin, row_end);
  return out;
}

TEST(DepthwiseKernels, RandomShapesMatchReference) {
  std::mt19937 rng(2024);
  const int64_t kernels[][2] = {{1, 1}, {3, 3}, {5, 5}, {3, 1}};
  const int64_t channels[] = {1, 3, 8, 17, 144};
  auto pick = [&](int lo, int hi) { return static_cast<int64_t>(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  std::uniform_int_distribution<int> byte(0, 255);
  int cases = 0;
  for (const auto& k : kernels) {
    for (int64_t C : channels) {
      for (bool sg : {false, true}) {
        for (int rep = 0; rep < 3; ++rep) {
          DwCase d;
          DepthwiseShape& s = d.s;
          s.kernel_h = k[0];
          s.kernel_w = k[1];
          s.channels = C;
          s.batch = pick(1, 2);
          s.stride_h = pick(1, 3);
          s.stride_w = pick(1, 3);
          s.pad_h = pick(0, 2);
          s.pad_w = pick(0, 2);
          s.dilation_h = pick(1, 2);
          s.dilation_w = pick(1, 2);
          // Input at least as large as the dilated kernel minus the padding, so there is >= 1 output.
          const int64_t ekh = s.dilation_h * (s.kernel_h - 1) + 1, ekw = s.dilation_w * (s.kernel_w - 1) + 1;
          s.height = ekh - 2 * s.pad_h + pick(0, 6);
          s.width = ekw - 2 * s.pad_w + pick(0, 6);
          if (s.height < 1) s.height = 1;
          if (s.width < 1) s.width = 1;
          s.out_h = (s.height + 2 * s.pad_h - ekh) / s.stride_h + 1;
          s.out_w = (s.width + 2 * s.pad_w - ekw) / s.stride_w + 1;
          if (s.out_h < 1 || s.out_w < 1) continue;
          d.x_signed = sg;
          d.pad_value = sg ? static_cast<int32_t>(pick(-128, 127)) : static_cast<int32_t>(pick(1, 255));
          if (d.pad_value == 0) d.pad_value = 3;
          d.x.resize(s.batch * s.height * s.width * C);
          d.w.resize(s.kernel_h * s.kernel_w * C);
          const bool extreme = rep == 2;  // all-largest magnitudes: -128 / 255 activations, -128 weights
          for (auto& v : d.x) v = extreme ? (sg ? 0x80 : 0xff) : static_cast<uint8_t>(byte(rng));
          for (auto& v : d.w) v = extreme ? -128 : static_cast<int8_t>(byte(rng) - 128);
          ++cases;
          const int64_t rows = s.batch * s.out_h;
          const std::vector<int32_t> want = run_dw(ref(), d, 0, rows);
          for (Isa isa : usable_isas()) {
            const KernelTable& t = *kernel_table(isa);
            SCOPED_TRACE("isa=" + std::string(isa_name(isa)) + " " + d.describe());
            expect_same(run_dw(t, d, 0, rows), want, C);
            // A row sub-range writes exactly its rows; two adjacent sub-ranges compose the whole.
            const int64_t mid = rows / 2, lo = rows / 3;
            std::vector<int32_t> part = run_dw(t, d, lo, mid + 1);
            std::vector<int32_t> part_want(want.size(), kSentinel);
            const int64_t row_elems = s.out_w * C;
            for (int64_t i = lo * row_elems; i < (mid + 1) * row_elems; ++i) part_want[i] = want[i];
            {
              SCOPED_TRACE("rows [" + std::to_string(lo) + ", " + std::to_string(mid + 1) + ")");
              expect_same(part, part_want, C);
            }
            std::vector<int32_t> both(want.size(), kSentinel);
            t.depthwise_conv_s32(d.x.data(), sg, d.pad_value, d.w.data(), both.data(), s, 0, mid);
            t.depthwise_conv_s32(d.x.data(), sg, d.pad_value, d.w.data(), both.data(), s, mid, rows);
            expect_same(both, want, C);
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 100);
}

TEST(DepthwiseKernels, AllPaddingAndAllInside) {
  // A 3x3 kernel on a 1x1 image with pad 1: 8 of 9 taps read pad_value; and a 1x1 kernel with no padding.
  for (Isa isa : usable_isas()) {
    const KernelTable& t = *kernel_table(isa);
    for (int64_t C : {int64_t{1}, int64_t{17}, int64_t{80}}) {
      for (bool sg : {false, true}) {
        DwCase d;
        d.s = DepthwiseShape{1, 1, 1, C, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
        d.x_signed = sg;
        d.pad_value = sg ? -128 : 255;
        d.x.assign(C, sg ? 0x7f : 0x00);
        d.w.assign(9 * C, -128);
        for (int64_t c = 0; c < C; ++c) d.w[4 * C + c] = static_cast<int8_t>(c % 256 - 128);
        SCOPED_TRACE("isa=" + std::string(isa_name(isa)) + " " + d.describe());
        expect_same(run_dw(t, d, 0, 1), run_dw(ref(), d, 0, 1), C);
      }
    }
  }
}

TEST(DepthwiseKernels, LargeChannelsAndWidth) {
  // MobileNet/EfficientNet-like layers (wide rows, many channels, channel tails of every size class, stride 2), kernel
  // rows whose input rows collide modulo KH (dilation 3 with a 3-tall kernel), tall kernels, and a pad_value
  // outside int16 (the int32 contract), each over the whole range and over split row ranges.
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> byte(0, 255);
  struct Geo {
    int64_t n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw;
  };
  const Geo geos[] = {
      {1, 14, 56, 144, 3, 3, 1, 1, 1, 1, 1, 1}, {1, 9, 57, 160, 3, 3, 2, 2, 1, 1, 1, 1},
      {2, 7, 40, 200, 5, 5, 1, 1, 2, 2, 1, 1},  {1, 11, 33, 33, 3, 3, 1, 1, 3, 3, 3, 3},
      {1, 8, 29, 96, 7, 7, 1, 2, 3, 3, 1, 1},   {1, 20, 23, 48, 17, 1, 1, 1, 8, 0, 1, 1},
      {1, 6, 70, 31, 1, 4, 1, 3, 0, 2, 1, 2},
      // Strides whose taps all start on multiples of the stride (the quad rows store only those positions):
      // stride 4 with two quads per kernel row, and stride 2 with dilation 2.
      {1, 7, 45, 72, 3, 5, 1, 4, 1, 2, 1, 1},   {1, 8, 50, 40, 5, 5, 2, 2, 2, 2, 1, 2},
  };
  for (const Geo& g : geos) {
    for (bool sg : {false, true}) {
      for (int32_t pv : {sg ? -7 : 131, 40000}) {
        DwCase d;
        DepthwiseShape& s = d.s;
        s = DepthwiseShape{g.n, g.h, g.w, g.c, g.kh, g.kw, 0, 0, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw};
        s.out_h = (g.h + 2 * g.ph - (g.dh * (g.kh - 1) + 1)) / g.sh + 1;
        s.out_w = (g.w + 2 * g.pw - (g.dw * (g.kw - 1) + 1)) / g.sw + 1;
        ASSERT_GE(s.out_h, 1);
        ASSERT_GE(s.out_w, 1);
        d.x_signed = sg;
        d.pad_value = pv;
        d.x.resize(s.batch * s.height * s.width * s.channels);
        d.w.resize(s.kernel_h * s.kernel_w * s.channels);
        for (auto& v : d.x) v = static_cast<uint8_t>(byte(rng));
        for (auto& v : d.w) v = static_cast<int8_t>(byte(rng) - 128);
        const int64_t rows = s.batch * s.out_h;
        const std::vector<int32_t> want = run_dw(ref(), d, 0, rows);
        for (Isa isa : usable_isas()) {
          const KernelTable& t = *kernel_table(isa);
          SCOPED_TRACE("isa=" + std::string(isa_name(isa)) + " " + d.describe());
          expect_same(run_dw(t, d, 0, rows), want, s.channels);
          std::vector<int32_t> pieces(want.size(), kSentinel);
          for (int64_t r = 0; r < rows; r += 3)
            t.depthwise_conv_s32(d.x.data(), sg, pv, d.w.data(), pieces.data(), s, r, std::min(rows, r + 3));
          expect_same(pieces, want, s.channels);
        }
      }
    }
  }
}

}  // namespace
}  // namespace pyslim
