// Binders for the int8 GEMM / convolution drivers. Packed weights live in a uint8 tensor that Python
// holds: a 64-byte header (magic, version, the ISA path that packed it, shape) followed by one block per
// group in that path's private layout. Every call checks the header against the active path, so a buffer
// packed for another CPU path is refused with a clear error instead of being misread.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>

#include "pyslim/gemm.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"
#include "tensor_arg.h"
#if defined(PYSLIM_WITH_CUDA)
#include "pyslim/cuda_kernels.h"
#endif

namespace py = pybind11;

namespace pyslim {
namespace binding {
namespace {

constexpr uint32_t kMagic = 0x4d4c5350;  // "PSLM"
constexpr uint32_t kVersion = 1;
constexpr int64_t kHeaderBytes = 64;

struct PackedHeader {
  uint32_t magic;
  uint32_t version;
  int32_t isa;
  int32_t groups;
  int64_t n_per_group;
  int64_t k;
  int64_t group_stride;
};
static_assert(sizeof(PackedHeader) <= kHeaderBytes, "header must fit");

int64_t round_up64(int64_t v) { return (v + 63) / 64 * 64; }

int64_t group_stride_for(const KernelTable& t, int64_t n_per_group, int64_t k) {
  return round_up64(t.gemm_packed_size(n_per_group, k));
}

int64_t packed_nbytes(int64_t n, int64_t k, int64_t groups) {
  if (n < 1 || k < 1 || groups < 1 || n % groups != 0)
    throw py::value_error("packed weights need n >= 1, k >= 1, groups >= 1 and n divisible by groups; got n=" +
                          std::to_string(n) + ", k=" + std::to_string(k) + ", groups=" + std::to_string(groups));
  return kHeaderBytes + groups * group_stride_for(active_kernels(), n / groups, k);
}

std::optional<TensorArg> optional_arg(const std::optional<py::capsule>& cap, const char* name) {
  if (!cap) return std::nullopt;
  return tensor_arg(*cap, name);
}

Activation activation_arg(int a) {
  if (a < 0 || a > 3) throw py::value_error("activation must be 0 (none), 1 (relu), 2 (relu6) or 3 (gelu); got " +
                                            std::to_string(a));
  return static_cast<Activation>(a);
}

void require_cpu(const TensorArg& t) {
  if (t.on_cuda())
    throw py::value_error(t.name + " is a CUDA tensor; the int8 GEMM/conv ops run on the CPU in this version");
}

// Validates a packed buffer against the active path; returns its header.
PackedHeader read_packed(const TensorArg& packed) {
  if (!(packed.t->dtype.code == dlpack::kUInt && packed.t->dtype.bits == 8 && packed.ndim() == 1))
    throw py::type_error("packed must be a 1-D uint8 tensor made by pack_int8_weight; got " + packed.dtype_name() +
                         " of shape " + packed.shape_string());
  packed.require_contiguous();
  require_cpu(packed);
  if (packed.numel() < kHeaderBytes) throw py::value_error("packed is too small to hold packed weights");
  if (reinterpret_cast<uintptr_t>(packed.data()) % 64 != 0)
    throw py::value_error("packed must be 64-byte aligned (allocate it with torch, do not slice it)");
  PackedHeader h;
  std::memcpy(&h, packed.data(), sizeof(h));
  if (h.magic != kMagic || h.version != kVersion)
    throw py::value_error("packed does not hold pyslim packed weights (bad magic/version)");
  if (h.isa != static_cast<int32_t>(active_isa()))
    throw py::value_error(std::string("packed was packed for the '") + isa_name(static_cast<Isa>(h.isa)) +
                          "' path but the active path is '" + isa_name(active_isa()) +
                          "'; repack the weights (Int8Linear/Int8Conv2d do this automatically)");
  if (h.group_stride != group_stride_for(active_kernels(), h.n_per_group, h.k) ||
      packed.numel() != kHeaderBytes + h.groups * h.group_stride)
    throw py::value_error("packed has an inconsistent size for its header");
  return h;
}

const void* packed_data(const TensorArg& packed) { return packed.ptr<uint8_t>() + kHeaderBytes; }

void pack_weight(const py::capsule& w_cap, const py::capsule& packed_cap, const py::capsule& col_sums_cap,
                 int64_t groups) {
  const TensorArg w = tensor_arg(w_cap, "weight");
  w.require_dtype(DType::kInt8).require_contiguous();
  require_cpu(w);
  if (w.ndim() != 2) throw py::value_error("weight must be 2-D (N, K) int8; got shape " + w.shape_string());
  const int64_t n = w.t->shape[0], k = w.t->shape[1];
  const int64_t nbytes = packed_nbytes(n, k, groups);
  const TensorArg packed = tensor_arg(packed_cap, "packed");
  if (!(packed.t->dtype.code == dlpack::kUInt && packed.t->dtype.bits == 8 && packed.ndim() == 1 &&
        packed.numel() == nbytes))
    throw py::value_error("packed must be a 1-D uint8 tensor of gemm_packed_nbytes = " + std::to_string(nbytes) +
                          " bytes; got " + packed.dtype_name() + " of shape " + packed.shape_string());
  packed.require_contiguous();
  require_cpu(packed);
  if (reinterpret_cast<uintptr_t>(packed.data()) % 64 != 0) throw py::value_error("packed must be 64-byte aligned");
  const TensorArg sums = tensor_arg(col_sums_cap, "col_sums");
  sums.require_dtype(DType::kInt32).require_contiguous().require_numel(n, "one per output channel");
  require_cpu(sums);
  const KernelTable& t = active_kernels();
  const int64_t ng = n / groups;
  PackedHeader h{kMagic, kVersion, static_cast<int32_t>(active_isa()), static_cast<int32_t>(groups), ng, k,
                 group_stride_for(t, ng, k)};
  py::gil_scoped_release release;
  auto* base = packed.ptr<uint8_t>();
  std::memset(base, 0, static_cast<size_t>(nbytes));
  std::memcpy(base, &h, sizeof(h));
  const int8_t* wp = w.ptr<int8_t>();
  for (int64_t g = 0; g < groups; ++g) t.gemm_pack(wp + g * ng * k, ng, k, base + kHeaderBytes + g * h.group_stride);
  int32_t* cs = sums.ptr<int32_t>();
  for (int64_t r = 0; r < n; ++r) {
    int32_t s = 0;
    for (int64_t i = 0; i < k; ++i) s += wp[r * k + i];
    cs[r] = s;
  }
}

py::dict packed_info(const py::capsule& packed_cap) {
  const TensorArg packed = tensor_arg(packed_cap, "packed");
  PackedHeader h;
  if (packed.numel() < kHeaderBytes) throw py::value_error("packed is too small to hold packed weights");
  std::memcpy(&h, packed.data(), sizeof(h));
  if (h.magic != kMagic) throw py::value_error("packed does not hold pyslim packed weights");
  py::dict d;
  d["isa"] = isa_name(static_cast<Isa>(h.isa));
  d["groups"] = h.groups;
  d["n"] = h.n_per_group * h.groups;
  d["k"] = h.k;
  return d;
}

// Epilogue arguments shared by the float-output ops.
GemmEpilogue float_epilogue(const TensorArg& x, int64_t n, const TensorArg& col_sums, const TensorArg& weight_scale,
                            const std::optional<TensorArg>& bias, int activation) {
  col_sums.require_dtype(DType::kInt32).require_contiguous().require_numel(n, "one per output channel");
  weight_scale.require_dtype(DType::kFloat32).require_contiguous().require_numel(n, "one per output channel");
  for (const TensorArg* t : {&col_sums, &weight_scale}) require_cpu(*t);
  if (bias) {
    bias->require_dtype(DType::kFloat32).require_contiguous().require_numel(n, "one per output channel");
    require_cpu(*bias);
  }
  (void)x;
  GemmEpilogue e;
  e.kind = GemmEpilogue::kFloat32;
  e.weight_scale = weight_scale.ptr<float>();
  e.col_sums = col_sums.ptr<int32_t>();
  e.bias = bias ? bias->ptr<float>() : nullptr;
  e.activation = activation_arg(activation);
  return e;
}

void require_rows(const TensorArg& t, int64_t cols, const char* what) {
  if (t.ndim() != 2 || t.t->shape[1] != cols)
    throw py::value_error(t.name + " must be 2-D (M, " + std::to_string(cols) + ") " + what + "; got shape " +
                          t.shape_string());
}

void linear_dynamic(const py::capsule& x_cap, const py::capsule& packed_cap, const py::capsule& col_sums_cap,
                    const py::capsule& scale_cap, const std::optional<py::capsule>& bias_cap,
                    const py::capsule& out_cap, bool per_row, bool symmetric, int activation, int threads) {
  const TensorArg packed = tensor_arg(packed_cap, "packed");
  const PackedHeader h = read_packed(packed);
  if (h.groups != 1) throw py::value_error("packed holds grouped (conv) weights; linear needs groups == 1");
  const int64_t n = h.n_per_group, k = h.k;
  const TensorArg x = tensor_arg(x_cap, "x");
  x.require_dtype(DType::kFloat32).require_contiguous();
  require_cpu(x);
  require_rows(x, k, "float32 activations");
  const TensorArg out = tensor_arg(out_cap, "out");
  out.require_dtype(DType::kFloat32).require_contiguous();
  require_rows(out, n, "float32 output");
  if (out.t->shape[0] != x.t->shape[0]) throw py::value_error("out must have as many rows as x");
  GemmEpilogue e = float_epilogue(x, n, tensor_arg(col_sums_cap, "col_sums"), tensor_arg(scale_cap, "weight_scale"),
                                  optional_arg(bias_cap, "bias"), activation);
  const int nt = threads_arg(threads);
  const int64_t m = x.t->shape[0];
  py::gil_scoped_release release;
  gemm_dynamic(active_kernels(), x.ptr<float>(), k, per_row, symmetric, packed_data(packed), m, n, k, e,
               out.ptr<float>(), n, nt);
}

// Makes e requantize into an int8 / uint8 `out` with (out_scale, out_zero_point); leaves e alone for a float32
// out; rejects any other dtype, naming the accepted ones.
void set_output_kind(GemmEpilogue& e, const TensorArg& out, double out_scale, int64_t out_zero_point,
                     const char* accepted) {
  const bool out_u8 = out.t->dtype.code == dlpack::kUInt && out.t->dtype.bits == 8 && out.t->dtype.lanes == 1;
  if (out.dtype() == DType::kInt8 || out_u8) {
    if (!(out_scale > 0.0)) throw py::value_error("out_scale must be > 0; got " + std::to_string(out_scale));
    const int64_t olo = out_u8 ? 0 : -128, ohi = out_u8 ? 255 : 127;
    if (out_zero_point < olo || out_zero_point > ohi)
      throw py::value_error("out_zero_point must lie in the range of out's dtype; got " +
                            std::to_string(out_zero_point));
    e.kind = GemmEpilogue::kQuantized;
    e.out_scale = static_cast<float>(out_scale);
    e.out_zero_point = static_cast<int32_t>(out_zero_point);
    e.out_signed = !out_u8;
  } else if (out.dtype() != DType::kFloat32) {
    throw py::type_error(std::string("out must be ") + accepted + "; got " + out.dtype_name());
  }
}

// The epilogue with n output columns into `out` (int32 raw; float32; int8/uint8 requantized with
// out_scale / out_zero_point), activations quantized with (a_scale, a_zero_point); validates every operand.
GemmEpilogue gemm_epilogue_args(const TensorArg& a, int64_t n, double a_scale, int64_t a_zero_point,
                                const std::optional<py::capsule>& col_sums_cap,
                                const std::optional<py::capsule>& scale_cap, const std::optional<py::capsule>& bias_cap,
                                const TensorArg& out, int activation, double out_scale, int64_t out_zero_point) {
  GemmEpilogue e;
  if (out.dtype() == DType::kInt32) {
    e.kind = GemmEpilogue::kInt32;
    return e;
  }
  if (!col_sums_cap || !scale_cap)
    throw py::value_error("col_sums and weight_scale are required for a float or requantized output");
  if (!(a_scale > 0.0)) throw py::value_error("a_scale must be > 0; got " + std::to_string(a_scale));
  e = float_epilogue(a, n, tensor_arg(*col_sums_cap, "col_sums"), tensor_arg(*scale_cap, "weight_scale"),
                     optional_arg(bias_cap, "bias"), activation);
  e.act_scale = static_cast<float>(a_scale);
  e.act_zero_point = static_cast<int32_t>(a_zero_point);
  set_output_kind(e, out, out_scale, out_zero_point, "float32, int32, int8 or uint8");
  return e;
}

// a: (M, K) int8/uint8 quantized activations, or float32 quantized to int8 here with (a_scale, a_zero_point).
void gemm_run(const py::capsule& a_cap, bool float_input, double a_scale, int64_t a_zero_point,
              const py::capsule& packed_cap, const std::optional<py::capsule>& col_sums_cap,
              const std::optional<py::capsule>& scale_cap, const std::optional<py::capsule>& bias_cap,
              const py::capsule& out_cap, int activation, double out_scale, int64_t out_zero_point, int threads) {
  const TensorArg packed = tensor_arg(packed_cap, "packed");
  const PackedHeader h = read_packed(packed);
  if (h.groups != 1) throw py::value_error("packed holds grouped (conv) weights; gemm needs groups == 1");
  const int64_t n = h.n_per_group, k = h.k;
  const TensorArg a = tensor_arg(a_cap, "a");
  const bool a_u8 = a.t->dtype.code == dlpack::kUInt && a.t->dtype.bits == 8 && a.t->dtype.lanes == 1;
  if (float_input) {
    if (a.dtype() != DType::kFloat32) throw py::type_error("a must be float32; got " + a.dtype_name());
    if (!(a_scale > 0.0)) throw py::value_error("a_scale must be > 0; got " + std::to_string(a_scale));
  } else if (a.dtype() != DType::kInt8 && !a_u8) {
    throw py::type_error("a must be int8 or uint8; got " + a.dtype_name());
  }
  a.require_contiguous();
  require_cpu(a);
  require_rows(a, k, float_input ? "activations" : "quantized activations");
  const int64_t m = a.t->shape[0];
  const TensorArg out = tensor_arg(out_cap, "out");
  out.require_contiguous();
  require_cpu(out);
  require_rows(out, n, "output");
  if (out.t->shape[0] != m) throw py::value_error("out must have as many rows as a");
  const int32_t lo = a_u8 ? 0 : -128, hi = a_u8 ? 255 : 127;
  if (a_zero_point < lo || a_zero_point > hi)
    throw py::value_error("a_zero_point must lie in the range of " + std::string(float_input ? "int8" : "a's dtype") +
                          "; got " + std::to_string(a_zero_point));
  const GemmEpilogue e = gemm_epilogue_args(a, n, a_scale, a_zero_point, col_sums_cap, scale_cap, bias_cap, out,
                                            activation, out_scale, out_zero_point);
  const int nt = threads_arg(threads);
  py::gil_scoped_release release;
  if (float_input) {
    gemm_float_static(active_kernels(), a.ptr<float>(), static_cast<float>(a_scale), static_cast<int32_t>(a_zero_point),
                      packed_data(packed), m, n, k, e, out.data(), n, nt);
  } else {
    gemm(active_kernels(), a.data(), !a_u8, k, packed_data(packed), m, n, k, e, out.data(), n, nt);
  }
}

// The two Python entries of gemm_run: gemm_int8 (int8 / uint8 a) and gemm_int8_float_input (float32 a).
template <bool kFloatInput>
void gemm_entry(const py::capsule& a_cap, double a_scale, int64_t a_zero_point, const py::capsule& packed_cap,
                const std::optional<py::capsule>& col_sums_cap, const std::optional<py::capsule>& scale_cap,
                const std::optional<py::capsule>& bias_cap, const py::capsule& out_cap, int activation,
                double out_scale, int64_t out_zero_point, int threads) {
  gemm_run(a_cap, kFloatInput, a_scale, a_zero_point, packed_cap, col_sums_cap, scale_cap, bias_cap, out_cap,
           activation, out_scale, out_zero_point, threads);
}

ConvShape conv_shape(const TensorArg& x, int64_t out_c, int64_t kh, int64_t kw, std::vector<int64_t> stride,
                     std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups) {
  if (x.ndim() != 4) throw py::value_error("x must be 4-D NHWC (N, H, W, C); got shape " + x.shape_string());
  if (stride.size() != 2 || padding.size() != 2 || dilation.size() != 2)
    throw py::value_error("stride, padding and dilation must each have 2 values");
  ConvShape s{};
  s.batch = x.t->shape[0];
  s.in_h = x.t->shape[1];
  s.in_w = x.t->shape[2];
  s.in_c = x.t->shape[3];
  s.out_c = out_c;
  s.kernel_h = kh;
  s.kernel_w = kw;
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.groups = groups;
  if (kh < 1 || kw < 1 || s.stride_h < 1 || s.stride_w < 1 || s.dilation_h < 1 || s.dilation_w < 1 ||
      s.pad_h < 0 || s.pad_w < 0)
    throw py::value_error("kernel size, stride and dilation must be >= 1 and padding >= 0");
  if (groups < 1 || s.in_c % groups != 0 || out_c % groups != 0)
    throw py::value_error("groups must divide in_channels (" + std::to_string(s.in_c) + ") and out_channels (" +
                          std::to_string(out_c) + "); got " + std::to_string(groups));
  const int64_t eff_h = s.dilation_h * (kh - 1) + 1, eff_w = s.dilation_w * (kw - 1) + 1;
  s.out_h = (s.in_h + 2 * s.pad_h - eff_h) / s.stride_h + 1;
  s.out_w = (s.in_w + 2 * s.pad_w - eff_w) / s.stride_w + 1;
  if (s.in_h + 2 * s.pad_h < eff_h || s.in_w + 2 * s.pad_w < eff_w)
    throw py::value_error("the input (" + std::to_string(s.in_h) + "x" + std::to_string(s.in_w) +
                          " plus padding) is smaller than the dilated kernel");
  return s;
}

// The part of conv2d after the input checks: output, epilogue and weights; runs the driver on xq (int8 when
// x_signed, else uint8). When `quantize_from` is given, xq is not read: the float input is quantized to int8
// (x_scale, x_zero_point) by the driver first, with the GIL released.
void conv2d_run(const TensorArg& x, const void* xq, bool x_signed, const float* quantize_from, const ConvShape& s,
                double x_scale, int64_t x_zero_point, const std::optional<py::capsule>& packed_cap,
                const std::optional<py::capsule>& dw_weight_cap, const py::capsule& col_sums_cap,
                const py::capsule& scale_cap, const std::optional<py::capsule>& bias_cap, const py::capsule& out_cap,
                int64_t out_c, int64_t kernel_h, int64_t kernel_w, int64_t groups, int activation, double out_scale,
                int64_t out_zero_point, int threads) {
  if (x_zero_point < (x_signed ? -128 : 0) || x_zero_point > (x_signed ? 127 : 255))
    throw py::value_error("x_zero_point must lie in the range of x's dtype; got " + std::to_string(x_zero_point));
  if (!(x_scale > 0.0)) throw py::value_error("x_scale must be > 0; got " + std::to_string(x_scale));
  const TensorArg out = tensor_arg(out_cap, "out");
  out.require_contiguous();
  require_cpu(out);
  if (out.shape() != std::vector<int64_t>{s.batch, s.out_h, s.out_w, out_c})
    throw py::value_error("out must be NHWC (" + std::to_string(s.batch) + ", " + std::to_string(s.out_h) + ", " +
                          std::to_string(s.out_w) + ", " + std::to_string(out_c) + "); got " + out.shape_string());
  GemmEpilogue e = float_epilogue(x, out_c, tensor_arg(col_sums_cap, "col_sums"), tensor_arg(scale_cap, "weight_scale"),
                                  optional_arg(bias_cap, "bias"), activation);
  e.act_scale = static_cast<float>(x_scale);
  e.act_zero_point = static_cast<int32_t>(x_zero_point);
  set_output_kind(e, out, out_scale, out_zero_point, "float32, int8 or uint8");
  const int nt = threads_arg(threads);
  const KernelTable& t = active_kernels();
  if (dw_weight_cap) {
    const TensorArg w = tensor_arg(*dw_weight_cap, "weight");
    w.require_dtype(DType::kInt8).require_contiguous();
    if (groups != s.in_c || out_c != s.in_c)
      throw py::value_error("a depthwise weight needs groups == in_channels == out_channels");
    if (w.shape() != std::vector<int64_t>{kernel_h, kernel_w, s.in_c})
      throw py::value_error("depthwise weight must be (kernel_h, kernel_w, C); got " + w.shape_string());
    py::gil_scoped_release release;
    if (quantize_from) {
      depthwise_conv2d_nhwc_float(t, quantize_from, static_cast<float>(x_scale), static_cast<int32_t>(x_zero_point),
                                  w.ptr<int8_t>(), s, e, out.data(), nt);
    } else {
      depthwise_conv2d_nhwc(t, xq, x_signed, static_cast<int32_t>(x_zero_point), w.ptr<int8_t>(), s, e, out.data(),
                            nt);
    }
    return;
  }
  if (!packed_cap) throw py::value_error("packed weights are required for a non-depthwise convolution");
  const TensorArg packed = tensor_arg(*packed_cap, "packed");
  const PackedHeader h = read_packed(packed);
  // k is kernel_h * kernel_w * in_c / groups, or, for one group of 1-3 input channels and a kernel larger than
  // 1x1, kernel_h * kernel_w * 4: the channels zero-padded to 4 (ConvShape::weight_c; Int8Conv2d packs stems so).
  const bool channel_padded = groups == 1 && s.in_c < 4 && kernel_h * kernel_w > 1 && h.k == kernel_h * kernel_w * 4;
  if (h.groups != groups || h.n_per_group * groups != out_c ||
      (h.k != kernel_h * kernel_w * (s.in_c / groups) && !channel_padded))
    throw py::value_error("packed weights (groups=" + std::to_string(h.groups) + ", n=" +
                          std::to_string(h.n_per_group * h.groups) + ", k=" + std::to_string(h.k) +
                          ") do not match this convolution");
  ConvShape sw = s;
  if (channel_padded) sw.weight_c = 4;
  py::gil_scoped_release release;
  if (quantize_from) {
    conv2d_nhwc_float(t, quantize_from, static_cast<float>(x_scale), static_cast<int32_t>(x_zero_point),
                      packed_data(packed), h.group_stride, sw, e, out.data(), nt);
    return;
  }
  conv2d_nhwc(t, xq, x_signed, static_cast<int32_t>(x_zero_point), packed_data(packed), h.group_stride, sw, e,
              out.data(), nt);
}

// x: quantized NHWC int8/uint8; out: NHWC float32, int8 or uint8. Depthwise when dw_weight is given
// (kernel_h x kernel_w x C int8) — packed is then unused and may be None.
void conv2d(const py::capsule& x_cap, double x_scale, int64_t x_zero_point, const std::optional<py::capsule>& packed_cap,
            const std::optional<py::capsule>& dw_weight_cap, const py::capsule& col_sums_cap,
            const py::capsule& scale_cap, const std::optional<py::capsule>& bias_cap, const py::capsule& out_cap,
            int64_t out_c, int64_t kernel_h, int64_t kernel_w, std::vector<int64_t> stride,
            std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups, int activation,
            double out_scale, int64_t out_zero_point, int threads) {
  const TensorArg x = tensor_arg(x_cap, "x");
  const bool x_u8 = x.t->dtype.code == dlpack::kUInt && x.t->dtype.bits == 8 && x.t->dtype.lanes == 1;
  if (x.dtype() != DType::kInt8 && !x_u8) throw py::type_error("x must be int8 or uint8 NHWC; got " + x.dtype_name());
  x.require_contiguous();
  require_cpu(x);
  const ConvShape s = conv_shape(x, out_c, kernel_h, kernel_w, stride, padding, dilation, groups);
  conv2d_run(x, x.data(), !x_u8, nullptr, s, x_scale, x_zero_point, packed_cap, dw_weight_cap, col_sums_cap,
             scale_cap, bias_cap, out_cap, out_c, kernel_h, kernel_w, groups, activation, out_scale, out_zero_point,
             threads);
}

// As conv2d, with float32 NHWC x quantized to int8 inside the call: q = clamp(round_half_even(x / x_scale) +
// x_zero_point, -128, 127), the quantize op's result (one native call instead of two, and no int8 tensor).
void conv2d_float_input(const py::capsule& x_cap, double x_scale, int64_t x_zero_point,
                        const std::optional<py::capsule>& packed_cap, const std::optional<py::capsule>& dw_weight_cap,
                        const py::capsule& col_sums_cap, const py::capsule& scale_cap,
                        const std::optional<py::capsule>& bias_cap, const py::capsule& out_cap, int64_t out_c,
                        int64_t kernel_h, int64_t kernel_w, std::vector<int64_t> stride, std::vector<int64_t> padding,
                        std::vector<int64_t> dilation, int64_t groups, int activation, double out_scale,
                        int64_t out_zero_point, int threads) {
  const TensorArg x = tensor_arg(x_cap, "x");
  x.require_dtype(DType::kFloat32).require_contiguous();
  require_cpu(x);
  const ConvShape s = conv_shape(x, out_c, kernel_h, kernel_w, stride, padding, dilation, groups);
  conv2d_run(x, nullptr, true, x.ptr<float>(), s, x_scale, x_zero_point, packed_cap, dw_weight_cap, col_sums_cap,
             scale_cap, bias_cap, out_cap, out_c, kernel_h, kernel_w, groups, activation, out_scale, out_zero_point,
             threads);
}

// out (M x N int32) = a (M x K int8 / uint8) times w^T (w: N x K int8), exact, on the GPU that holds all three
// (the CUDA kernel of kernels/cuda/gemm.cu: W unpacked, row-major like a Linear weight).
void int8_matmul_cuda(const py::capsule& a_cap, const py::capsule& w_cap, const py::capsule& out_cap,
                      intptr_t stream) {
  const TensorArg a = tensor_arg(a_cap, "a"), w = tensor_arg(w_cap, "w"), out = tensor_arg(out_cap, "out");
  for (const TensorArg* t : {&a, &w, &out}) {
    if (!t->on_cuda()) throw py::value_error(t->name + " must be a CUDA tensor; got a CPU tensor");
    t->require_contiguous();
  }
  w.require_same_device(a);
  out.require_same_device(a);
  const bool a_u8 = a.t->dtype.code == dlpack::kUInt && a.t->dtype.bits == 8 && a.t->dtype.lanes == 1;
  if (!a_u8) a.require_dtype(DType::kInt8);
  w.require_dtype(DType::kInt8);
  out.require_dtype(DType::kInt32);
  if (a.ndim() != 2 || w.ndim() != 2 || out.ndim() != 2)
    throw py::value_error("a, w and out must be 2-D; got " + a.shape_string() + ", " + w.shape_string() + ", " +
                          out.shape_string());
  const int64_t M = a.shape()[0], K = a.shape()[1], N = w.shape()[0];
  if (w.shape()[1] != K)
    throw py::value_error("w must be (N, K) with a's K = " + std::to_string(K) + "; got " + w.shape_string());
  if (N < 1 || K < 1) throw py::value_error("w must have at least one row and one column; got " + w.shape_string());
  if (out.shape() != std::vector<int64_t>{M, N})
    throw py::value_error("out must be (" + std::to_string(M) + ", " + std::to_string(N) + "); got " +
                          out.shape_string());
#if defined(PYSLIM_WITH_CUDA)
  py::gil_scoped_release release;
  cuda::gemm_s32(a.data(), !a_u8, K, w.ptr<int8_t>(), M, N, K, out.ptr<int32_t>(), N, stream);
#else
  (void)stream;
  throw py::value_error("a is a CUDA tensor, but this pyslim build has no CUDA kernels (rebuild with "
                        "PYSLIM_ENABLE_CUDA=ON)");
#endif
}

}  // namespace

void register_int8_ops(py::module_& m) {
  m.def("int8_matmul_cuda", &int8_matmul_cuda, py::arg("a"), py::arg("w"), py::arg("out"), py::arg("stream"),
        "out = a @ w.T in exact int32 on the GPU (a: M x K int8/uint8, w: N x K int8, out: M x N int32).");
  m.def("gemm_packed_nbytes", &packed_nbytes, py::arg("n"), py::arg("k"), py::arg("groups") = 1,
        "Bytes of a packed int8 weight buffer for the active path.");
  m.def("pack_int8_weight", &pack_weight, py::arg("weight"), py::arg("packed"), py::arg("col_sums"),
        py::arg("groups"));
  m.def("packed_info", &packed_info, py::arg("packed"));
  m.def("linear_int8_dynamic", &linear_dynamic, py::arg("x"), py::arg("packed"), py::arg("col_sums"),
        py::arg("weight_scale"), py::arg("bias"), py::arg("out"), py::arg("per_row"), py::arg("symmetric"),
        py::arg("activation"), py::arg("threads"));
  m.def("gemm_int8", &gemm_entry<false>, py::arg("a"), py::arg("a_scale"), py::arg("a_zero_point"), py::arg("packed"),
        py::arg("col_sums"), py::arg("weight_scale"), py::arg("bias"), py::arg("out"), py::arg("activation"),
        py::arg("out_scale"), py::arg("out_zero_point"), py::arg("threads"));
  m.def("gemm_int8_float_input", &gemm_entry<true>, py::arg("a"), py::arg("a_scale"), py::arg("a_zero_point"),
        py::arg("packed"), py::arg("col_sums"), py::arg("weight_scale"), py::arg("bias"), py::arg("out"),
        py::arg("activation"), py::arg("out_scale"), py::arg("out_zero_point"), py::arg("threads"));
  m.def("conv2d_int8", &conv2d, py::arg("x"), py::arg("x_scale"), py::arg("x_zero_point"), py::arg("packed"),
        py::arg("dw_weight"), py::arg("col_sums"), py::arg("weight_scale"), py::arg("bias"), py::arg("out"),
        py::arg("out_c"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("activation"), py::arg("out_scale"),
        py::arg("out_zero_point"), py::arg("threads"));
  m.def("conv2d_int8_float_input", &conv2d_float_input, py::arg("x"), py::arg("x_scale"), py::arg("x_zero_point"),
        py::arg("packed"), py::arg("dw_weight"), py::arg("col_sums"), py::arg("weight_scale"), py::arg("bias"),
        py::arg("out"), py::arg("out_c"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("activation"), py::arg("out_scale"),
        py::arg("out_zero_point"), py::arg("threads"));
}

}  // namespace binding
}  // namespace pyslim
