// Native parity tests: every usable SIMD path's micro-kernels against the reference table, the
// whole-tensor drivers against plain per-element loops and the ISA names.
//
// Float and integer outputs must be bit-identical to the reference (NaN matches any NaN, -0 matches +0).
// The grad-scale / grad-zero-point sums of a broadcast span may differ only by summation order; their
// tolerance is derived from the contract in kernels.h: float lane partial sums over at most
// kMaxFloatPartial elements, each addition off by at most FLT_EPSILON/2 of the running magnitude, so
//   |got - want| <= kMaxFloatPartial * FLT_EPSILON * sum_i |g_i * c_i| (+ a tiny absolute term).
// Per-element sums (param_stride 1) are single double additions and must match exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "pyslim/fake_quant.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"
#include "pyslim/thread_pool.h"

namespace pyslim {
namespace {

const int64_t kSizes[] = {0, 1, 2, 3, 7, 15, 16, 17, 31, 63, 64, 65, 127, 1000, 4097};
const RoundMode kModes[] = {RoundMode::kHalfToEven, RoundMode::kHalfAwayFromZero};
const GradMask kMasks[] = {GradMask::kNone, GradMask::kInclusive, GradMask::kStrict};
// Broadcast scales: ordinary, powers of two (exact reciprocals, so exact ties), PaddleSlim's guarded
// tiny range, a denormal and zero.
const float kScales[] = {1.0f, 0.25f, 0.0372f, 3.5f, 1e-31f, 1e-40f, 0.0f};

const KernelTable& ref() { return *kernel_table(Isa::kReference); }

std::vector<Isa> simd_isas() {
  std::vector<Isa> out;
  for (Isa isa : usable_isas())
    if (isa != Isa::kReference) out.push_back(isa);
  return out;
}

const char* mode_name(RoundMode m) { return m == RoundMode::kHalfToEven ? "half_to_even" : "half_away"; }
const char* mask_name(GradMask m) {
  return m == GradMask::kNone ? "none" : m == GradMask::kInclusive ? "inclusive" : "strict";
}

std::string trace(Isa isa, int64_t n, int64_t stride, const char* what) {
  std::ostringstream os;
  os << "isa=" << isa_name(isa) << " n=" << n << " param_stride=" << stride << " " << what;
  return os.str();
}

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}
uint64_t bits_of(double d) {
  uint64_t b;
  std::memcpy(&b, &d, sizeof(b));
  return b;
}

template <typename F>
bool same_value(F a, F b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  if (a == 0 && b == 0) return true;  // -0 == +0
  return bits_of(a) == bits_of(b);
}

std::string describe(float v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g (0x%08" PRIx32 ")", static_cast<double>(v), bits_of(v));
  return buf;
}
std::string describe(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}
template <typename I>
std::string describe(I v) {
  return std::to_string(static_cast<long long>(v));
}

// Element-wise exact comparison; reports the first mismatch with its input.
template <typename T>
::testing::AssertionResult all_same(const std::vector<T>& got, const std::vector<T>& want, const float* x = nullptr) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    bool ok;
    if constexpr (std::is_floating_point<T>::value) {
      ok = same_value(got[i], want[i]);
    } else {
      ok = got[i] == want[i];
    }
    if (!ok) {
      auto f = ::testing::AssertionFailure();
      f << "index " << i << ": got " << describe(got[i]) << ", reference " << describe(want[i]);
      if (x) f << ", x = " << describe(x[i]);
      return f;
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult sum_close(double got, double want, double abs_sum) {
  if (std::isnan(got) && std::isnan(want)) return ::testing::AssertionSuccess();
  if (std::isinf(want) || std::isinf(got)) {
    if (got == want) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << ", reference " << want;
  }
  const double tol = static_cast<double>(kMaxFloatPartial) * FLT_EPSILON * abs_sum + 1e-30;
  if (std::fabs(got - want) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << describe(got) << ", reference " << describe(want) << ", |diff| "
                                       << std::fabs(got - want) << " > tolerance " << tol;
}

// ---------------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------------

int64_t g_exact_ties = 0;  // how many generated x landed exactly on a .5 of the quantization grid

struct GenOptions {
  bool nan = true;
  bool inf = true;
};

// One x for scale s and grid multiplier mult (u = x * mult is the value that gets rounded); `range` is the
// grid's half width (bin for symmetric, qmax - qmin for affine).
float make_value(std::mt19937& rng, float s, float mult, int range, const GenOptions& opt) {
  std::uniform_int_distribution<int> pick(0, 23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> sign(0, 1);
  const float sg = sign(rng) ? -1.0f : 1.0f;
  const float safe_mult = (std::isfinite(mult) && mult != 0.0f) ? mult : 1.0f;
  std::uniform_int_distribution<int> k(-range - 1, range);
  switch (pick(rng)) {
    case 0: {  // exact .5 tie on the grid, searched among neighbours of (k + 0.5) / mult
      const float want = static_cast<float>(k(rng)) + 0.5f;
      float x = want / safe_mult;
      const float cands[] = {x, std::nextafter(x, INFINITY), std::nextafter(x, -INFINITY)};
      for (float c : cands)
        if (c * safe_mult == want) {
          ++g_exact_ties;
          return c;
        }
      return x;
    }
    case 1: return static_cast<float>(k(rng)) / safe_mult;                             // on the grid
    case 2: return (static_cast<float>(k(rng)) + 0.49999997f) / safe_mult;             // just under a tie
    case 3: return sg * s;                                                            // the clip boundary
    case 4: return std::nextafter(sg * s, 0.0f);
    case 5: return std::nextafter(sg * s, sg * INFINITY);
    case 6: return sg * (sign(rng) ? 1e30f : FLT_MAX);                                 // huge
    case 7: return sg * (sign(rng) ? 1e-30f : FLT_MIN);                                // tiny
    case 8: return sg * (sign(rng) ? 1e-40f : std::numeric_limits<float>::denorm_min());  // denormal
    case 9: return opt.inf ? sg * INFINITY : sg * 2.0f * s;
    case 10: return opt.nan ? std::copysign(std::nanf(""), sg) : sg * 0.5f * s;
    case 11: return sg * 0.0f;
    case 12: return 0.49999997f * sg / safe_mult;
    case 13: return static_cast<float>(range) * sg * 4.0f / safe_mult;  // far outside the grid
    default: return normal(rng) * (s != 0.0f && std::isfinite(s) ? s : 1.0f) * 1.3f;
  }
}

// Per-element scales: ordinary values plus the awkward ones.
std::vector<float> make_scales(std::mt19937& rng, int64_t n) {
  std::uniform_real_distribution<float> u(1e-3f, 4.0f);
  std::uniform_int_distribution<int> pick(0, 15);
  std::vector<float> s(static_cast<size_t>(n));
  for (auto& v : s) {
    const int p = pick(rng);
    v = p == 0 ? 0.0f : p == 1 ? 1e-31f : p == 2 ? 1e-40f : p == 3 ? 0.25f : p == 4 ? 1.0f : u(rng);
  }
  return s;
}

std::vector<float> make_grads(std::mt19937& rng, int64_t n, bool special) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 19);
  std::vector<float> g(static_cast<size_t>(n));
  for (auto& v : g) {
    const int p = pick(rng);
    if (p == 0) {
      v = 0.0f;
    } else if (special && p == 1) {
      v = INFINITY;
    } else if (special && p == 2) {
      v = std::nanf("");
    } else if (special && p == 3) {
      v = -1e-40f;
    } else {
      v = normal(rng);
    }
  }
  return g;
}

float sym_mult(float s, int32_t bin) {  // the reference's m = bin * paddle_inverse(s)
  return static_cast<float>(bin) * paddle_inverse(s);
}

// ---------------------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------------------

TEST(FakeQuantKernels, AbsMaxMatchesReference) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kSizes) {
      for (int variant = 0; variant < 4; ++variant) {
        SCOPED_TRACE(trace(isa, n, 0, "abs_max") + " variant=" + std::to_string(variant));
        std::mt19937 rng(static_cast<uint32_t>(n * 7 + variant));
        GenOptions opt;
        opt.nan = variant == 0;
        opt.inf = variant <= 1;
        std::vector<float> x(static_cast<size_t>(n));
        for (auto& v : x) v = make_value(rng, 1.0f, 7.0f, 7, opt);
        if (variant == 3)  // ordinary data only, the maximum at the very end (a tail lane)
          for (int64_t i = 0; i < n; ++i) x[i] = (i == n - 1) ? -9.5f : std::sin(static_cast<float>(i));
        const float want = ref().abs_max(x.data(), n);
        const float got = k.abs_max(x.data(), n);
        EXPECT_TRUE(same_value(got, want)) << "got " << describe(got) << ", reference " << describe(want);
      }
    }
  }
}

TEST(FakeQuantKernels, RangeWithZeroMatchesReference) {
  for (Isa isa : usable_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kSizes) {
      for (int variant = 0; variant < 5; ++variant) {
        SCOPED_TRACE(trace(isa, n, 0, "range_with_zero") + " variant=" + std::to_string(variant));
        std::mt19937 rng(static_cast<uint32_t>(n * 13 + variant));
        GenOptions opt;
        opt.nan = variant == 0;
        opt.inf = variant <= 1;
        std::vector<float> x(static_cast<size_t>(n));
        for (auto& v : x) v = make_value(rng, 1.0f, 7.0f, 7, opt);
        if (variant == 2)  // all positive: lo stays 0
          for (auto& v : x) v = std::fabs(v) + 0.5f;
        if (variant == 3)  // all negative: hi stays 0
          for (auto& v : x) v = -std::fabs(v) - 0.5f;
        if (variant == 4 && n > 0) {  // extremes in the very last (tail) lane, a NaN there when n is odd
          for (int64_t i = 0; i < n; ++i) x[i] = std::sin(static_cast<float>(i));
          x[n - 1] = (n % 2) ? std::nanf("") : -9.5f;
          if (n > 1) x[n - 2] = 8.25f;
        }
        // The plain definition, checked against the reference first.
        bool nan = false;
        float lo = 0.0f, hi = 0.0f;
        for (float v : x) {
          nan = nan || std::isnan(v);
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
        float want_lo, want_hi, got_lo, got_hi;
        ref().range_with_zero(x.data(), n, &want_lo, &want_hi);
        k.range_with_zero(x.data(), n, &got_lo, &got_hi);
        if (nan) {
          EXPECT_TRUE(std::isnan(want_lo) && std::isnan(want_hi));
          EXPECT_TRUE(std::isnan(got_lo) && std::isnan(got_hi)) << describe(got_lo) << " " << describe(got_hi);
        } else {
          EXPECT_EQ(want_lo, lo);
          EXPECT_EQ(want_hi, hi);
          EXPECT_EQ(got_lo, want_lo);  // == : a zero may come back with either sign
          EXPECT_EQ(got_hi, want_hi);
        }
      }
    }
  }
}

// Spans of 8 MiB and more are written with non-temporal stores on the AVX-512 paths (when the output is 64-byte
// aligned): the values must stay bit-identical to the reference, for aligned (streamed) and misaligned (regular
// stores) outputs, with a vector tail, and in place for apply_grad_mask.
TEST(FakeQuantKernels, StreamedLargeSpansMatchReference) {
  const int64_t n = (int64_t{8} << 20) / 4 + 37;
  struct Buf {
    float* base;
    explicit Buf(int64_t count) : base(static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>((count + 32) * 4)))) {}
    ~Buf() { std::free(base); }
  };
  Buf xb(n), gb(n), want_b(n), got_b(n);
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t i = 0; i < n + 16; ++i) {
    xb.base[i] = normal(rng);
    gb.base[i] = normal(rng);
  }
  const std::vector<uint8_t> zero_bits(static_cast<size_t>(n / 8 + 8), 0);
  const float s_sym = 4.0f, s_aff = 0.05f;
  const int32_t zp = 3;
  for (Isa isa : usable_isas()) {
    if (isa != Isa::kAvx512 && isa != Isa::kAvx512Vnni) continue;
    const KernelTable& k = *kernel_table(isa);
    for (int64_t offset : {0, 1}) {  // offset 1: a misaligned output takes the regular stores
      SCOPED_TRACE(std::string("isa=") + isa_name(isa) + " offset=" + std::to_string(offset));
      const float* x = xb.base + offset;
      const float* g = gb.base + offset;
      float* want = want_b.base + offset;
      float* got = got_b.base + offset;
      auto same = [&](const char* what) {
        EXPECT_EQ(0, std::memcmp(want, got, static_cast<size_t>(n) * 4)) << what;
      };
      ref().fake_quant_symmetric(x, want, n, &s_sym, 0, 127, RoundMode::kHalfToEven);
      k.fake_quant_symmetric(x, got, n, &s_sym, 0, 127, RoundMode::kHalfToEven);
      same("fake_quant_symmetric");
      std::vector<uint8_t> want_bits = zero_bits, got_bits = zero_bits;
      ref().fake_quant_symmetric_mask(x, want, want_bits.data(), 0, n, &s_sym, 0, 127, RoundMode::kHalfToEven,
                                      GradMask::kStrict);
      k.fake_quant_symmetric_mask(x, got, got_bits.data(), 0, n, &s_sym, 0, 127, RoundMode::kHalfToEven,
                                  GradMask::kStrict);
      same("fake_quant_symmetric_mask");
      EXPECT_EQ(want_bits, got_bits);
      double acc_want = 0.0, acc_got = 0.0;
      ref().fake_quant_symmetric_backward(x, g, want, n, &s_sym, 0, 127, RoundMode::kHalfToEven,
                                          GradMask::kInclusive, &acc_want);
      k.fake_quant_symmetric_backward(x, g, got, n, &s_sym, 0, 127, RoundMode::kHalfToEven, GradMask::kInclusive,
                                      &acc_got);
      same("fake_quant_symmetric_backward");
      ref().fake_quant_affine(x, want, n, &s_aff, &zp, 0, -128, 127, RoundMode::kHalfToEven);
      k.fake_quant_affine(x, got, n, &s_aff, &zp, 0, -128, 127, RoundMode::kHalfToEven);
      same("fake_quant_affine");
      want_bits = got_bits = zero_bits;
      ref().fake_quant_affine_mask(x, want, want_bits.data(), 0, n, &s_aff, &zp, 0, -128, 127,
                                   RoundMode::kHalfToEven);
      k.fake_quant_affine_mask(x, got, got_bits.data(), 0, n, &s_aff, &zp, 0, -128, 127, RoundMode::kHalfToEven);
      same("fake_quant_affine_mask");
      EXPECT_EQ(want_bits, got_bits);
      ref().fake_quant_affine_backward(x, g, want, n, &s_aff, &zp, 0, -128, 127, RoundMode::kHalfToEven,
                                       GradMask::kInclusive, nullptr, nullptr);
      k.fake_quant_affine_backward(x, g, got, n, &s_aff, &zp, 0, -128, 127, RoundMode::kHalfToEven,
                                   GradMask::kInclusive, nullptr, nullptr);
      same("fake_quant_affine_backward");
      ref().apply_grad_mask(g, want_bits.data(), 0, want, n);
      std::memcpy(got, g, static_cast<size_t>(n) * 4);
      k.apply_grad_mask(got, got_bits.data(), 0, got, n);  // in place
      same("apply_grad_mask (in place)");
    }
  }
}

TEST(FakeQuantKernels, AbsMaxAccumulateMatchesReference) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kSizes) {
      SCOPED_TRACE(trace(isa, n, 1, "abs_max_accumulate"));
      std::mt19937 rng(static_cast<uint32_t>(n + 11));
      std::vector<float> x(static_cast<size_t>(n)), acc(static_cast<size_t>(n));
      for (auto& v : x) v = make_value(rng, 1.0f, 3.0f, 3, GenOptions{});
      for (auto& v : acc) v = make_value(rng, 1.0f, 3.0f, 3, GenOptions{});  // includes NaN and negatives
      std::vector<float> want = acc, got = acc;
      ref().abs_max_accumulate(x.data(), n, want.data());
      k.abs_max_accumulate(x.data(), n, got.data());
      EXPECT_TRUE(all_same(got, want, x.data()));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Symmetric
// ---------------------------------------------------------------------------------------------------------

// Inputs of one symmetric case: x, scale (1 or n values), bin.
struct SymCase {
  std::vector<float> x, scale;
  int32_t bin;
};

SymCase make_sym_case(int64_t n, int64_t stride, int bits, float s0, uint32_t seed) {
  std::mt19937 rng(seed);
  SymCase c;
  c.bin = (1 << (bits - 1)) - 1;
  c.scale = stride ? make_scales(rng, n) : std::vector<float>{s0};
  c.x.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float s = c.scale[stride ? i : 0];
    c.x[i] = make_value(rng, s, sym_mult(s, c.bin), c.bin, GenOptions{});
  }
  return c;
}

// Runs fn(case, stride, label) over every size, stride, bit width and (for broadcast) scale.
template <typename Fn>
void for_sym_cases(Fn&& fn) {
  for (int64_t n : kSizes)
    for (int64_t stride : {0, 1})
      for (int bits = 2; bits <= 16; ++bits) {
        const int num_scales = stride ? 1 : static_cast<int>(sizeof(kScales) / sizeof(kScales[0]));
        for (int si = 0; si < num_scales; ++si) {
          const uint32_t seed = static_cast<uint32_t>(n * 1000 + bits * 10 + si + stride * 7);
          SymCase c = make_sym_case(n, stride, bits, kScales[si], seed);
          std::string label = "bits=" + std::to_string(bits) + " scale=" + (stride ? "per-element" : describe(kScales[si]));
          fn(c, n, stride, label);
        }
      }
}

TEST(FakeQuantKernels, SymmetricForwardMatchesReference) {
  g_exact_ties = 0;
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for_sym_cases([&](const SymCase& c, int64_t n, int64_t stride, const std::string& label) {
      for (RoundMode mode : kModes) {
        SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " " + label);
        std::vector<float> want(static_cast<size_t>(n), -7.0f), got(static_cast<size_t>(n), 7.0f);
        ref().fake_quant_symmetric(c.x.data(), want.data(), n, c.scale.data(), stride, c.bin, mode);
        k.fake_quant_symmetric(c.x.data(), got.data(), n, c.scale.data(), stride, c.bin, mode);
        ASSERT_TRUE(all_same(got, want, c.x.data()));
      }
    });
  }
  if (!simd_isas().empty()) {
    EXPECT_GT(g_exact_ties, 1000) << "the inputs should contain exact .5 ties";
  }
}

// sum_i |g_i * c_i| of the reference's scale-gradient terms, one element at a time.
double sym_abs_sum(const SymCase& c, const std::vector<float>& g, RoundMode mode) {
  double total = 0.0;
  for (size_t i = 0; i < c.x.size(); ++i) {
    double one = 0.0;
    float gx;
    ref().fake_quant_symmetric_backward(&c.x[i], &g[i], &gx, 1, &c.scale[0], 0, c.bin, mode, GradMask::kNone, &one);
    total += std::fabs(one);
  }
  return total;
}

TEST(FakeQuantKernels, SymmetricBackwardMatchesReference) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for_sym_cases([&](const SymCase& c, int64_t n, int64_t stride, const std::string& label) {
      std::mt19937 rng(static_cast<uint32_t>(n + stride));
      const std::vector<float> g = make_grads(rng, n, /*special=*/stride == 1);
      for (RoundMode mode : kModes) {
        const double abs_sum = stride ? 0.0 : sym_abs_sum(c, g, mode);
        for (GradMask mask : kMasks) {
          for (bool with_sum : {false, true}) {
            SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " mask=" + mask_name(mask) + " " + label +
                         (with_sum ? " with grad_scale" : ""));
            std::vector<float> want(static_cast<size_t>(n), -7.0f), got(static_cast<size_t>(n), 7.0f);
            const size_t acc_n = stride ? static_cast<size_t>(n) : 1;
            std::vector<double> acc_want(acc_n, 0.5), acc_got(acc_n, 0.5);
            ref().fake_quant_symmetric_backward(c.x.data(), g.data(), want.data(), n, c.scale.data(), stride, c.bin,
                                                mode, mask, with_sum ? acc_want.data() : nullptr);
            k.fake_quant_symmetric_backward(c.x.data(), g.data(), got.data(), n, c.scale.data(), stride, c.bin, mode,
                                            mask, with_sum ? acc_got.data() : nullptr);
            ASSERT_TRUE(all_same(got, want, c.x.data()));
            if (stride) {
              ASSERT_TRUE(all_same(acc_got, acc_want, c.x.data()));
            } else {
              ASSERT_TRUE(sum_close(acc_got[0], acc_want[0], abs_sum));
            }
          }
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Affine and real quantization
// ---------------------------------------------------------------------------------------------------------

struct AffineCase {
  std::vector<float> x, scale;
  std::vector<int32_t> zp;
  int32_t qmin, qmax;
};

AffineCase make_affine_case(int64_t n, int64_t stride, int32_t qmin, int32_t qmax, float s0, uint32_t seed) {
  std::mt19937 rng(seed);
  AffineCase c;
  c.qmin = qmin;
  c.qmax = qmax;
  const int64_t np = stride ? n : 1;
  c.scale = stride ? make_scales(rng, n) : std::vector<float>{s0};
  std::uniform_int_distribution<int32_t> zd(qmin, qmax);
  c.zp.resize(static_cast<size_t>(std::max<int64_t>(np, 1)));
  for (auto& z : c.zp) z = zd(rng);
  c.x.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float s = c.scale[stride ? i : 0];
    c.x[i] = make_value(rng, s, 1.0f / s, (qmax - qmin) / 2 + 1, GenOptions{});
  }
  return c;
}

// Signed and unsigned ranges for every bit width in [lo_bits, hi_bits].
std::vector<std::pair<int32_t, int32_t>> ranges(int lo_bits, int hi_bits) {
  std::vector<std::pair<int32_t, int32_t>> out;
  for (int b = lo_bits; b <= hi_bits; ++b) {
    out.emplace_back(-(1 << (b - 1)), (1 << (b - 1)) - 1);
    out.emplace_back(0, (1 << b) - 1);
  }
  return out;
}

template <typename Fn>
void for_affine_cases(int lo_bits, int hi_bits, Fn&& fn) {
  const auto rs = ranges(lo_bits, hi_bits);
  for (int64_t n : kSizes)
    for (int64_t stride : {0, 1})
      for (size_t ri = 0; ri < rs.size(); ++ri) {
        const int num_scales = stride ? 1 : static_cast<int>(sizeof(kScales) / sizeof(kScales[0]));
        for (int si = 0; si < num_scales; ++si) {
          const uint32_t seed = static_cast<uint32_t>(n * 977 + ri * 13 + si + stride * 5);
          AffineCase c = make_affine_case(n, stride, rs[ri].first, rs[ri].second, kScales[si], seed);
          const std::string label = "q=[" + std::to_string(c.qmin) + "," + std::to_string(c.qmax) + "] zp0=" +
                                    std::to_string(c.zp[0]) + " scale=" +
                                    (stride ? std::string("per-element") : describe(kScales[si]));
          fn(c, n, stride, label);
        }
      }
}

TEST(FakeQuantKernels, AffineForwardMatchesReference) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for_affine_cases(2, 16, [&](const AffineCase& c, int64_t n, int64_t stride, const std::string& label) {
      for (RoundMode mode : kModes) {
        SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " " + label);
        std::vector<float> want(static_cast<size_t>(n), -7.0f), got(static_cast<size_t>(n), 7.0f);
        ref().fake_quant_affine(c.x.data(), want.data(), n, c.scale.data(), c.zp.data(), stride, c.qmin, c.qmax, mode);
        k.fake_quant_affine(c.x.data(), got.data(), n, c.scale.data(), c.zp.data(), stride, c.qmin, c.qmax, mode);
        ASSERT_TRUE(all_same(got, want, c.x.data()));
      }
    });
  }
}

void affine_abs_sums(const AffineCase& c, const std::vector<float>& g, RoundMode mode, double* abs_s,
                     double* abs_z) {
  *abs_s = *abs_z = 0.0;
  for (size_t i = 0; i < c.x.size(); ++i) {
    double s = 0.0, z = 0.0;
    float gx;
    ref().fake_quant_affine_backward(&c.x[i], &g[i], &gx, 1, &c.scale[0], &c.zp[0], 0, c.qmin, c.qmax, mode,
                                     GradMask::kNone, &s, &z);
    *abs_s += std::fabs(s);
    *abs_z += std::fabs(z);
  }
}

TEST(FakeQuantKernels, AffineBackwardMatchesReference) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for_affine_cases(2, 16, [&](const AffineCase& c, int64_t n, int64_t stride, const std::string& label) {
      std::mt19937 rng(static_cast<uint32_t>(n * 3 + stride));
      const std::vector<float> g = make_grads(rng, n, /*special=*/stride == 1);
      for (RoundMode mode : kModes) {
        double abs_s = 0.0, abs_z = 0.0;
        if (!stride) affine_abs_sums(c, g, mode, &abs_s, &abs_z);
        for (GradMask mask : kMasks) {
          for (int sums = 0; sums < 4; ++sums) {  // bit 0: grad_scale, bit 1: grad_zero_point
            SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " mask=" + mask_name(mask) + " " + label +
                         " sums=" + std::to_string(sums));
            std::vector<float> want(static_cast<size_t>(n), -7.0f), got(static_cast<size_t>(n), 7.0f);
            const size_t acc_n = stride ? static_cast<size_t>(n) : 1;
            std::vector<double> s_want(acc_n, 0.25), s_got(acc_n, 0.25), z_want(acc_n, -0.25), z_got(acc_n, -0.25);
            const bool ws = sums & 1, wz = sums & 2;
            ref().fake_quant_affine_backward(c.x.data(), g.data(), want.data(), n, c.scale.data(), c.zp.data(), stride,
                                             c.qmin, c.qmax, mode, mask, ws ? s_want.data() : nullptr,
                                             wz ? z_want.data() : nullptr);
            k.fake_quant_affine_backward(c.x.data(), g.data(), got.data(), n, c.scale.data(), c.zp.data(), stride,
                                         c.qmin, c.qmax, mode, mask, ws ? s_got.data() : nullptr,
                                         wz ? z_got.data() : nullptr);
            ASSERT_TRUE(all_same(got, want, c.x.data()));
            if (stride) {
              ASSERT_TRUE(all_same(s_got, s_want, c.x.data())) << "grad_scale";
              ASSERT_TRUE(all_same(z_got, z_want, c.x.data())) << "grad_zero_point";
            } else {
              ASSERT_TRUE(sum_close(s_got[0], s_want[0], abs_s)) << "grad_scale";
              ASSERT_TRUE(sum_close(z_got[0], z_want[0], abs_z)) << "grad_zero_point";
            }
          }
        }
      }
    });
  }
}

template <typename Q>
void check_quantize(void (*const KernelTable::*entry)(const float*, Q*, int64_t, const float*, const int32_t*, int64_t,
                                                      int32_t, int32_t, RoundMode),
                    int hi_bits) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for_affine_cases(2, hi_bits, [&](const AffineCase& c, int64_t n, int64_t stride, const std::string& label) {
      for (RoundMode mode : kModes) {
        SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " " + label);
        std::vector<Q> want(static_cast<size_t>(n), Q(-7)), got(static_cast<size_t>(n), Q(7));
        (ref().*entry)(c.x.data(), want.data(), n, c.scale.data(), c.zp.data(), stride, c.qmin, c.qmax, mode);
        (k.*entry)(c.x.data(), got.data(), n, c.scale.data(), c.zp.data(), stride, c.qmin, c.qmax, mode);
        ASSERT_TRUE(all_same(got, want, c.x.data()));
      }
    });
  }
}

// The unsigned ranges of the widest width ([0, 255] for int8, [0, 65535] for int16) do not fit Q: the
// reference's static_cast<Q>(int32_t) wraps, and so must the SIMD narrowing (truncating, not saturating).
TEST(FakeQuantKernels, QuantizeInt8MatchesReference) { check_quantize<int8_t>(&KernelTable::quantize_int8, 8); }
TEST(FakeQuantKernels, QuantizeInt16MatchesReference) { check_quantize<int16_t>(&KernelTable::quantize_int16, 16); }

template <typename Q>
void check_dequantize(void (*const KernelTable::*entry)(const Q*, float*, int64_t, const float*, const int32_t*,
                                                        int64_t)) {
  for (Isa isa : simd_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kSizes) {
      for (int64_t stride : {0, 1}) {
        for (float s0 : kScales) {
          SCOPED_TRACE(trace(isa, n, stride, "dequantize") + " scale=" + describe(s0));
          std::mt19937 rng(static_cast<uint32_t>(n * 31 + stride));
          std::uniform_int_distribution<int> qd(std::numeric_limits<Q>::min(), std::numeric_limits<Q>::max());
          std::uniform_int_distribution<int32_t> zd(-70000, 70000);
          std::vector<Q> q(static_cast<size_t>(n));
          for (auto& v : q) v = static_cast<Q>(qd(rng));
          std::vector<float> scale = stride ? make_scales(rng, n) : std::vector<float>{s0};
          std::vector<int32_t> zp(stride ? static_cast<size_t>(n) : 1);
          for (auto& z : zp) z = zd(rng);
          if (scale.empty()) scale.push_back(1.0f), zp.push_back(0);
          std::vector<float> want(static_cast<size_t>(n), -7.0f), got(static_cast<size_t>(n), 7.0f);
          (ref().*entry)(q.data(), want.data(), n, scale.data(), zp.data(), stride);
          (k.*entry)(q.data(), got.data(), n, scale.data(), zp.data(), stride);
          ASSERT_TRUE(all_same(got, want));
        }
      }
    }
  }
}

TEST(FakeQuantKernels, DequantizeInt8MatchesReference) { check_dequantize<int8_t>(&KernelTable::dequantize_int8); }
TEST(FakeQuantKernels, DequantizeInt16MatchesReference) { check_dequantize<int16_t>(&KernelTable::dequantize_int16); }

// Hand-picked rounding cases through every table (the reference included): ties, 0.49999997f, large
// values, for both modes (zeros compare without their sign: q = r + zp turns -0 into +0 anyway).
TEST(FakeQuantKernels, RoundingModesOnKnownValues) {
  const float x[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 0.49999997f, -0.49999997f, -0.3f, 3.0f, 8388607.5f};
  const float even[] = {0.0f, 2.0f, 2.0f, -0.0f, -2.0f, -2.0f, 0.0f, -0.0f, -0.0f, 3.0f, 8388608.0f};
  const float away[] = {1.0f, 2.0f, 3.0f, -1.0f, -2.0f, -3.0f, 0.0f, -0.0f, -0.0f, 3.0f, 8388608.0f};
  const int64_t n = sizeof(x) / sizeof(x[0]);
  const float scale = 1.0f;
  const int32_t zp = 0;
  for (Isa isa : usable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const KernelTable& k = *kernel_table(isa);
    for (RoundMode mode : kModes) {
      std::vector<float> y(n);
      // Affine with s = 1, zp = 0 and a wide range is exactly round(x).
      k.fake_quant_affine(x, y.data(), n, &scale, &zp, 0, -(1 << 24), 1 << 24, mode);
      const float* want = mode == RoundMode::kHalfToEven ? even : away;
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_TRUE(same_value(y[i], want[i])) << mode_name(mode) << " x=" << describe(x[i]) << " got "
                                                  << describe(y[i]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Forwards that save the gradient mask as bits, and the backward that reads them
// ---------------------------------------------------------------------------------------------------------

const int64_t kMaskSizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 4097};
constexpr uint8_t kBefore = 0xA5;  // fill of the bits below bit_offset: must survive
constexpr uint8_t kAfter = 0x5A;   // fill of the bytes past the span's last byte: must not be touched

bool bit_at(const std::vector<uint8_t>& bits, int64_t b) { return (bits[static_cast<size_t>(b / 8)] >> (b % 8)) & 1u; }

// The buffer a kernel writes bits [off, off + n) into: one spare byte after the span's bytes, the span's
// bytes filled with garbage except the bits below `off`, which hold kBefore's.
std::vector<uint8_t> mask_buffer(int64_t off, int64_t n) {
  const size_t bytes = static_cast<size_t>((off + n + 7) / 8);
  std::vector<uint8_t> buf(bytes + 1, kAfter);
  for (size_t b = 0; b < bytes; ++b) buf[b] = 0xFF;
  if (bytes) buf[0] = static_cast<uint8_t>((kBefore & ((1u << off) - 1u)) | (0xFFu << off));
  return buf;
}

// The kernels.h contract on a written buffer: bits [off, off + n) are `keep`, the bits below off of the first
// byte are kBefore's, the bits past the span in its last byte are clear, the next byte is untouched.
::testing::AssertionResult mask_as_expected(const std::vector<uint8_t>& buf, int64_t off, int64_t n,
                                            const std::vector<bool>& keep, const float* x) {
  const int64_t bytes = (off + n + 7) / 8;
  if (n == 0) {  // a no-op: nothing written at all
    if (buf == mask_buffer(off, 0)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "n == 0 wrote to the mask";
  }
  for (int64_t b = 0; b < off; ++b)
    if (bit_at(buf, b) != ((kBefore >> b) & 1u))
      return ::testing::AssertionFailure() << "bit " << b << " below bit_offset " << off << " was changed";
  for (int64_t j = 0; j < n; ++j)
    if (bit_at(buf, off + j) != keep[static_cast<size_t>(j)])
      return ::testing::AssertionFailure() << "element " << j << " (bit_offset " << off << "): got bit "
                                           << bit_at(buf, off + j) << ", reference backward keeps "
                                           << keep[static_cast<size_t>(j)] << ", x = " << describe(x[j]);
  for (int64_t b = off + n; b < bytes * 8; ++b)
    if (bit_at(buf, b)) return ::testing::AssertionFailure() << "padding bit " << b << " past the span is set";
  if (buf[static_cast<size_t>(bytes)] != kAfter)
    return ::testing::AssertionFailure() << "the byte after the span's last byte was written";
  return ::testing::AssertionSuccess();
}

// The reference x-based backward's keep decision, read off grad_x with grad = 1.
std::vector<bool> affine_keep(const AffineCase& c, int64_t n, int64_t stride, RoundMode mode) {
  const std::vector<float> ones(static_cast<size_t>(n), 1.0f);
  std::vector<float> gx(static_cast<size_t>(n), -1.0f);
  ref().fake_quant_affine_backward(c.x.data(), ones.data(), gx.data(), n, c.scale.data(), c.zp.data(), stride, c.qmin,
                                   c.qmax, mode, GradMask::kInclusive, nullptr, nullptr);
  std::vector<bool> keep(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) keep[i] = gx[i] == 1.0f;
  return keep;
}

std::vector<bool> symmetric_keep(const SymCase& c, int64_t n, int64_t stride, GradMask mask) {
  const std::vector<float> ones(static_cast<size_t>(n), 1.0f);
  std::vector<float> gx(static_cast<size_t>(n), -1.0f);
  ref().fake_quant_symmetric_backward(c.x.data(), ones.data(), gx.data(), n, c.scale.data(), stride, c.bin,
                                      RoundMode::kHalfToEven, mask, nullptr);
  std::vector<bool> keep(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) keep[i] = gx[i] == 1.0f;
  return keep;
}

// Every usable path, the reference included (its mask is checked against its own x-based backward).
TEST(FakeQuantMaskKernels, AffineMaskMatchesReference) {
  const std::pair<int32_t, int32_t> qranges[] = {{-128, 127}, {0, 255}, {-8, 7}, {0, 3}, {-32768, 32767}};
  const float scales[] = {1.0f, 0.25f, 0.0372f, 1e-31f, 1e-40f};
  for (Isa isa : usable_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kMaskSizes)
      for (int64_t stride : {0, 1})
        for (const auto& qr : qranges)
          for (size_t si = 0; si < (stride ? 1 : sizeof(scales) / sizeof(scales[0])); ++si) {
            const uint32_t seed = static_cast<uint32_t>(n * 31 + stride * 7 + qr.second + si);
            const AffineCase c = make_affine_case(n, stride, qr.first, qr.second, scales[si], seed);
            for (RoundMode mode : kModes) {
              std::vector<float> want(static_cast<size_t>(n), -7.0f);
              ref().fake_quant_affine(c.x.data(), want.data(), n, c.scale.data(), c.zp.data(), stride, c.qmin, c.qmax,
                                      mode);
              const std::vector<bool> keep = affine_keep(c, n, stride, mode);
              for (int64_t off = 0; off < 8; ++off) {
                SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " bit_offset=" + std::to_string(off) + " q=[" +
                             std::to_string(c.qmin) + "," + std::to_string(c.qmax) + "] scale=" +
                             (stride ? std::string("per-element") : describe(scales[si])));
                std::vector<float> got(static_cast<size_t>(n), 7.0f);
                std::vector<uint8_t> bits = mask_buffer(off, n);
                k.fake_quant_affine_mask(c.x.data(), got.data(), bits.data(), off, n, c.scale.data(), c.zp.data(),
                                         stride, c.qmin, c.qmax, mode);
                ASSERT_TRUE(all_same(got, want, c.x.data()));
                ASSERT_TRUE(mask_as_expected(bits, off, n, keep, c.x.data()));
              }
            }
          }
  }
}

TEST(FakeQuantMaskKernels, SymmetricMaskMatchesReference) {
  const float scales[] = {1.0f, 0.25f, 3.5f, 1e-31f, 1e-40f, 0.0f};
  for (Isa isa : usable_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kMaskSizes)
      for (int64_t stride : {0, 1})
        for (int bits_wide : {2, 4, 8, 16})
          for (size_t si = 0; si < (stride ? 1 : sizeof(scales) / sizeof(scales[0])); ++si) {
            const uint32_t seed = static_cast<uint32_t>(n * 17 + stride * 5 + bits_wide + si);
            const SymCase c = make_sym_case(n, stride, bits_wide, scales[si], seed);
            for (RoundMode mode : kModes) {
              std::vector<float> want(static_cast<size_t>(n), -7.0f);
              ref().fake_quant_symmetric(c.x.data(), want.data(), n, c.scale.data(), stride, c.bin, mode);
              for (GradMask mask : kMasks) {
                const std::vector<bool> keep = symmetric_keep(c, n, stride, mask);
                for (int64_t off = 0; off < 8; ++off) {
                  SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " mask=" + mask_name(mask) +
                               " bit_offset=" + std::to_string(off) + " bits=" + std::to_string(bits_wide) +
                               " scale=" + (stride ? std::string("per-element") : describe(scales[si])));
                  std::vector<float> got(static_cast<size_t>(n), 7.0f);
                  std::vector<uint8_t> bits = mask_buffer(off, n);
                  k.fake_quant_symmetric_mask(c.x.data(), got.data(), bits.data(), off, n, c.scale.data(), stride,
                                              c.bin, mode, mask);
                  ASSERT_TRUE(all_same(got, want, c.x.data()));
                  ASSERT_TRUE(mask_as_expected(bits, off, n, keep, c.x.data()));
                }
              }
            }
          }
  }
}

// Exact bit patterns: a kept gradient is copied bit for bit (NaN payloads, -0, denormals), a masked one is +0.
::testing::AssertionResult same_bits(const std::vector<float>& got, const std::vector<float>& want) {
  for (size_t i = 0; i < got.size(); ++i)
    if (bits_of(got[i]) != bits_of(want[i]))
      return ::testing::AssertionFailure() << "index " << i << ": got " << describe(got[i]) << ", want "
                                           << describe(want[i]);
  return ::testing::AssertionSuccess();
}

TEST(FakeQuantMaskKernels, ApplyGradMaskMatchesReference) {
  for (Isa isa : usable_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : kMaskSizes) {
      for (int64_t off = 0; off < 8; ++off) {
        SCOPED_TRACE(trace(isa, n, 0, "apply_grad_mask") + " bit_offset=" + std::to_string(off));
        std::mt19937 rng(static_cast<uint32_t>(n * 8 + off));
        std::vector<float> g = make_grads(rng, n, /*special=*/true);
        for (int64_t i = 0; i < n; i += 5) g[i] = -0.0f;
        for (int64_t i = 2; i < n; i += 11) g[i] = -INFINITY;
        // Random bytes; the bits outside the span are random too and must be ignored.
        std::vector<uint8_t> bits(static_cast<size_t>((off + n + 7) / 8 + 1));
        std::uniform_int_distribution<int> byte(0, 255);
        for (auto& b : bits) b = static_cast<uint8_t>(byte(rng));
        std::vector<float> want(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) want[i] = bit_at(bits, off + i) ? g[i] : 0.0f;
        // Sentinels on both sides of grad_x: nothing outside [0, n) may be written.
        std::vector<float> got(static_cast<size_t>(n) + 2, 3.0f);
        k.apply_grad_mask(g.data(), bits.data(), off, got.data() + 1, n);
        ASSERT_EQ(got.front(), 3.0f);
        ASSERT_EQ(got.back(), 3.0f);
        ASSERT_TRUE(same_bits(std::vector<float>(got.begin() + 1, got.end() - 1), want));
        // In place (grad_x == grad), as the contract allows.
        std::vector<float> inplace = g;
        k.apply_grad_mask(inplace.data(), bits.data(), off, inplace.data(), n);
        ASSERT_TRUE(same_bits(inplace, want));
      }
    }
  }
}

// The whole point: forward-with-mask + apply_grad_mask gives the x-based backward's grad_x, bit for bit.
TEST(FakeQuantMaskKernels, MaskedBackwardEqualsXBasedBackward) {
  for (Isa isa : usable_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (int64_t n : {int64_t{1}, int64_t{9}, int64_t{65}, int64_t{4097}})
      for (int64_t stride : {0, 1})
        for (RoundMode mode : kModes)
          for (int64_t off : {0, 3, 7}) {
            SCOPED_TRACE(trace(isa, n, stride, mode_name(mode)) + " bit_offset=" + std::to_string(off));
            std::mt19937 rng(static_cast<uint32_t>(n + stride + off));
            const std::vector<float> g = make_grads(rng, n, /*special=*/true);
            const AffineCase a = make_affine_case(n, stride, -128, 127, 0.0372f, static_cast<uint32_t>(n + off));
            std::vector<float> y(static_cast<size_t>(n)), want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
            std::vector<uint8_t> bits = mask_buffer(off, n);
            k.fake_quant_affine_mask(a.x.data(), y.data(), bits.data(), off, n, a.scale.data(), a.zp.data(), stride,
                                     a.qmin, a.qmax, mode);
            k.apply_grad_mask(g.data(), bits.data(), off, got.data(), n);
            ref().fake_quant_affine_backward(a.x.data(), g.data(), want.data(), n, a.scale.data(), a.zp.data(), stride,
                                             a.qmin, a.qmax, mode, GradMask::kInclusive, nullptr, nullptr);
            ASSERT_TRUE(same_bits(got, want)) << "affine";
            const SymCase c = make_sym_case(n, stride, 8, 1.0f, static_cast<uint32_t>(n * 3 + off));
            for (GradMask mask : {GradMask::kInclusive, GradMask::kStrict}) {
              bits = mask_buffer(off, n);
              k.fake_quant_symmetric_mask(c.x.data(), y.data(), bits.data(), off, n, c.scale.data(), stride, c.bin,
                                          mode, mask);
              k.apply_grad_mask(g.data(), bits.data(), off, got.data(), n);
              ref().fake_quant_symmetric_backward(c.x.data(), g.data(), want.data(), n, c.scale.data(), stride, c.bin,
                                                  mode, mask, nullptr);
              ASSERT_TRUE(same_bits(got, want)) << "symmetric " << mask_name(mask);
            }
          }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Drivers (fake_quant.h) against straightforward per-element loops over the reference table
// ---------------------------------------------------------------------------------------------------------

struct DriverCase {
  ChannelLayout layout;
  std::vector<float> x, g, scale;
  std::vector<int32_t> zp;
};

DriverCase make_driver_case(const ChannelLayout& l, uint32_t seed) {
  std::mt19937 rng(seed);
  DriverCase d;
  d.layout = l;
  const int64_t n = l.numel();
  std::uniform_real_distribution<float> su(0.01f, 2.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int32_t> zd(-20, 20);
  d.scale.resize(static_cast<size_t>(l.channels));
  d.zp.resize(static_cast<size_t>(l.channels));
  for (auto& s : d.scale) s = su(rng);
  for (auto& z : d.zp) z = zd(rng);
  d.x.resize(static_cast<size_t>(n));
  d.g.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = (i / l.inner) % l.channels;
    d.x[i] = normal(rng) * d.scale[c] * 1.2f;
    d.g[i] = normal(rng);
  }
  // A few special values (NaN sticks to its channel's abs max).
  if (n > 10) {
    d.x[3] = INFINITY;
    d.x[n / 2] = std::nanf("");
    d.x[n - 1] = -1e-40f;
  }
  return d;
}

int64_t channel_of(const ChannelLayout& l, int64_t i) { return (i / l.inner) % l.channels; }

std::string layout_name(const ChannelLayout& l, int threads) {
  return "layout=[" + std::to_string(l.outer) + "," + std::to_string(l.channels) + "," + std::to_string(l.inner) +
         "] threads=" + std::to_string(threads);
}

const ChannelLayout kLayouts[] = {
    {1, 1, 0},     {1, 1, 1},    {1, 1, 1000},  {3, 5, 7},      {7, 1, 9},       {1, 1, 70001},
    {2, 3, 40000}, {1, 4097, 1}, {20, 4097, 1}, {5000, 3, 1},   {4, 33, 2},      {2, 9, 16385},
    // odd inner sizes and per-channel vectors that make spans start inside mask bytes, across task splits
    {9000, 7, 1},  {3, 11, 2731},
};

TEST(FakeQuantDrivers, MatchPerElementReference) {
  for (Isa isa : usable_isas()) {
    const KernelTable& k = *kernel_table(isa);
    for (const ChannelLayout& l : kLayouts) {
      const DriverCase d = make_driver_case(l, static_cast<uint32_t>(l.numel() + l.channels));
      const int64_t n = l.numel();
      const int64_t C = l.channels;
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string("isa=") + isa_name(isa) + " " + layout_name(l, threads));
        // abs_max_channels
        std::vector<float> amax_want(static_cast<size_t>(C), 0.0f), amax_got(static_cast<size_t>(C), -1.0f);
        for (int64_t i = 0; i < n; ++i) {
          float& m = amax_want[channel_of(l, i)];
          const float a = std::fabs(d.x[i]);
          if (std::isnan(a) || std::isnan(m)) {
            m = std::nanf("");
          } else if (a > m) {
            m = a;
          }
        }
        abs_max_channels(k, d.x.data(), l, amax_got.data(), threads);
        EXPECT_TRUE(all_same(amax_got, amax_want)) << "abs_max_channels";

        for (RoundMode mode : kModes) {
          SCOPED_TRACE(mode_name(mode));
          const int32_t bin = 127;
          // symmetric forward
          std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n), 9.0f);
          for (int64_t i = 0; i < n; ++i)
            ref().fake_quant_symmetric(&d.x[i], &want[i], 1, &d.scale[channel_of(l, i)], 0, bin, mode);
          fake_quant_symmetric(k, d.x.data(), got.data(), l, d.scale.data(), bin, mode, threads);
          EXPECT_TRUE(all_same(got, want, d.x.data())) << "fake_quant_symmetric";

          // symmetric backward with per-channel grad_scale sums
          for (GradMask mask : kMasks) {
            std::vector<double> gs_want(static_cast<size_t>(C), 0.0), abs_sum(static_cast<size_t>(C), 0.0);
            std::vector<double> gs_got(static_cast<size_t>(C), 123.0);
            for (int64_t i = 0; i < n; ++i) {
              const int64_t c = channel_of(l, i);
              double one = 0.0;
              ref().fake_quant_symmetric_backward(&d.x[i], &d.g[i], &want[i], 1, &d.scale[c], 0, bin, mode, mask,
                                                  &one);
              gs_want[c] += one;
              abs_sum[c] += std::fabs(one);
            }
            fake_quant_symmetric_backward(k, d.x.data(), d.g.data(), got.data(), l, d.scale.data(), bin, mode, mask,
                                          gs_got.data(), threads);
            EXPECT_TRUE(all_same(got, want, d.x.data())) << "fake_quant_symmetric_backward " << mask_name(mask);
            for (int64_t c = 0; c < C; ++c)
              ASSERT_TRUE(sum_close(gs_got[c], gs_want[c], abs_sum[c])) << "grad_scale channel " << c;
          }

          // affine forward / backward
          const int32_t qmin = -128, qmax = 127;
          for (int64_t i = 0; i < n; ++i) {
            const int64_t c = channel_of(l, i);
            ref().fake_quant_affine(&d.x[i], &want[i], 1, &d.scale[c], &d.zp[c], 0, qmin, qmax, mode);
          }
          fake_quant_affine(k, d.x.data(), got.data(), l, d.scale.data(), d.zp.data(), qmin, qmax, mode, threads);
          EXPECT_TRUE(all_same(got, want, d.x.data())) << "fake_quant_affine";
          {
            std::vector<double> s_want(static_cast<size_t>(C), 0.0), z_want(static_cast<size_t>(C), 0.0);
            std::vector<double> s_abs(static_cast<size_t>(C), 0.0), z_abs(static_cast<size_t>(C), 0.0);
            std::vector<double> s_got(static_cast<size_t>(C), 5.0), z_got(static_cast<size_t>(C), 5.0);
            for (int64_t i = 0; i < n; ++i) {
              const int64_t c = channel_of(l, i);
              double s1 = 0.0, z1 = 0.0;
              ref().fake_quant_affine_backward(&d.x[i], &d.g[i], &want[i], 1, &d.scale[c], &d.zp[c], 0, qmin, qmax,
                                               mode, GradMask::kInclusive, &s1, &z1);
              s_want[c] += s1;
              z_want[c] += z1;
              s_abs[c] += std::fabs(s1);
              z_abs[c] += std::fabs(z1);
            }
            fake_quant_affine_backward(k, d.x.data(), d.g.data(), got.data(), l, d.scale.data(), d.zp.data(), qmin,
                                       qmax, mode, GradMask::kInclusive, s_got.data(), z_got.data(), threads);
            EXPECT_TRUE(all_same(got, want, d.x.data())) << "fake_quant_affine_backward";
            for (int64_t c = 0; c < C; ++c) {
              ASSERT_TRUE(sum_close(s_got[c], s_want[c], s_abs[c])) << "grad_scale channel " << c;
              ASSERT_TRUE(sum_close(z_got[c], z_want[c], z_abs[c])) << "grad_zero_point channel " << c;
            }
          }

          // forwards with the gradient bit mask (every bit written, padding cleared, whatever the spans'
          // alignment), and the masked backward against the x-based one
          {
            const size_t mask_bytes = static_cast<size_t>((n + 7) / 8);
            std::vector<uint8_t> bits_got(mask_bytes, 0xCC), bits_want(mask_bytes, 0);
            std::vector<float> y_got(static_cast<size_t>(n), 9.0f), gx_got(static_cast<size_t>(n), 9.0f);
            auto keep_bits_from = [&](const std::vector<float>& grad_x_of_ones) {
              std::fill(bits_want.begin(), bits_want.end(), 0);
              for (int64_t i = 0; i < n; ++i)
                if (grad_x_of_ones[i] == 1.0f) bits_want[static_cast<size_t>(i / 8)] |= static_cast<uint8_t>(1u << (i % 8));
            };
            const std::vector<float> ones(static_cast<size_t>(n), 1.0f);
            std::vector<float> keep01(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) {
              const int64_t c = channel_of(l, i);
              ref().fake_quant_affine(&d.x[i], &want[i], 1, &d.scale[c], &d.zp[c], 0, qmin, qmax, mode);
              ref().fake_quant_affine_backward(&d.x[i], &ones[i], &keep01[i], 1, &d.scale[c], &d.zp[c], 0, qmin, qmax,
                                               mode, GradMask::kInclusive, nullptr, nullptr);
            }
            keep_bits_from(keep01);
            fake_quant_affine_mask(k, d.x.data(), y_got.data(), bits_got.data(), l, d.scale.data(), d.zp.data(), qmin,
                                   qmax, mode, threads);
            EXPECT_TRUE(all_same(y_got, want, d.x.data())) << "fake_quant_affine_mask y";
            EXPECT_TRUE(all_same(bits_got, bits_want)) << "fake_quant_affine_mask bits";
            std::vector<float> gx_want(static_cast<size_t>(n), -9.0f);
            fake_quant_affine_backward(k, d.x.data(), d.g.data(), gx_want.data(), l, d.scale.data(), d.zp.data(), qmin,
                                       qmax, mode, GradMask::kInclusive, nullptr, nullptr, threads);
            apply_grad_mask(k, d.g.data(), bits_got.data(), gx_got.data(), n, threads);
            EXPECT_TRUE(same_bits(gx_got, gx_want)) << "apply_grad_mask after fake_quant_affine_mask";

            for (GradMask mask : {GradMask::kInclusive, GradMask::kStrict}) {
              for (int64_t i = 0; i < n; ++i) {
                const int64_t c = channel_of(l, i);
                ref().fake_quant_symmetric(&d.x[i], &want[i], 1, &d.scale[c], 0, bin, mode);
                ref().fake_quant_symmetric_backward(&d.x[i], &ones[i], &keep01[i], 1, &d.scale[c], 0, bin, mode, mask,
                                                    nullptr);
              }
              keep_bits_from(keep01);
              std::fill(bits_got.begin(), bits_got.end(), 0xCC);
              fake_quant_symmetric_mask(k, d.x.data(), y_got.data(), bits_got.data(), l, d.scale.data(), bin, mode,
                                        mask, threads);
              EXPECT_TRUE(all_same(y_got, want, d.x.data())) << "fake_quant_symmetric_mask y " << mask_name(mask);
              EXPECT_TRUE(all_same(bits_got, bits_want)) << "fake_quant_symmetric_mask bits " << mask_name(mask);
              fake_quant_symmetric_backward(k, d.x.data(), d.g.data(), gx_want.data(), l, d.scale.data(), bin, mode,
                                            mask, nullptr, threads);
              apply_grad_mask(k, d.g.data(), bits_got.data(), gx_got.data(), n, threads);
              EXPECT_TRUE(same_bits(gx_got, gx_want)) << "apply_grad_mask after fake_quant_symmetric_mask";
            }
          }

          // quantize / dequantize
          std::vector<int8_t> q8_want(static_cast<size_t>(n)), q8_got(static_cast<size_t>(n), 1);
          std::vector<int16_t> q16_want(static_cast<size_t>(n)), q16_got(static_cast<size_t>(n), 1);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t c = channel_of(l, i);
            ref().quantize_int8(&d.x[i], &q8_want[i], 1, &d.scale[c], &d.zp[c], 0, qmin, qmax, mode);
            ref().quantize_int16(&d.x[i], &q16_want[i], 1, &d.scale[c], &d.zp[c], 0, -32768, 32767, mode);
          }
          quantize_int8(k, d.x.data(), q8_got.data(), l, d.scale.data(), d.zp.data(), qmin, qmax, mode, threads);
          quantize_int16(k, d.x.data(), q16_got.data(), l, d.scale.data(), d.zp.data(), -32768, 32767, mode, threads);
          EXPECT_TRUE(all_same(q8_got, q8_want, d.x.data())) << "quantize_int8";
          EXPECT_TRUE(all_same(q16_got, q16_want, d.x.data())) << "quantize_int16";

          for (int64_t i = 0; i < n; ++i) {
            const int64_t c = channel_of(l, i);
            ref().dequantize_int8(&q8_want[i], &want[i], 1, &d.scale[c], &d.zp[c], 0);
          }
          dequantize_int8(k, q8_want.data(), got.data(), l, d.scale.data(), d.zp.data(), threads);
          EXPECT_TRUE(all_same(got, want)) << "dequantize_int8";
          for (int64_t i = 0; i < n; ++i) {
            const int64_t c = channel_of(l, i);
            ref().dequantize_int16(&q16_want[i], &want[i], 1, &d.scale[c], &d.zp[c], 0);
          }
          dequantize_int16(k, q16_want.data(), got.data(), l, d.scale.data(), d.zp.data(), threads);
          EXPECT_TRUE(all_same(got, want)) << "dequantize_int16";
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// ISA names and forcing
// ---------------------------------------------------------------------------------------------------------

TEST(Isa, NamesRoundTrip) {
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i) {
    const Isa isa = static_cast<Isa>(i);
    Isa back = Isa::kCount;
    ASSERT_TRUE(isa_from_name(isa_name(isa), &back)) << isa_name(isa);
    EXPECT_EQ(back, isa);
  }
  Isa unused;
  EXPECT_FALSE(isa_from_name("avx9000", &unused));
  EXPECT_FALSE(isa_from_name("", &unused));
  EXPECT_STREQ(isa_name(Isa::kCount), "unknown");
}

TEST(Isa, UsablePathsAreBuiltAndDetected) {
  const std::vector<Isa> usable = usable_isas();
  ASSERT_FALSE(usable.empty());
  EXPECT_EQ(usable.front(), Isa::kReference);
  for (Isa isa : usable) {
    EXPECT_TRUE(built_isas() & isa_bit(isa)) << isa_name(isa);
    EXPECT_TRUE(detected_isas() & isa_bit(isa)) << isa_name(isa);
    ASSERT_NE(kernel_table(isa), nullptr) << isa_name(isa);
    const KernelTable& k = *kernel_table(isa);
    const void* entries[] = {reinterpret_cast<const void*>(k.abs_max),
                             reinterpret_cast<const void*>(k.abs_max_accumulate),
                             reinterpret_cast<const void*>(k.range_with_zero),
                             reinterpret_cast<const void*>(k.fake_quant_symmetric),
                             reinterpret_cast<const void*>(k.fake_quant_symmetric_backward),
                             reinterpret_cast<const void*>(k.fake_quant_affine),
                             reinterpret_cast<const void*>(k.fake_quant_affine_backward),
                             reinterpret_cast<const void*>(k.quantize_int8),
                             reinterpret_cast<const void*>(k.quantize_int16),
                             reinterpret_cast<const void*>(k.dequantize_int8),
                             reinterpret_cast<const void*>(k.dequantize_int16)};
    for (const void* e : entries) EXPECT_NE(e, nullptr) << isa_name(isa);
  }
}

TEST(Isa, ForceUnknownOrMissingPathThrows) {
  const Isa before = active_isa();
  EXPECT_THROW(force_isa(std::string("bogus")), std::invalid_argument);
#if defined(__x86_64__) || defined(_M_X64)
  EXPECT_THROW(force_isa(std::string("neon")), std::invalid_argument);
  EXPECT_THROW(force_isa(Isa::kNeonDot), std::invalid_argument);
#endif
#if defined(__aarch64__)
  EXPECT_THROW(force_isa(std::string("avx2")), std::invalid_argument);
#endif
  EXPECT_EQ(active_isa(), before);
  for (Isa isa : usable_isas()) {
    force_isa(isa_name(isa));
    EXPECT_EQ(active_isa(), isa);
    EXPECT_EQ(&active_kernels(), kernel_table(isa));
  }
  force_isa(before);
  EXPECT_EQ(active_isa(), before);
}

}  // namespace
}  // namespace pyslim
