// google-benchmark for the int8 GEMM micro-kernels (gemm_s32, single-threaded, one call for the whole
// M x N block) and the depthwise kernel (depthwise_conv_s32, one call for the whole image), on every usable SIMD path, side by side with the machine's measured arithmetic peaks:
//
//   peak/vnni_zmm   a tight loop of independent vpdpbusd zmm on registers (64 MACs = 128 int ops each),
//                   run only when AVX512_VNNI is detected;
//   peak/fma_ymm    a tight loop of independent vfmadd ymm (8 FMAs = 16 float ops each);
//   peak/fma_zmm    the same on zmm, when AVX-512 F is detected.
//
// Every GEMM row reports OPS (2 * M * N * K per iteration, as a rate) and, when the VNNI peak was measured,
// of_vnni_peak: that rate divided by the VNNI peak measured at start-up in this same run (a fraction, 1.0
// is the peak). All rates are per CPU second of the (single) benchmark thread, google-benchmark's default,
// so that they hold on a loaded machine too; the Time column is wall clock. The reference path is omitted (a scalar triple loop over 10^9 MACs per call).
// The peak functions carry their own target attributes: this file is compiled without any ISA flags and
// must run (and skip the loops it cannot) on any x86-64; on other architectures only the GEMM rows exist.
//   ./bench_gemm --benchmark_min_time=0.3 [--benchmark_filter=vnni]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "pyslim/isa.h"
#include "pyslim/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYSLIM_BENCH_X86 1
#endif

namespace pyslim {
namespace {

constexpr int64_t kPeakIters = 1 << 20;

#if defined(PYSLIM_BENCH_X86)
// The peak loops are written in assembly: with intrinsics on an accumulator array the compiler spills
// some accumulators to the stack every iteration, and the "peak" comes out below what the GEMM reaches.
// Each iteration issues independent multiply-adds into fixed registers (enough of them to cover the
// latency on every core we know of); the inputs are irrelevant to the timing (integers, or zeroed floats
// plus small normal products: no denormals).
__attribute__((target("avx512f,avx512vnni"), noinline)) int64_t vnni_peak_loop(int64_t iters) {
  if (iters <= 0) return 0;
  const __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x01ff01ff);
  __asm__ volatile(
      "1:\n\t"
      "vpdpbusd %2, %1, %%zmm0\n\t"
      "vpdpbusd %2, %1, %%zmm1\n\t"
      "vpdpbusd %2, %1, %%zmm2\n\t"
      "vpdpbusd %2, %1, %%zmm3\n\t"
      "vpdpbusd %2, %1, %%zmm4\n\t"
      "vpdpbusd %2, %1, %%zmm5\n\t"
      "vpdpbusd %2, %1, %%zmm6\n\t"
      "vpdpbusd %2, %1, %%zmm7\n\t"
      "vpdpbusd %2, %1, %%zmm8\n\t"
      "vpdpbusd %2, %1, %%zmm9\n\t"
      "vpdpbusd %2, %1, %%zmm10\n\t"
      "vpdpbusd %2, %1, %%zmm11\n\t"
      "vpdpbusd %2, %1, %%zmm12\n\t"
      "vpdpbusd %2, %1, %%zmm13\n\t"
      "vpdpbusd %2, %1, %%zmm14\n\t"
      "vpdpbusd %2, %1, %%zmm15\n\t"
      "vpdpbusd %2, %1, %%zmm16\n\t"
      "vpdpbusd %2, %1, %%zmm17\n\t"
      "vpdpbusd %2, %1, %%zmm18\n\t"
      "vpdpbusd %2, %1, %%zmm19\n\t"
      "vpdpbusd %2, %1, %%zmm20\n\t"
      "vpdpbusd %2, %1, %%zmm21\n\t"
      "vpdpbusd %2, %1, %%zmm22\n\t"
      "vpdpbusd %2, %1, %%zmm23\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      : "v"(a), "v"(b)
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23");
  return iters;
}
constexpr int64_t kVnniOpsPerIter = 24 * 64 * 2;

__attribute__((target("avx2,fma"), noinline)) float fma_ymm_peak_loop(int64_t iters) {
  if (iters <= 0) return 0.0f;
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  __asm__ volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
      "vxorps %%ymm1, %%ymm1, %%ymm1\n\t"
      "vxorps %%ymm2, %%ymm2, %%ymm2\n\t"
      "vxorps %%ymm3, %%ymm3, %%ymm3\n\t"
      "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
      "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
      "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
      "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
      "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
      "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
      "1:\n\t"
      "vfmadd231ps %1, %2, %%ymm0\n\t"
      "vfmadd231ps %1, %2, %%ymm1\n\t"
      "vfmadd231ps %1, %2, %%ymm2\n\t"
      "vfmadd231ps %1, %2, %%ymm3\n\t"
      "vfmadd231ps %1, %2, %%ymm4\n\t"
      "vfmadd231ps %1, %2, %%ymm5\n\t"
      "vfmadd231ps %1, %2, %%ymm6\n\t"
      "vfmadd231ps %1, %2, %%ymm7\n\t"
      "vfmadd231ps %1, %2, %%ymm8\n\t"
      "vfmadd231ps %1, %2, %%ymm9\n\t"
      "vfmadd231ps %1, %2, %%ymm10\n\t"
      "vfmadd231ps %1, %2, %%ymm11\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      : "x"(a), "x"(b)
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
  return static_cast<float>(iters);
}
constexpr int64_t kFmaYmmOpsPerIter = 12 * 8 * 2;

__attribute__((target("avx512f"), noinline)) float fma_zmm_peak_loop(int64_t iters) {
  if (iters <= 0) return 0.0f;
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  __asm__ volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "vpxord %%zmm16, %%zmm16, %%zmm16\n\t"
      "vpxord %%zmm17, %%zmm17, %%zmm17\n\t"
      "vpxord %%zmm18, %%zmm18, %%zmm18\n\t"
      "vpxord %%zmm19, %%zmm19, %%zmm19\n\t"
      "vpxord %%zmm20, %%zmm20, %%zmm20\n\t"
      "vpxord %%zmm21, %%zmm21, %%zmm21\n\t"
      "vpxord %%zmm22, %%zmm22, %%zmm22\n\t"
      "vpxord %%zmm23, %%zmm23, %%zmm23\n\t"
      "1:\n\t"
      "vfmadd231ps %1, %2, %%zmm0\n\t"
      "vfmadd231ps %1, %2, %%zmm1\n\t"
      "vfmadd231ps %1, %2, %%zmm2\n\t"
      "vfmadd231ps %1, %2, %%zmm3\n\t"
      "vfmadd231ps %1, %2, %%zmm4\n\t"
      "vfmadd231ps %1, %2, %%zmm5\n\t"
      "vfmadd231ps %1, %2, %%zmm6\n\t"
      "vfmadd231ps %1, %2, %%zmm7\n\t"
      "vfmadd231ps %1, %2, %%zmm8\n\t"
      "vfmadd231ps %1, %2, %%zmm9\n\t"
      "vfmadd231ps %1, %2, %%zmm10\n\t"
      "vfmadd231ps %1, %2, %%zmm11\n\t"
      "vfmadd231ps %1, %2, %%zmm12\n\t"
      "vfmadd231ps %1, %2, %%zmm13\n\t"
      "vfmadd231ps %1, %2, %%zmm14\n\t"
      "vfmadd231ps %1, %2, %%zmm15\n\t"
      "vfmadd231ps %1, %2, %%zmm16\n\t"
      "vfmadd231ps %1, %2, %%zmm17\n\t"
      "vfmadd231ps %1, %2, %%zmm18\n\t"
      "vfmadd231ps %1, %2, %%zmm19\n\t"
      "vfmadd231ps %1, %2, %%zmm20\n\t"
      "vfmadd231ps %1, %2, %%zmm21\n\t"
      "vfmadd231ps %1, %2, %%zmm22\n\t"
      "vfmadd231ps %1, %2, %%zmm23\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      : "v"(a), "v"(b)
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23");
  return static_cast<float>(iters);
}
constexpr int64_t kFmaZmmOpsPerIter = 24 * 16 * 2;

bool has(Isa isa) { return (detected_isas() & isa_bit(isa)) != 0; }

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The VNNI peak in ops/s, measured once before the benchmarks start: the best of 50 short (~1 ms) runs,
// timed in thread CPU time like every row here, so that time slices lost to other processes on a shared
// machine lower neither the peak nor the GEMM rates (either would skew the of_vnni_peak fractions).
double measure_vnni_peak() {
  constexpr int64_t kIters = kPeakIters / 64;
  double best = 0.0;
  for (int rep = 0; rep < 50; ++rep) {
    const double t0 = thread_cpu_seconds();
    benchmark::DoNotOptimize(vnni_peak_loop(kIters));
    const double s = thread_cpu_seconds() - t0;
    const double rate = static_cast<double>(kVnniOpsPerIter) * kIters / s;
    if (rate > best) best = rate;
  }
  return best;
}
#endif

double g_vnni_peak = 0.0;  // ops/s, 0 when not measured

template <typename F>
void register_peak(const char* name, int64_t ops_per_iter, F loop) {
  benchmark::RegisterBenchmark(name, [ops_per_iter, loop](benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(loop(kPeakIters));
    state.counters["OPS"] =
        benchmark::Counter(static_cast<double>(state.iterations()) * kPeakIters * ops_per_iter,
                           benchmark::Counter::kIsRate);
  });
}

struct Shape {
  int64_t M, N, K;
};
const Shape kShapes[] = {{1, 4096, 4096}, {16, 4096, 4096}, {128, 4096, 4096}, {512, 1024, 1024}, {3136, 64, 576}};

void register_gemm(Isa isa, const Shape& sh, bool a_signed) {
  const KernelTable* t = kernel_table(isa);
  const std::string name = std::string("gemm_s32/") + isa_name(isa) + "/" + (a_signed ? "s8" : "u8") + "/M:" +
                           std::to_string(sh.M) + "/N:" + std::to_string(sh.N) + "/K:" + std::to_string(sh.K);
  benchmark::RegisterBenchmark(name.c_str(), [t, sh, a_signed](benchmark::State& state) {
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<uint8_t> A(sh.M * sh.K);
    std::vector<int8_t> W(sh.N * sh.K);
    for (auto& v : A) v = static_cast<uint8_t>(byte(rng));
    for (auto& v : W) v = static_cast<int8_t>(byte(rng) - 128);
    const size_t bytes = static_cast<size_t>((t->gemm_packed_size(sh.N, sh.K) + 63) / 64 * 64);
    void* packed = std::aligned_alloc(64, bytes);
    t->gemm_pack(W.data(), sh.N, sh.K, packed);
    std::vector<int32_t> C(sh.M * sh.N);
    for (auto _ : state) {
      t->gemm_s32(A.data(), a_signed, sh.K, packed, sh.M, sh.N, sh.K, 0, sh.N, C.data(), sh.N);
      benchmark::ClobberMemory();
    }
    std::free(packed);
    const double ops = 2.0 * static_cast<double>(sh.M) * sh.N * sh.K * static_cast<double>(state.iterations());
    state.counters["OPS"] = benchmark::Counter(ops, benchmark::Counter::kIsRate);
    if (g_vnni_peak > 0.0)
      state.counters["of_vnni_peak"] = benchmark::Counter(ops / g_vnni_peak, benchmark::Counter::kIsRate);
  })->Unit(benchmark::kMillisecond);
}

// depthwise_conv_s32 (single-threaded, all output rows in one call) on MobileNet/EfficientNet-like NHWC layers;
// OPS counts 2 * N * OH * OW * C * KH * KW per call. The first one is the `pyslim bench` row "dw3x3 144".
struct DwGeo {
  const char* name;
  int64_t h, w, c, k, stride, pad;
};
const DwGeo kDwGeos[] = {{"dw3x3_c144_56x56", 56, 56, 144, 3, 1, 1},
                         {"dw3x3_c144_56x56_s2", 56, 56, 144, 3, 2, 1},
                         {"dw5x5_c240_28x28", 28, 28, 240, 5, 1, 2},
                         {"dw3x3_c32_112x112", 112, 112, 32, 3, 1, 1}};

void register_depthwise(Isa isa, const DwGeo& g, bool x_signed) {
  const KernelTable* t = kernel_table(isa);
  const std::string name =
      std::string("depthwise_conv_s32/") + isa_name(isa) + "/" + (x_signed ? "s8" : "u8") + "/" + g.name;
  benchmark::RegisterBenchmark(name.c_str(), [t, g, x_signed](benchmark::State& state) {
    DepthwiseShape s{1, g.h, g.w, g.c, g.k, g.k, 0, 0, g.stride, g.stride, g.pad, g.pad, 1, 1};
    s.out_h = (g.h + 2 * g.pad - g.k) / g.stride + 1;
    s.out_w = (g.w + 2 * g.pad - g.k) / g.stride + 1;
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<uint8_t> x(g.h * g.w * g.c);
    std::vector<int8_t> w(g.k * g.k * g.c);
    for (auto& v : x) v = static_cast<uint8_t>(byte(rng));
    for (auto& v : w) v = static_cast<int8_t>(byte(rng) - 128);
    std::vector<int32_t> out(s.out_h * s.out_w * g.c);
    const int32_t pad_value = x_signed ? -3 : 128;
    for (auto _ : state) {
      t->depthwise_conv_s32(x.data(), x_signed, pad_value, w.data(), out.data(), s, 0, s.out_h);
      benchmark::ClobberMemory();
    }
    const double ops = 2.0 * static_cast<double>(s.out_h * s.out_w * g.c * g.k * g.k) *
                       static_cast<double>(state.iterations());
    state.counters["OPS"] = benchmark::Counter(ops, benchmark::Counter::kIsRate);
  })->Unit(benchmark::kMicrosecond);
}

}  // namespace
}  // namespace pyslim

int main(int argc, char** argv) {
  using namespace pyslim;
#if defined(PYSLIM_BENCH_X86)
  if (has(Isa::kAvx512Vnni)) {
    g_vnni_peak = measure_vnni_peak();
    register_peak("peak/vnni_zmm", kVnniOpsPerIter, vnni_peak_loop);
  }
  if (has(Isa::kAvx2)) register_peak("peak/fma_ymm", kFmaYmmOpsPerIter, fma_ymm_peak_loop);
  if (has(Isa::kAvx512)) register_peak("peak/fma_zmm", kFmaZmmOpsPerIter, fma_zmm_peak_loop);
#endif
  for (Isa isa : usable_isas()) {
    if (isa == Isa::kReference) continue;
    for (const Shape& sh : kShapes)
      for (bool s : {false, true}) register_gemm(isa, sh, s);
  }
  for (Isa isa : usable_isas()) {
    if (isa == Isa::kReference) continue;
    for (const DwGeo& g : kDwGeos)
      for (bool s : {false, true}) register_depthwise(isa, g, s);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (g_vnni_peak > 0.0) std::printf("measured VNNI peak (start-up): %.1f GOPS\n", g_vnni_peak * 1e-9);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
