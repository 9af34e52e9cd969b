// google-benchmark for the fake-quantization micro-kernels and drivers, on every usable ISA path,
// side by side with a memcpy of the same traffic (the bandwidth ceiling a memory-bound kernel can reach).
//
// bytes_per_second counts every byte a kernel must read and write (e.g. 8 bytes per element for
// fake_quant_symmetric: x in, y out); memcpy counts source + destination the same way. Times are wall
// clock (UseRealTime), so the 2-thread driver rows are comparable with the 1-thread ones. 1M floats is
// 4 MiB per array: on a machine with a large L3 these are cache-bandwidth figures, not DRAM ones.
//   ./bench_fake_quant --benchmark_min_time=0.2 [--benchmark_filter=avx512]
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "pyslim/fake_quant.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace {

constexpr int64_t kN = 1 << 20;  // 1M floats: 4 MiB per float array

struct Buffers {
  std::vector<float> x, y, g, gx, acc, scale_vec;
  std::vector<int8_t> q8;
  std::vector<int16_t> q16;
  std::vector<int32_t> zp_vec;
  std::vector<uint8_t> mask;  // one bit per element (kernels.h layout)
  float scale = 0.05f;
  int32_t zp = 3;
  Buffers() : x(kN), y(kN), g(kN), gx(kN), acc(kN, 0.0f), scale_vec(kN), q8(kN), q16(kN), zp_vec(kN), mask(kN / 8) {
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> qd(-128, 127);
    for (int64_t i = 0; i < kN; ++i) {
      x[i] = normal(rng);
      g[i] = normal(rng);
      q8[i] = static_cast<int8_t>(qd(rng));
      q16[i] = static_cast<int16_t>(qd(rng) * 100);
      scale_vec[i] = 0.01f + 0.001f * static_cast<float>(i % 97);
      zp_vec[i] = static_cast<int32_t>(i % 7) - 3;
    }
  }
};

Buffers& buffers() {
  static Buffers b;
  return b;
}

void finish(benchmark::State& state, int64_t bytes_per_element) {
  state.SetBytesProcessed(state.iterations() * kN * bytes_per_element);
  state.SetItemsProcessed(state.iterations() * kN);
}

void BM_memcpy(benchmark::State& state) {
  Buffers& b = buffers();
  for (auto _ : state) {
    std::memcpy(b.y.data(), b.x.data(), kN * sizeof(float));
    benchmark::ClobberMemory();
  }
  finish(state, 8);
}

// ---- micro-kernels, called directly ----

void register_kernels(Isa isa) {
  const KernelTable* k = kernel_table(isa);
  const std::string p = std::string("kernel/") + isa_name(isa) + "/";
  auto reg = [&](const std::string& name, int64_t bytes, auto body) {
    benchmark::RegisterBenchmark((p + name).c_str(), [k, bytes, body](benchmark::State& state) {
      Buffers& b = buffers();
      for (auto _ : state) {
        body(*k, b);
        benchmark::ClobberMemory();
      }
      finish(state, bytes);
    })->UseRealTime();
  };
  reg("abs_max", 4, [](const KernelTable& t, Buffers& b) { benchmark::DoNotOptimize(t.abs_max(b.x.data(), kN)); });
  reg("abs_max_accumulate", 12,
      [](const KernelTable& t, Buffers& b) { t.abs_max_accumulate(b.x.data(), kN, b.acc.data()); });
  for (RoundMode mode : {RoundMode::kHalfToEven, RoundMode::kHalfAwayFromZero}) {
    const std::string m = mode == RoundMode::kHalfToEven ? "even" : "away";
    reg("fake_quant_symmetric/" + m, 8, [mode](const KernelTable& t, Buffers& b) {
      t.fake_quant_symmetric(b.x.data(), b.y.data(), kN, &b.scale, 0, 127, mode);
    });
  }
  reg("fake_quant_symmetric/per_element", 12, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_symmetric(b.x.data(), b.y.data(), kN, b.scale_vec.data(), 1, 127, RoundMode::kHalfToEven);
  });
  reg("fake_quant_symmetric_backward/grad_scale", 12, [](const KernelTable& t, Buffers& b) {
    double gs = 0.0;
    t.fake_quant_symmetric_backward(b.x.data(), b.g.data(), b.gx.data(), kN, &b.scale, 0, 127, RoundMode::kHalfToEven,
                                    GradMask::kStrict, &gs);
    benchmark::DoNotOptimize(gs);
  });
  reg("fake_quant_symmetric_backward/no_sum", 12, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_symmetric_backward(b.x.data(), b.g.data(), b.gx.data(), kN, &b.scale, 0, 127, RoundMode::kHalfToEven,
                                    GradMask::kInclusive, nullptr);
  });
  reg("fake_quant_affine", 8, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_affine(b.x.data(), b.y.data(), kN, &b.scale, &b.zp, 0, 0, 255, RoundMode::kHalfToEven);
  });
  reg("fake_quant_affine/per_element", 16, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_affine(b.x.data(), b.y.data(), kN, b.scale_vec.data(), b.zp_vec.data(), 1, -128, 127,
                        RoundMode::kHalfToEven);
  });
  reg("fake_quant_affine_backward/grad_scale_zp", 12, [](const KernelTable& t, Buffers& b) {
    double gs = 0.0, gz = 0.0;
    t.fake_quant_affine_backward(b.x.data(), b.g.data(), b.gx.data(), kN, &b.scale, &b.zp, 0, 0, 255,
                                 RoundMode::kHalfToEven, GradMask::kInclusive, &gs, &gz);
    benchmark::DoNotOptimize(gs);
    benchmark::DoNotOptimize(gz);
  });
  // The clipped-gradient bit mask: the forward writes y and n/8 mask bytes, the backward reads grad and the
  // mask (8.125 bytes per element each, against 12 for the x-based backward). Bytes are counted rounded down.
  reg("fake_quant_affine_mask", 8, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_affine_mask(b.x.data(), b.y.data(), b.mask.data(), 0, kN, &b.scale, &b.zp, 0, 0, 255,
                             RoundMode::kHalfToEven);
  });
  reg("fake_quant_symmetric_mask", 8, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_symmetric_mask(b.x.data(), b.y.data(), b.mask.data(), 0, kN, &b.scale, 0, 127,
                                RoundMode::kHalfToEven, GradMask::kInclusive);
  });
  reg("apply_grad_mask", 8, [](const KernelTable& t, Buffers& b) {
    t.apply_grad_mask(b.g.data(), b.mask.data(), 0, b.gx.data(), kN);
  });
  reg("apply_grad_mask/bit_offset_3", 8, [](const KernelTable& t, Buffers& b) {
    t.apply_grad_mask(b.g.data(), b.mask.data(), 3, b.gx.data(), kN - 8);
  });
  reg("fake_quant_affine_backward/no_sum", 12, [](const KernelTable& t, Buffers& b) {
    t.fake_quant_affine_backward(b.x.data(), b.g.data(), b.gx.data(), kN, &b.scale, &b.zp, 0, 0, 255,
                                 RoundMode::kHalfToEven, GradMask::kInclusive, nullptr, nullptr);
  });
  reg("quantize_int8", 5, [](const KernelTable& t, Buffers& b) {
    t.quantize_int8(b.x.data(), b.q8.data(), kN, &b.scale, &b.zp, 0, -128, 127, RoundMode::kHalfToEven);
  });
  reg("quantize_int16", 6, [](const KernelTable& t, Buffers& b) {
    t.quantize_int16(b.x.data(), b.q16.data(), kN, &b.scale, &b.zp, 0, -32768, 32767, RoundMode::kHalfAwayFromZero);
  });
  reg("dequantize_int8", 5, [](const KernelTable& t, Buffers& b) {
    t.dequantize_int8(b.q8.data(), b.y.data(), kN, &b.scale, &b.zp, 0);
  });
  reg("dequantize_int16", 6, [](const KernelTable& t, Buffers& b) {
    t.dequantize_int16(b.q16.data(), b.y.data(), kN, &b.scale, &b.zp, 0);
  });
}

// ---- drivers (fake_quant.h), 1 and 2 threads ----

void register_drivers(Isa isa) {
  const KernelTable* k = kernel_table(isa);
  for (int threads : {1, 2}) {
    const std::string p = std::string("driver/") + isa_name(isa) + "/threads:" + std::to_string(threads) + "/";
    // Per-tensor and per-channel along the last axis (vector mode, inner == 1).
    const ChannelLayout per_tensor{1, 1, kN};
    const ChannelLayout per_channel_last{kN / 1024, 1024, 1};
    benchmark::RegisterBenchmark((p + "fake_quant_symmetric/per_tensor").c_str(), [=](benchmark::State& state) {
      Buffers& b = buffers();
      for (auto _ : state) {
        fake_quant_symmetric(*k, b.x.data(), b.y.data(), per_tensor, &b.scale, 127, RoundMode::kHalfToEven, threads);
        benchmark::ClobberMemory();
      }
      finish(state, 8);
    })->UseRealTime();
    benchmark::RegisterBenchmark((p + "fake_quant_symmetric/per_channel_last").c_str(), [=](benchmark::State& state) {
      Buffers& b = buffers();
      for (auto _ : state) {
        fake_quant_symmetric(*k, b.x.data(), b.y.data(), per_channel_last, b.scale_vec.data(), 127,
                             RoundMode::kHalfToEven, threads);
        benchmark::ClobberMemory();
      }
      finish(state, 8);
    })->UseRealTime();
    benchmark::RegisterBenchmark((p + "fake_quant_affine_backward/per_tensor").c_str(), [=](benchmark::State& state) {
      Buffers& b = buffers();
      for (auto _ : state) {
        double gs = 0.0, gz = 0.0;
        fake_quant_affine_backward(*k, b.x.data(), b.g.data(), b.gx.data(), per_tensor, &b.scale, &b.zp, 0, 255,
                                   RoundMode::kHalfToEven, GradMask::kInclusive, &gs, &gz, threads);
        benchmark::DoNotOptimize(gs);
        benchmark::ClobberMemory();
      }
      finish(state, 12);
    })->UseRealTime();
    benchmark::RegisterBenchmark((p + "abs_max_channels/per_tensor").c_str(), [=](benchmark::State& state) {
      Buffers& b = buffers();
      for (auto _ : state) {
        float out;
        abs_max_channels(*k, b.x.data(), per_tensor, &out, threads);
        benchmark::DoNotOptimize(out);
      }
      finish(state, 4);
    })->UseRealTime();
  }
}

}  // namespace
}  // namespace pyslim

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("memcpy", pyslim::BM_memcpy)->UseRealTime();
  for (pyslim::Isa isa : pyslim::usable_isas()) pyslim::register_kernels(isa);
  for (pyslim::Isa isa : pyslim::usable_isas()) pyslim::register_drivers(isa);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
