// Native tests for the FPGM distance sums: every usable path's fpgm_pair_block (through the driver, with 1
// and 3 threads, and called directly on diagonal / off-diagonal / edge blocks) against a long-double
// reference, relative error <= 1e-6 per score (the bound derived in kernels.h is 5.4e-7). ISA-agnostic:
// AVX2 / AVX-512 on x86, NEON under qemu on aarch64, the reference everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "pyslim/fpgm.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace {

constexpr double kRelTol = 1e-6;

// score_i = sum_{j != i} ||w_i - w_j|| in long double (exact differences, ~2^-64 rounding per operation).
std::vector<double> exact_scores(const std::vector<float>& W, int64_t C, int64_t K, int64_t ld) {
  std::vector<long double> s(static_cast<size_t>(C), 0.0L);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = i + 1; j < C; ++j) {
      long double acc = 0.0L;
      for (int64_t k = 0; k < K; ++k) {
        const long double d = static_cast<long double>(W[i * ld + k]) - static_cast<long double>(W[j * ld + k]);
        acc += d * d;
      }
      const long double dist = std::sqrt(acc);
      s[i] += dist;
      s[j] += dist;
    }
  return std::vector<double>(s.begin(), s.end());
}

enum class Fill { kGaussian, kNearDuplicates, kWideRange };

std::vector<float> make_weights(int64_t C, int64_t K, int64_t ld, Fill fill, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> W(static_cast<size_t>(C * ld), std::nanf(""));  // padding past K must never be read
  std::vector<float> base(static_cast<size_t>(K));
  for (auto& v : base) v = g(rng);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t k = 0; k < K; ++k) {
      float v = g(rng);
      if (fill == Fill::kNearDuplicates) v = base[k] + 1e-3f * v;  // rows close together: cancellation-prone
      if (fill == Fill::kWideRange) v = std::ldexp(v, static_cast<int>(rng() % 41) - 20);
      W[i * ld + k] = v;
    }
  return W;
}

std::string trace(Isa isa, int64_t C, int64_t K, int64_t ld, int threads, const char* fill) {
  std::ostringstream os;
  os << "isa=" << isa_name(isa) << " C x K = " << C << " x " << K << " ld=" << ld << " threads=" << threads
     << " fill=" << fill;
  return os.str();
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, const std::string& where) {
  ASSERT_EQ(got.size(), want.size()) << where;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    ASSERT_LE(err, kRelTol * std::fabs(want[i])) << where << " row " << i << " got " << got[i] << " want "
                                                 << want[i];
  }
}

TEST(FpgmKernels, EveryPathMatchesLongDoubleReference) {
  const int64_t sizes[] = {1, 2, 3, 17, 64, 65, 577};
  const struct {
    Fill fill;
    const char* name;
  } fills[] = {{Fill::kGaussian, "gaussian"}, {Fill::kNearDuplicates, "near-duplicates"}, {Fill::kWideRange, "wide"}};
  for (Isa isa : usable_isas()) {
    const KernelTable* kt = kernel_table(isa);
    ASSERT_NE(kt, nullptr);
    ASSERT_NE(kt->fpgm_pair_block, nullptr) << isa_name(isa);
    uint32_t seed = 1;
    for (int64_t C : sizes)
      for (int64_t K : sizes) {
        if (C * C * K > int64_t{70} * 1000 * 1000) continue;  // keep the long-double reference fast (qemu)
        for (const auto& f : fills) {
          if (f.fill != Fill::kGaussian && C > 65) continue;
          const int64_t ld = (C + K) % 2 ? K + 3 : K;  // a padded row stride on some cases
          const auto W = make_weights(C, K, ld, f.fill, seed++);
          const auto want = exact_scores(W, C, K, ld);
          for (int threads : {1, 3}) {
            std::vector<double> got(static_cast<size_t>(C), -1.0);
            fpgm_scores(*kt, W.data(), C, K, ld, got.data(), threads);
            expect_close(got, want, trace(isa, C, K, ld, threads, f.name));
          }
        }
      }
  }
}

TEST(FpgmKernels, LargeRowsAcrossSeveralTiles) {
  // K = 4608 gives 28-row tiles (fpgm_block_rows): 67 rows span 3 tile rows (the last one short), 6 tiles,
  // and enough work (~10M pair-elements) for the driver to use up to 4 tasks with their partial vectors.
  const int64_t C = 67, K = 4608;
  EXPECT_LT(fpgm_block_rows(K), C);
  const auto W = make_weights(C, K, K, Fill::kGaussian, 99);
  const auto want = exact_scores(W, C, K, K);
  for (Isa isa : usable_isas())
    for (int threads : {1, 2, 4}) {
      std::vector<double> got(static_cast<size_t>(C));
      fpgm_scores(*kernel_table(isa), W.data(), C, K, K, got.data(), threads);
      expect_close(got, want, trace(isa, C, K, K, threads, "gaussian"));
    }
}

TEST(FpgmKernels, BlockCallsVisitEachPairOnceAndOnlyTheirRows) {
  // Direct kernel calls: a diagonal block and an off-diagonal block, on a partial-sum vector with sentinels
  // outside the rows they touch.
  const int64_t C = 23, K = 37;
  const auto W = make_weights(C, K, K, Fill::kGaussian, 7);
  for (Isa isa : usable_isas()) {
    const KernelTable& kt = *kernel_table(isa);
    std::vector<double> sums(static_cast<size_t>(C), 0.0), want(static_cast<size_t>(C), 0.0);
    kt.fpgm_pair_block(W.data(), K, K, 3, 10, 3, 10, sums.data());     // pairs inside rows 3..9
    kt.fpgm_pair_block(W.data(), K, K, 3, 10, 15, 21, sums.data());    // rows 3..9 x rows 15..20
    kt.fpgm_pair_block(W.data(), K, K, 15, 21, 3, 10, sums.data());    // j < i everywhere: adds nothing
    for (int64_t i = 3; i < 10; ++i)
      for (int64_t j = 3; j < 21; ++j) {
        if ((j < 10 && j <= i) || (j >= 10 && j < 15)) continue;
        long double acc = 0.0L;
        for (int64_t k = 0; k < K; ++k) {
          const long double d = static_cast<long double>(W[i * K + k]) - W[j * K + k];
          acc += d * d;
        }
        want[i] += static_cast<double>(std::sqrt(acc));
        want[j] += static_cast<double>(std::sqrt(acc));
      }
    for (int64_t r = 0; r < C; ++r) {
      if (want[r] == 0.0) {
        EXPECT_EQ(sums[r], 0.0) << isa_name(isa) << " row " << r << " must not be touched";
      } else {
        EXPECT_LE(std::fabs(sums[r] - want[r]), kRelTol * want[r]) << isa_name(isa) << " row " << r;
      }
    }
  }
}

TEST(FpgmKernels, IdenticalRowsGiveZeroAndZeroWidthIsZero) {
  for (Isa isa : usable_isas()) {
    const KernelTable& kt = *kernel_table(isa);
    std::vector<float> W(5 * 33, 1.25f);
    std::vector<double> got(5, -1.0);
    fpgm_scores(kt, W.data(), 5, 33, 33, got.data(), 2);
    for (double v : got) EXPECT_EQ(v, 0.0) << isa_name(isa);
    fpgm_scores(kt, W.data(), 5, 0, 0, got.data(), 2);  // K == 0: every distance is 0
    for (double v : got) EXPECT_EQ(v, 0.0) << isa_name(isa);
    fpgm_scores(kt, W.data(), 0, 33, 33, got.data(), 2);  // C == 0: nothing to do, nothing written
  }
}

}  // namespace
}  // namespace pyslim
