// Standalone parity check + timing of the CUDA int8 GEMM, its float epilogue and the depthwise convolution
// (csrc/kernels/cuda/gemm.cu) against the CPU reference table (pyslim::kernel_table(Isa::kReference)); the
// general convolution against the CPU driver conv2d_nhwc on that table.
// Needs a GPU (sm_80 or newer for the tensor-core path). CMake target pyslim_cuda_parity (configure with
// -DPYSLIM_ENABLE_CUDA=ON -DPYSLIM_BUILD_TESTS=ON); bench/cuda_check.sh builds and runs it on a GPU machine.
//   BUILD/pyslim_cuda_parity           # parity cases, then timings
//   BUILD/pyslim_cuda_parity --quick   # parity cases only (no timing, no large shapes)
//
// Integer results (gemm_s32, depthwise_conv_s32) must match the reference exactly, and the padding columns of
// a strided C must be left untouched. The epilogue must match a host evaluation of the formula of
// cuda_kernels.h bit-for-bit (NaN matches any NaN). The last line is "N passed, M failed"; the exit status is
// non-zero when anything failed.
#include <cuda_runtime.h>

#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyslim/cuda_kernels.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"

namespace {

#define CUDA_OK(expr)                                                                                       \
  do {                                                                                                      \
    cudaError_t err_ = (expr);                                                                              \
    if (err_ != cudaSuccess) {                                                                              \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_));        \
      std::exit(2);                                                                                         \
    }                                                                                                       \
  } while (0)

int g_passed = 0;
int g_failed = 0;

void report(bool ok, const std::string& what, const std::string& detail = "") {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s %s\n", what.c_str(), detail.c_str());
  }
}

// A device buffer of `bytes` plus `offset` leading bytes (to misalign the data pointer on purpose).
struct DeviceBuffer {
  void* base = nullptr;
  size_t offset = 0;
  DeviceBuffer(size_t bytes, size_t off) : offset(off) { CUDA_OK(cudaMalloc(&base, bytes + off + 16)); }
  ~DeviceBuffer() { cudaFree(base); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* get() const {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
  }
};

template <typename T>
void upload(const DeviceBuffer& d, const std::vector<T>& h) {
  CUDA_OK(cudaMemcpy(d.get<void>(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
std::vector<T> download(const DeviceBuffer& d, size_t count) {
  std::vector<T> h(count);
  CUDA_OK(cudaMemcpy(h.data(), d.get<void>(), count * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

std::vector<uint8_t> random_bytes(size_t n, std::mt19937& rng) {
  std::vector<uint8_t> v(n);
  std::uniform_int_distribution<int> dist(0, 255);
  for (auto& b : v) b = static_cast<uint8_t>(dist(rng));
  return v;
}

const pyslim::KernelTable& reference() {
  const pyslim::KernelTable* t = pyslim::kernel_table(pyslim::Isa::kReference);
  if (t == nullptr) throw std::runtime_error("no reference kernel table");
  return *t;
}

// ---------------------------------------------------------------------------------------------------------
// gemm_s32
// ---------------------------------------------------------------------------------------------------------

struct GemmCase {
  int64_t M, N, K;
  int64_t lda_pad = 0;   // lda = K + lda_pad
  int64_t ldc_pad = 0;   // ldc = N + ldc_pad
  size_t a_offset = 0;   // misaligns A by this many bytes
  size_t w_offset = 0;
  size_t c_offset = 0;   // bytes (multiple of 4)
};

constexpr int32_t kSentinel = 0x5eadbeef;

// Reference C (M x N, dense) for the given A / W bytes.
std::vector<int32_t> reference_gemm(const std::vector<uint8_t>& A, bool a_signed, int64_t lda,
                                    const std::vector<uint8_t>& W, int64_t M, int64_t N, int64_t K) {
  std::vector<int32_t> C(static_cast<size_t>(M * N), 0);
  if (M == 0 || N == 0 || K == 0) return C;
  const pyslim::KernelTable& t = reference();
  std::vector<uint8_t> packed(static_cast<size_t>(t.gemm_packed_size(N, K)) + 64);
  t.gemm_pack(reinterpret_cast<const int8_t*>(W.data()), N, K, packed.data());
  t.gemm_s32(A.data(), a_signed, lda, packed.data(), M, N, K, 0, N, C.data(), N);
  return C;
}

void check_gemm(const GemmCase& c, bool a_signed, std::mt19937& rng) {
  const int64_t lda = c.K + c.lda_pad, ldc = c.N + c.ldc_pad;
  const size_t a_bytes = static_cast<size_t>(c.M > 0 ? (c.M - 1) * lda + c.K : 0);
  const std::vector<uint8_t> A = random_bytes(a_bytes, rng);
  const std::vector<uint8_t> W = random_bytes(static_cast<size_t>(c.N * c.K), rng);
  const size_t c_elems = static_cast<size_t>(c.M > 0 ? (c.M - 1) * ldc + c.N : 0);
  DeviceBuffer dA(a_bytes, c.a_offset), dW(W.size(), c.w_offset), dC(c_elems * 4, c.c_offset);
  upload(dA, A);
  upload(dW, W);
  upload(dC, std::vector<int32_t>(c_elems, kSentinel));
  char name[160];
  std::snprintf(name, sizeof(name), "gemm_s32 %s M=%" PRId64 " N=%" PRId64 " K=%" PRId64 " lda=%" PRId64
                " ldc=%" PRId64 " offsets=%zu/%zu/%zu", a_signed ? "s8" : "u8", c.M, c.N, c.K, lda, ldc,
                c.a_offset, c.w_offset, c.c_offset);
  try {
    pyslim::cuda::gemm_s32(dA.get<void>(), a_signed, lda, dW.get<int8_t>(), c.M, c.N, c.K, dC.get<int32_t>(), ldc, 0);
    CUDA_OK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    report(false, name, e.what());
    return;
  }
  const std::vector<int32_t> got = download<int32_t>(dC, c_elems);
  const std::vector<int32_t> want = reference_gemm(A, a_signed, lda, W, c.M, c.N, c.K);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < ldc && m * ldc + n < static_cast<int64_t>(c_elems); ++n) {
      const int32_t g = got[static_cast<size_t>(m * ldc + n)];
      const int32_t w = n < c.N ? want[static_cast<size_t>(m * c.N + n)] : kSentinel;
      if (g != w) {
        char detail[128];
        std::snprintf(detail, sizeof(detail), "at m=%" PRId64 " n=%" PRId64 ": got %d want %d%s", m, n, g, w,
                      n >= c.N ? " (padding overwritten)" : "");
        report(false, name, detail);
        return;
      }
    }
  }
  report(true, name);
}

// ---------------------------------------------------------------------------------------------------------
// gemm_epilogue_f32
// ---------------------------------------------------------------------------------------------------------

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

void check_epilogue(int64_t M, int64_t N, bool per_row, bool with_bias, bool with_nan, int activation,
                    std::mt19937& rng) {
  const int64_t ldacc = N + 3, ldo = N + 5;
  std::uniform_int_distribution<int32_t> acc_dist(-(1 << 30), 1 << 30);
  std::uniform_int_distribution<int32_t> small_acc(-50000, 50000);
  std::uniform_int_distribution<int32_t> colsum_dist(-(1 << 20), 1 << 20);
  std::uniform_int_distribution<int32_t> zp_dist(0, 255);
  std::uniform_real_distribution<float> scale_dist(1e-4f, 0.1f);
  std::uniform_real_distribution<float> bias_dist(-3.0f, 3.0f);
  std::vector<int32_t> acc(static_cast<size_t>(M * ldacc));
  for (size_t i = 0; i < acc.size(); ++i) acc[i] = (i % 3 == 0) ? acc_dist(rng) : small_acc(rng);
  std::vector<float> row_scales(static_cast<size_t>(M)), weight_scale(static_cast<size_t>(N)),
      bias(static_cast<size_t>(N));
  std::vector<int32_t> row_zps(static_cast<size_t>(M)), col_sums(static_cast<size_t>(N));
  for (auto& v : row_scales) v = scale_dist(rng);
  for (auto& v : row_zps) v = zp_dist(rng);
  for (auto& v : weight_scale) v = scale_dist(rng);
  for (auto& v : col_sums) v = colsum_dist(rng);
  for (auto& v : bias) v = bias_dist(rng);
  if (with_nan && N > 2) {
    bias[1] = NAN;
    weight_scale[2] = INFINITY;
  }
  const float act_scale = 0.0123f;
  const int32_t act_zp = 131;

  DeviceBuffer d_acc(acc.size() * 4, 0), d_rs(row_scales.size() * 4, 0), d_rz(row_zps.size() * 4, 0),
      d_ws(weight_scale.size() * 4, 0), d_cs(col_sums.size() * 4, 0), d_b(bias.size() * 4, 0),
      d_out(static_cast<size_t>(M * ldo) * 4, 0);
  upload(d_acc, acc);
  upload(d_rs, row_scales);
  upload(d_rz, row_zps);
  upload(d_ws, weight_scale);
  upload(d_cs, col_sums);
  upload(d_b, bias);
  char name[160];
  std::snprintf(name, sizeof(name), "gemm_epilogue_f32 M=%" PRId64 " N=%" PRId64 " %s bias=%d nan=%d act=%d", M, N,
                per_row ? "per-row" : "per-tensor", with_bias, with_nan, activation);
  try {
    pyslim::cuda::gemm_epilogue_f32(d_acc.get<int32_t>(), ldacc, M, N, act_scale, act_zp,
                                    per_row ? d_rs.get<float>() : nullptr, per_row ? d_rz.get<int32_t>() : nullptr,
                                    d_ws.get<float>(), d_cs.get<int32_t>(), with_bias ? d_b.get<float>() : nullptr,
                                    activation, d_out.get<float>(), ldo, 0);
    CUDA_OK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    report(false, name, e.what());
    return;
  }
  const std::vector<float> got = download<float>(d_out, static_cast<size_t>(M * ldo));
  for (int64_t m = 0; m < M; ++m) {
    const float s = per_row ? row_scales[m] : act_scale;
    const int64_t zp = per_row ? row_zps[m] : act_zp;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t d = static_cast<int64_t>(acc[m * ldacc + n]) - zp * static_cast<int64_t>(col_sums[n]);
      volatile float multiplier = s * weight_scale[n];  // volatile: one rounding per operation, in this order
      volatile float y = static_cast<float>(d) * multiplier;
      if (with_bias) y = y + bias[n];
      float v = y;
      if (activation >= 1) v = v < 0.0f ? 0.0f : v;
      if (activation == 2) v = 6.0f < v ? 6.0f : v;
      const float g = got[static_cast<size_t>(m * ldo + n)];
      if (!same_float(g, v)) {
        char detail[160];
        std::snprintf(detail, sizeof(detail), "at m=%" PRId64 " n=%" PRId64 ": got %.9g want %.9g", m, n, g, v);
        report(false, name, detail);
        return;
      }
    }
  }
  report(true, name);
}

// ---------------------------------------------------------------------------------------------------------
// depthwise_conv_s32
// ---------------------------------------------------------------------------------------------------------

// Reports `name` passed when got == want, else the first differing element.
void report_equal(const std::vector<int32_t>& got, const std::vector<int32_t>& want, const char* name) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i]) {
      char detail[96];
      std::snprintf(detail, sizeof(detail), "at flat index %zu: got %d want %d", i, got[i], want[i]);
      report(false, name, detail);
      return;
    }
  }
  report(true, name);
}

pyslim::DepthwiseShape dw_shape(int64_t b, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw, int64_t stride,
                                int64_t pad, int64_t dil) {
  pyslim::DepthwiseShape s{};
  s.batch = b;
  s.height = h;
  s.width = w;
  s.channels = c;
  s.kernel_h = kh;
  s.kernel_w = kw;
  s.stride_h = stride;
  s.stride_w = stride;
  s.pad_h = pad;
  s.pad_w = pad;
  s.dilation_h = dil;
  s.dilation_w = dil;
  s.out_h = (h + 2 * pad - dil * (kh - 1) - 1) / stride + 1;
  s.out_w = (w + 2 * pad - dil * (kw - 1) - 1) / stride + 1;
  return s;
}

void check_depthwise(const pyslim::DepthwiseShape& s, bool x_signed, int32_t pad_value, size_t out_offset,
                     std::mt19937& rng) {
  const std::vector<uint8_t> x = random_bytes(static_cast<size_t>(s.batch * s.height * s.width * s.channels), rng);
  const std::vector<uint8_t> w = random_bytes(static_cast<size_t>(s.kernel_h * s.kernel_w * s.channels), rng);
  const size_t out_elems = static_cast<size_t>(s.batch * s.out_h * s.out_w * s.channels);
  DeviceBuffer dx(x.size(), 0), dw(w.size(), 0), dout(out_elems * 4, out_offset);
  upload(dx, x);
  upload(dw, w);
  upload(dout, std::vector<int32_t>(out_elems, kSentinel));
  char name[200];
  std::snprintf(name, sizeof(name),
                "depthwise_conv_s32 %s N=%" PRId64 " H=%" PRId64 " W=%" PRId64 " C=%" PRId64 " k=%" PRId64 "x%" PRId64
                " s=%" PRId64 " p=%" PRId64 " d=%" PRId64 " pad_value=%d out_offset=%zu",
                x_signed ? "s8" : "u8", s.batch, s.height, s.width, s.channels, s.kernel_h, s.kernel_w, s.stride_h,
                s.pad_h, s.dilation_h, pad_value, out_offset);
  try {
    pyslim::cuda::depthwise_conv_s32(dx.get<void>(), x_signed, pad_value, dw.get<int8_t>(), dout.get<int32_t>(), s, 0);
    CUDA_OK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    report(false, name, e.what());
    return;
  }
  const std::vector<int32_t> got = download<int32_t>(dout, out_elems);
  std::vector<int32_t> want(out_elems, 0);
  reference().depthwise_conv_s32(x.data(), x_signed, pad_value, reinterpret_cast<const int8_t*>(w.data()),
                                 want.data(), s, 0, s.batch * s.out_h);
  report_equal(got, want, name);
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_s32
// ---------------------------------------------------------------------------------------------------------

struct ConvCase {
  int64_t b, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

pyslim::ConvShape conv_shape(const ConvCase& c) {
  pyslim::ConvShape s{};
  s.batch = c.b;
  s.in_h = c.h;
  s.in_w = c.w;
  s.in_c = c.cin;
  s.out_c = c.cout;
  s.kernel_h = c.kh;
  s.kernel_w = c.kw;
  s.stride_h = c.sh;
  s.stride_w = c.sw;
  s.pad_h = c.ph;
  s.pad_w = c.pw;
  s.dilation_h = c.dh;
  s.dilation_w = c.dw;
  s.groups = c.groups;
  s.out_h = (c.h + 2 * c.ph - c.dh * (c.kh - 1) - 1) / c.sh + 1;
  s.out_w = (c.w + 2 * c.pw - c.dw * (c.kw - 1) - 1) / c.sw + 1;
  return s;
}

// Against the CPU driver conv2d_nhwc on the reference table with an int32 epilogue (exact sums).
void check_conv(const ConvCase& c, bool x_signed, int32_t pad_value, std::mt19937& rng) {
  const pyslim::ConvShape s = conv_shape(c);
  const int64_t cin_g = s.in_c / s.groups, cout_g = s.out_c / s.groups, kg = s.kernel_h * s.kernel_w * cin_g;
  const int64_t pixels = s.batch * s.out_h * s.out_w;
  const std::vector<uint8_t> x = random_bytes(static_cast<size_t>(s.batch * s.in_h * s.in_w * s.in_c), rng);
  const std::vector<uint8_t> w = random_bytes(static_cast<size_t>(s.out_c * kg), rng);
  const size_t out_elems = static_cast<size_t>(pixels * s.out_c);
  const int64_t ws_bytes = pyslim::cuda::conv2d_workspace_bytes(s);
  DeviceBuffer dx(x.size(), 0), dw(w.size(), 0), dout(out_elems * 4, 0), dws(static_cast<size_t>(ws_bytes), 0);
  upload(dx, x);
  upload(dw, w);
  upload(dout, std::vector<int32_t>(out_elems, kSentinel));
  char name[220];
  std::snprintf(name, sizeof(name),
                "conv2d_s32 %s N=%" PRId64 " H=%" PRId64 " W=%" PRId64 " C=%" PRId64 "->%" PRId64 " k=%" PRId64
                "x%" PRId64 " s=%" PRId64 ",%" PRId64 " p=%" PRId64 ",%" PRId64 " d=%" PRId64 ",%" PRId64
                " g=%" PRId64 " pad_value=%d",
                x_signed ? "s8" : "u8", c.b, c.h, c.w, c.cin, c.cout, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw,
                c.groups, pad_value);
  try {
    pyslim::cuda::conv2d_s32(dx.get<void>(), x_signed, pad_value, dw.get<int8_t>(), dout.get<int32_t>(), s,
                             dws.get<void>(), 0);
    CUDA_OK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    report(false, name, e.what());
    return;
  }
  const std::vector<int32_t> got = download<int32_t>(dout, out_elems);
  const pyslim::KernelTable& t = reference();
  const int64_t group_stride = (t.gemm_packed_size(cout_g, kg) + 63) / 64 * 64;
  std::vector<uint8_t> packed(static_cast<size_t>(group_stride * s.groups) + 64);
  for (int64_t g = 0; g < s.groups; ++g)
    t.gemm_pack(reinterpret_cast<const int8_t*>(w.data()) + g * cout_g * kg, cout_g, kg, packed.data() + g * group_stride);
  pyslim::GemmEpilogue e;
  e.kind = pyslim::GemmEpilogue::kInt32;
  std::vector<int32_t> want(out_elems, 0);
  pyslim::conv2d_nhwc(t, x.data(), x_signed, pad_value, packed.data(), group_stride, s, e, want.data(), 1);
  report_equal(got, want, name);
}

// ---------------------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------------------

template <class F>
double time_ms(F&& f, int min_iters = 10, double min_ms = 200.0) {
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) f();  // warm-up (also sets the kernel attributes)
  CUDA_OK(cudaDeviceSynchronize());
  int iters = min_iters;
  double per = 0.0;
  for (;;) {
    CUDA_OK(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) f();
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    per = ms / iters;
    if (ms >= min_ms || iters >= (1 << 16)) break;
    iters *= 4;
  }
  CUDA_OK(cudaEventDestroy(start));
  CUDA_OK(cudaEventDestroy(stop));
  return per;
}

void time_gemm(int64_t M, int64_t N, int64_t K, bool a_signed, bool verify, std::mt19937& rng) {
  const std::vector<uint8_t> A = random_bytes(static_cast<size_t>(M * K), rng);
  const std::vector<uint8_t> W = random_bytes(static_cast<size_t>(N * K), rng);
  DeviceBuffer dA(A.size(), 0), dW(W.size(), 0), dC(static_cast<size_t>(M * N) * 4, 0);
  upload(dA, A);
  upload(dW, W);
  auto run = [&] { pyslim::cuda::gemm_s32(dA.get<void>(), a_signed, K, dW.get<int8_t>(), M, N, K, dC.get<int32_t>(), N, 0); };
  if (verify) {
    run();
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<int32_t> got = download<int32_t>(dC, static_cast<size_t>(M * N));
    const std::vector<int32_t> want = reference_gemm(A, a_signed, K, W, M, N, K);
    char name[96];
    std::snprintf(name, sizeof(name), "gemm_s32 timed shape %s M=%" PRId64 " N=%" PRId64 " K=%" PRId64,
                  a_signed ? "s8" : "u8", M, N, K);
    report(got == want, name);
  }
  const double ms = time_ms(run);
  const double tops = 2.0 * M * N * K / (ms * 1e-3) / 1e12;
  std::printf("TIME gemm_s32 %s M=%-5" PRId64 " N=%-5" PRId64 " K=%-5" PRId64 " %9.4f ms  %8.2f TOPS\n",
              a_signed ? "s8" : "u8", M, N, K, ms, tops);
}

void time_epilogue_and_depthwise(std::mt19937& rng) {
  {
    const int64_t M = 3136 * 8, N = 64;
    DeviceBuffer acc(static_cast<size_t>(M * N) * 4, 0), out(static_cast<size_t>(M * N) * 4, 0),
        ws(static_cast<size_t>(N) * 4, 0), cs(static_cast<size_t>(N) * 4, 0), b(static_cast<size_t>(N) * 4, 0);
    CUDA_OK(cudaMemset(acc.get<void>(), 0, static_cast<size_t>(M * N) * 4));
    CUDA_OK(cudaMemset(ws.get<void>(), 0, static_cast<size_t>(N) * 4));
    CUDA_OK(cudaMemset(cs.get<void>(), 0, static_cast<size_t>(N) * 4));
    CUDA_OK(cudaMemset(b.get<void>(), 0, static_cast<size_t>(N) * 4));
    const double ms = time_ms([&] {
      pyslim::cuda::gemm_epilogue_f32(acc.get<int32_t>(), N, M, N, 0.01f, 3, nullptr, nullptr, ws.get<float>(),
                                      cs.get<int32_t>(), b.get<float>(), 2, out.get<float>(), N, 0);
    });
    std::printf("TIME gemm_epilogue_f32 M=%" PRId64 " N=%" PRId64 " %9.4f ms  %8.1f GB/s (acc in + out)\n", M, N, ms,
                8.0 * M * N / (ms * 1e-3) / 1e9);
  }
  {
    const pyslim::DepthwiseShape s = dw_shape(8, 112, 112, 96, 3, 3, 1, 1, 1);
    const size_t in = static_cast<size_t>(s.batch * s.height * s.width * s.channels);
    const size_t out = static_cast<size_t>(s.batch * s.out_h * s.out_w * s.channels);
    DeviceBuffer dx(in, 0), dw(static_cast<size_t>(9 * s.channels), 0), dout(out * 4, 0);
    upload(dx, random_bytes(in, rng));
    upload(dw, random_bytes(static_cast<size_t>(9 * s.channels), rng));
    const double ms = time_ms([&] {
      pyslim::cuda::depthwise_conv_s32(dx.get<void>(), false, 128, dw.get<int8_t>(), dout.get<int32_t>(), s, 0);
    });
    std::printf("TIME depthwise_conv_s32 u8 8x112x112x96 k3 s1 %9.4f ms  %8.1f GB/s (x in + out)\n", ms,
                (in + 4.0 * out) / (ms * 1e-3) / 1e9);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device\n");
    return 2;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  std::mt19937 rng(12345);

  // gemm_s32: skinny (M <= 8), every tile configuration, each load width (16-byte cp.async, 4-byte, 1-byte),
  // split-K (few output tiles, long K: atomics into a zeroed C), K tails, M/N edges, strided and misaligned
  // operands, K = 0, and an N large enough for the grid-y loop. Which tile / split a shape gets depends on the
  // device's SM count; the comments assume ~132 SMs (H100/H200).
  std::vector<GemmCase> gemm_cases = {
      {1, 1, 1},
      {1, 7, 13},
      {3, 5, 27},
      {8, 100, 64},
      {8, 256, 4096},
      {1, 300, 1000, 5, 0, 3},                // skinny, unaligned A
      {5, 40, 48, 16, 3},                     // skinny, strided A (16-aligned) and C
      {9, 33, 65},                            // mma, byte loads
      {17, 33, 64},                           // mma, cp.async, one k tile
      {64, 64, 64},
      {65, 65, 129},
      {129, 130, 100},                        // 4-byte loads, K tail
      {200, 64, 576},
      {257, 129, 1040, 16, 7},                // strided A, odd ldc (no int2 stores)
      {300, 300, 48},                         // K < 64
      {1000, 72, 27},                         // first-conv im2col shape
      {33, 4100, 16},
      {100, 100, 256, 0, 0, 16, 0, 4},        // C misaligned for int2
      {100, 100, 256, 4, 0, 4, 0, 0},         // 4-byte-aligned A: 4-byte loads
      {100, 100, 256, 0, 0, 0, 4, 0},         // 4-byte-aligned W
      {5, 7, 0},                              // K = 0: zeros
      {0, 7, 5},                              // empty: no launch
      {7, 0, 5},
      {2048, 2048, 128},                      // 128x128 tiles
      {1024, 1152, 64},                       // 128x64 tiles (on ~132 SMs)
      {600, 700, 300, 32, 9},
      {50, 70, 1001},                         // split-K with byte loads
      {50, 70, 1000, 4, 0, 4},                // split-K with 4-byte loads
      {20, 30, 4096, 0, 2},                   // split-K (up to 16 splits), strided C
  };
  // More than 65535 n tiles of 128 (the 128x128 tile is chosen here): the kernel's grid-y loop.
  if (!quick) gemm_cases.push_back({9, 65535LL * 128 + 77, 16});
  for (const GemmCase& c : gemm_cases) {
    check_gemm(c, false, rng);
    check_gemm(c, true, rng);
  }

  for (int act = 0; act <= 2; ++act) {
    check_epilogue(1, 1, false, false, false, act, rng);
    check_epilogue(7, 33, true, true, false, act, rng);
    check_epilogue(300, 70, false, true, true, act, rng);
    check_epilogue(65, 1000, true, false, true, act, rng);
  }
  check_epilogue(600000, 3, true, true, false, 1, rng);  // more row blocks than grid.y (65535): the row loop

  struct DwCase {
    int64_t b, h, w, c, kh, kw, stride, pad, dil;
  };
  const DwCase dw_cases[] = {
      {1, 1, 1, 1, 1, 1, 1, 0, 1},  {1, 5, 5, 3, 3, 3, 1, 1, 1},    {2, 7, 9, 4, 3, 3, 2, 1, 1},
      {2, 8, 8, 8, 5, 5, 1, 2, 1},  {1, 9, 11, 17, 3, 3, 1, 2, 2},  {3, 14, 14, 32, 3, 3, 2, 0, 1},
      {1, 6, 6, 12, 7, 7, 1, 3, 1}, {1, 4, 4, 5, 3, 3, 1, 3, 1},    {2, 13, 7, 96, 3, 3, 2, 1, 1},
  };
  // conv2d_s32: 1x1, 3x3 with padding, strides, dilation, groups (and depthwise through the general path),
  // an asymmetric kernel, a stem, and a padding larger than the kernel's reach.
  const ConvCase conv_cases[] = {
      {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1},      {2, 7, 7, 64, 256, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {1, 9, 7, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1},    {2, 11, 10, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 8},
      {1, 12, 12, 17, 34, 5, 5, 1, 1, 2, 2, 2, 2, 17}, {2, 8, 9, 12, 24, 3, 1, 1, 2, 1, 0, 1, 1, 4},
      {1, 15, 15, 3, 7, 7, 7, 2, 2, 3, 3, 1, 1, 1},    {1, 6, 70, 10, 6, 3, 3, 1, 3, 1, 1, 1, 2, 2},
      {2, 4, 4, 5, 9, 3, 3, 1, 1, 3, 3, 1, 1, 1},      {1, 28, 28, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1},
  };
  for (const ConvCase& c : conv_cases) {
    check_conv(c, false, 131, rng);
    check_conv(c, true, -7, rng);
  }

  for (const DwCase& d : dw_cases) {
    const pyslim::DepthwiseShape s = dw_shape(d.b, d.h, d.w, d.c, d.kh, d.kw, d.stride, d.pad, d.dil);
    check_depthwise(s, false, 128, 0, rng);
    check_depthwise(s, true, -3, 0, rng);
    check_depthwise(s, false, 7, 4, rng);  // out only 4-byte aligned: the one-channel kernel
  }

  if (!quick) {
    const int64_t shapes[][3] = {{128, 4096, 4096}, {512, 1024, 1024}, {3136, 64, 576}};
    for (const auto& s : shapes) {
      time_gemm(s[0], s[1], s[2], false, true, rng);
      time_gemm(s[0], s[1], s[2], true, false, rng);
    }
    time_epilogue_and_depthwise(rng);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
