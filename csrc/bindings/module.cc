// pyslim._C: thin binders. Each one validates its arguments (dtype, shape, contiguity, device, sizes,
// parameter values) before any kernel touches memory, releases the GIL, and calls a CPU driver or a
// CUDA launcher. No math lives here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>

#include "pyslim/fake_quant.h"
#include "pyslim/isa.h"
#include "pyslim/kernels.h"
#include "pyslim/thread_pool.h"
#include "tensor_arg.h"
#if defined(PYSLIM_WITH_CUDA)
#include "pyslim/cuda_kernels.h"
#endif

#ifndef PYSLIM_VERSION
#define PYSLIM_VERSION "0.0.0"
#endif

namespace py = pybind11;

namespace pyslim {
namespace binding {
namespace {

using OptAxis = std::optional<int64_t>;
using OptCapsule = std::optional<py::capsule>;

RoundMode round_mode(int v) {
  if (v != 0 && v != 1) throw py::value_error("round_mode must be 0 (half_to_even) or 1 (half_away_from_zero); got " +
                                              std::to_string(v));
  return static_cast<RoundMode>(v);
}

GradMask grad_mask(int v) {
  if (v < 0 || v > 2) throw py::value_error("grad_mask must be 0 (ste), 1 (clipped) or 2 (clipped, strict); got " +
                                            std::to_string(v));
  return static_cast<GradMask>(v);
}

int32_t bin_for_bits(int bits) {
  if (bits < 2 || bits > 16) throw py::value_error("bits must be in [2, 16]; got " + std::to_string(bits));
  return (int32_t{1} << (bits - 1)) - 1;
}

void require_cuda_built(const TensorArg& x) {
#if !defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda())
    throw py::value_error(x.name + " is a CUDA tensor, but this pyslim build has no CUDA kernels "
                                   "(rebuild with PYSLIM_ENABLE_CUDA=ON)");
#else
  (void)x;
#endif
}

// Checks a parameter tensor (scale: float32, zero_point: int32) against the layout.
void require_params(const TensorArg& x, const ChannelLayout& l, const TensorArg& scale, const TensorArg* zero_point) {
  const char* what = l.channels == 1 && l.outer == 1 ? "one per tensor" : "one per channel";
  scale.require_dtype(DType::kFloat32).require_contiguous().require_same_device(x).require_numel(l.channels, what);
  if (zero_point)
    zero_point->require_dtype(DType::kInt32).require_contiguous().require_same_device(x).require_numel(l.channels,
                                                                                                        what);
}

// Given scales must be finite and > 0; on the CPU this is checked here (the Python layer checks CUDA ones).
void require_positive_scales(const TensorArg& scale) {
  if (scale.on_cuda()) return;
  const float* s = scale.ptr<float>();
  for (int64_t i = 0; i < scale.numel(); ++i) {
    if (!(std::isfinite(s[i]) && s[i] > 0.0f))
      throw py::value_error(scale.name + " must be finite and > 0; " + scale.name + "[" + std::to_string(i) +
                            "] = " + std::to_string(s[i]));
  }
}

void require_zero_points(const TensorArg& zp, int32_t qmin, int32_t qmax) {
  if (zp.on_cuda()) return;
  const int32_t* z = zp.ptr<int32_t>();
  for (int64_t i = 0; i < zp.numel(); ++i) {
    if (z[i] < qmin || z[i] > qmax)
      throw py::value_error(zp.name + " must lie in [quant_min, quant_max] = [" + std::to_string(qmin) + ", " +
                            std::to_string(qmax) + "]; " + zp.name + "[" + std::to_string(i) + "] = " +
                            std::to_string(z[i]));
  }
}

void require_range(int64_t qmin, int64_t qmax, int64_t lo, int64_t hi, const char* type) {
  if (qmin < lo || qmax > hi || qmin >= qmax)
    throw py::value_error(std::string("quant_min/quant_max must satisfy ") + std::to_string(lo) +
                          " <= quant_min < quant_max <= " + std::to_string(hi) + " for " + type + "; got [" +
                          std::to_string(qmin) + ", " + std::to_string(qmax) + "]");
}

TensorArg output_like(const py::capsule& cap, const char* name, const TensorArg& x, DType dtype) {
  TensorArg out = tensor_arg(cap, name);
  out.require_dtype(dtype).require_contiguous().require_same_shape(x).require_same_device(x);
  return out;
}

TensorArg float_input(const py::capsule& cap, const char* name) {
  TensorArg x = tensor_arg(cap, name);
  x.require_dtype(DType::kFloat32).require_contiguous();
  require_cuda_built(x);
  return x;
}

std::optional<TensorArg> optional_sum(const OptCapsule& cap, const char* name, const TensorArg& x,
                                      const ChannelLayout& l) {
  if (!cap) return std::nullopt;
  TensorArg a = tensor_arg(*cap, name);
  a.require_dtype(DType::kFloat64).require_contiguous().require_same_device(x).require_numel(l.channels,
                                                                                             "one per channel");
  return a;
}

// A gradient bit mask for x (kernels.h layout): uint8, ceil(numel / 8) bytes, contiguous, on x's device, and
// sharing no byte with any float tensor of the call (the kernels read and write them while packing bits).
TensorArg mask_arg(const py::capsule& cap, const TensorArg& x, std::initializer_list<const TensorArg*> disjoint) {
  TensorArg mask = tensor_arg(cap, "mask");
  const auto& d = mask.t->dtype;
  if (!(d.code == dlpack::kUInt && d.bits == 8 && d.lanes == 1))
    throw py::type_error("mask must be uint8 (one bit per element of " + x.name + "); got " + mask.dtype_name());
  mask.require_contiguous().require_same_device(x).require_numel((x.numel() + 7) / 8,
                                                                 "ceil(numel / 8) bytes, one bit per element");
  const char* m = static_cast<const char*>(mask.data());
  for (const TensorArg* other : disjoint) {
    const char* o = static_cast<const char*>(other->data());
    if (mask.nbytes() && other->nbytes() && m < o + other->nbytes() && o < m + mask.nbytes())
      throw py::value_error("mask overlaps " + other->name + "; pass a separate uint8 tensor");
  }
  return mask;
}

// ---------------------------------------------------------------------------------------------------------

void abs_max(const py::capsule& x_cap, const py::capsule& out_cap, OptAxis axis, int threads, intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  const ChannelLayout l = channel_layout(x, axis);
  const TensorArg out = tensor_arg(out_cap, "out");
  out.require_dtype(DType::kFloat32).require_contiguous().require_same_device(x).require_numel(l.channels,
                                                                                              "one per channel");
  threads_arg(threads);
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda()) return cuda::abs_max_channels(x.ptr<float>(), l, out.ptr<float>(), stream);
#endif
  (void)stream;
  abs_max_channels(active_kernels(), x.ptr<float>(), l, out.ptr<float>(), threads);
}

// The symmetric and affine forwards, with or without the 1-bit clipped-gradient mask (mask_cap null: none).
// One validation path serves both, so a masked variant can never check less than its plain twin.
void fake_quant_symmetric_impl(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule* mask_cap,
                               const py::capsule& scale_cap, OptAxis axis, int bits, int round, int mask_kind,
                               bool reduce_scale, int threads, intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  const TensorArg y = output_like(y_cap, "out", x, DType::kFloat32);
  require_no_partial_overlap(x, y);
  std::optional<TensorArg> mask;
  if (mask_cap) mask = mask_arg(*mask_cap, x, {&x, &y});
  const ChannelLayout l = channel_layout(x, axis);
  const TensorArg scale = tensor_arg(scale_cap, reduce_scale ? "scale_out" : "scale");
  require_params(x, l, scale, nullptr);
  if (!reduce_scale) require_positive_scales(scale);
  const int32_t bin = bin_for_bits(bits);
  const RoundMode rm = round_mode(round);
  const GradMask gm = mask ? grad_mask(mask_kind) : GradMask::kNone;
  threads_arg(threads);
  uint8_t* bits_out = mask ? mask->ptr<uint8_t>() : nullptr;
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda()) {
    if (reduce_scale) cuda::abs_max_channels(x.ptr<float>(), l, scale.ptr<float>(), stream);
    if (bits_out)
      return cuda::fake_quant_symmetric_mask(x.ptr<float>(), y.ptr<float>(), bits_out, l, scale.ptr<float>(), bin, rm,
                                             gm, stream);
    return cuda::fake_quant_symmetric(x.ptr<float>(), y.ptr<float>(), l, scale.ptr<float>(), bin, rm, stream);
  }
#endif
  (void)stream;
  const KernelTable& k = active_kernels();
  if (reduce_scale) abs_max_channels(k, x.ptr<float>(), l, scale.ptr<float>(), threads);
  if (bits_out)
    return fake_quant_symmetric_mask(k, x.ptr<float>(), y.ptr<float>(), bits_out, l, scale.ptr<float>(), bin, rm, gm,
                                     threads);
  fake_quant_symmetric(k, x.ptr<float>(), y.ptr<float>(), l, scale.ptr<float>(), bin, rm, threads);
}

void fake_quant_symmetric_op(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule& scale_cap,
                             OptAxis axis, int bits, int round, int threads, intptr_t stream) {
  fake_quant_symmetric_impl(x_cap, y_cap, nullptr, scale_cap, axis, bits, round, 0, false, threads, stream);
}

// abs_max / channel_wise_abs_max: the scale is reduced from x and written to scale_out, then x is
// quantized with it, in one native call.
void fake_quant_abs_max_op(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule& scale_cap,
                           OptAxis axis, int bits, int round, int threads, intptr_t stream) {
  fake_quant_symmetric_impl(x_cap, y_cap, nullptr, scale_cap, axis, bits, round, 0, true, threads, stream);
}

// PaddleSlim's bias-corrected moving average of the per-batch abs-max, updated in place:
//   state = r*state + 1;  accum = r*accum + max|x|;  scale = accum / state   (all float32)
void moving_average_abs_max_update_op(const py::capsule& x_cap, const py::capsule& state_cap,
                                      const py::capsule& accum_cap, const py::capsule& scale_cap, double moving_rate,
                                      int threads, intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  const ChannelLayout l = channel_layout(x, std::nullopt);
  const TensorArg state = tensor_arg(state_cap, "state");
  const TensorArg accum = tensor_arg(accum_cap, "accum");
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  for (const TensorArg* b : {&state, &accum, &scale})
    b->require_dtype(DType::kFloat32).require_contiguous().require_same_device(x).require_numel(1, "a scalar buffer");
  if (!(moving_rate >= 0.0 && moving_rate < 1.0))
    throw py::value_error("moving_rate must be in [0, 1); got " + std::to_string(moving_rate));
  threads_arg(threads);
  py::gil_scoped_release release;
  const float r = static_cast<float>(moving_rate);
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda())
    return cuda::moving_average_update(x.ptr<float>(), x.numel(), state.ptr<float>(), accum.ptr<float>(),
                                       scale.ptr<float>(), r, stream);
#endif
  (void)stream;
  float current = 0.0f;
  abs_max_channels(active_kernels(), x.ptr<float>(), l, &current, threads);
  float& st = *state.ptr<float>();
  float& ac = *accum.ptr<float>();
  st = r * st + 1.0f;
  ac = r * ac + current;
  *scale.ptr<float>() = ac / st;
}

void fake_quant_symmetric_backward_op(const py::capsule& x_cap, const py::capsule& grad_cap,
                                      const py::capsule& grad_x_cap, const py::capsule& scale_cap, OptAxis axis,
                                      int bits, int round, int mask, const OptCapsule& grad_scale_cap, int threads,
                                      intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  const TensorArg grad = tensor_arg(grad_cap, "grad");
  grad.require_dtype(DType::kFloat32).require_contiguous().require_same_shape(x).require_same_device(x);
  const TensorArg grad_x = output_like(grad_x_cap, "grad_x", x, DType::kFloat32);
  require_no_partial_overlap(grad, grad_x);
  require_no_partial_overlap(x, grad_x);
  const ChannelLayout l = channel_layout(x, axis);
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  require_params(x, l, scale, nullptr);
  const auto grad_scale = optional_sum(grad_scale_cap, "grad_scale", x, l);
  const int32_t bin = bin_for_bits(bits);
  const RoundMode rm = round_mode(round);
  const GradMask gm = grad_mask(mask);
  threads_arg(threads);
  double* gs = grad_scale ? grad_scale->ptr<double>() : nullptr;
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda())
    return cuda::fake_quant_symmetric_backward(x.ptr<float>(), grad.ptr<float>(), grad_x.ptr<float>(), l,
                                               scale.ptr<float>(), bin, rm, gm, gs, stream);
#endif
  (void)stream;
  fake_quant_symmetric_backward(active_kernels(), x.ptr<float>(), grad.ptr<float>(), grad_x.ptr<float>(), l,
                                scale.ptr<float>(), bin, rm, gm, gs, threads);
}

void fake_quant_affine_impl(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule* mask_cap,
                            const py::capsule& scale_cap, const py::capsule& zp_cap, OptAxis axis, int64_t qmin,
                            int64_t qmax, int round, int threads, intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  const TensorArg y = output_like(y_cap, "out", x, DType::kFloat32);
  require_no_partial_overlap(x, y);
  std::optional<TensorArg> mask;
  if (mask_cap) mask = mask_arg(*mask_cap, x, {&x, &y});
  const ChannelLayout l = channel_layout(x, axis);
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  const TensorArg zp = tensor_arg(zp_cap, "zero_point");
  require_params(x, l, scale, &zp);
  require_range(qmin, qmax, -(int64_t{1} << 31), (int64_t{1} << 31) - 1, "affine fake quantization");
  require_positive_scales(scale);
  require_zero_points(zp, static_cast<int32_t>(qmin), static_cast<int32_t>(qmax));
  const RoundMode rm = round_mode(round);
  threads_arg(threads);
  const auto lo = static_cast<int32_t>(qmin), hi = static_cast<int32_t>(qmax);
  uint8_t* bits_out = mask ? mask->ptr<uint8_t>() : nullptr;
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda()) {
    if (bits_out)
      return cuda::fake_quant_affine_mask(x.ptr<float>(), y.ptr<float>(), bits_out, l, scale.ptr<float>(),
                                          zp.ptr<int32_t>(), lo, hi, rm, stream);
    return cuda::fake_quant_affine(x.ptr<float>(), y.ptr<float>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), lo, hi,
                                   rm, stream);
  }
#endif
  (void)stream;
  if (bits_out)
    return fake_quant_affine_mask(active_kernels(), x.ptr<float>(), y.ptr<float>(), bits_out, l, scale.ptr<float>(),
                                  zp.ptr<int32_t>(), lo, hi, rm, threads);
  fake_quant_affine(active_kernels(), x.ptr<float>(), y.ptr<float>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), lo,
                    hi, rm, threads);
}

void fake_quant_affine_op(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule& scale_cap,
                          const py::capsule& zp_cap, OptAxis axis, int64_t qmin, int64_t qmax, int round, int threads,
                          intptr_t stream) {
  fake_quant_affine_impl(x_cap, y_cap, nullptr, scale_cap, zp_cap, axis, qmin, qmax, round, threads, stream);
}

void fake_quant_affine_backward_op(const py::capsule& x_cap, const py::capsule& grad_cap,
                                   const py::capsule& grad_x_cap, const py::capsule& scale_cap,
                                   const py::capsule& zp_cap, OptAxis axis, int64_t qmin, int64_t qmax, int round,
                                   int mask, const OptCapsule& grad_scale_cap, const OptCapsule& grad_zp_cap,
                                   int threads, intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  const TensorArg grad = tensor_arg(grad_cap, "grad");
  grad.require_dtype(DType::kFloat32).require_contiguous().require_same_shape(x).require_same_device(x);
  const TensorArg grad_x = output_like(grad_x_cap, "grad_x", x, DType::kFloat32);
  require_no_partial_overlap(grad, grad_x);
  require_no_partial_overlap(x, grad_x);
  const ChannelLayout l = channel_layout(x, axis);
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  const TensorArg zp = tensor_arg(zp_cap, "zero_point");
  require_params(x, l, scale, &zp);
  require_range(qmin, qmax, -(int64_t{1} << 31), (int64_t{1} << 31) - 1, "affine fake quantization");
  const auto grad_scale = optional_sum(grad_scale_cap, "grad_scale", x, l);
  const auto grad_zp = optional_sum(grad_zp_cap, "grad_zero_point", x, l);
  const RoundMode rm = round_mode(round);
  const GradMask gm = grad_mask(mask);
  if (gm == GradMask::kStrict) throw py::value_error("grad_mask 2 (strict) is not defined for affine fake quantization");
  threads_arg(threads);
  double* gs = grad_scale ? grad_scale->ptr<double>() : nullptr;
  double* gz = grad_zp ? grad_zp->ptr<double>() : nullptr;
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda())
    return cuda::fake_quant_affine_backward(x.ptr<float>(), grad.ptr<float>(), grad_x.ptr<float>(), l,
                                            scale.ptr<float>(), zp.ptr<int32_t>(), static_cast<int32_t>(qmin),
                                            static_cast<int32_t>(qmax), rm, gm, gs, gz, stream);
#endif
  (void)stream;
  fake_quant_affine_backward(active_kernels(), x.ptr<float>(), grad.ptr<float>(), grad_x.ptr<float>(), l,
                             scale.ptr<float>(), zp.ptr<int32_t>(), static_cast<int32_t>(qmin),
                             static_cast<int32_t>(qmax), rm, gm, gs, gz, threads);
}

// ---- forwards that also write the clipped straight-through mask (apply_grad_mask below reads it) ----

void fake_quant_symmetric_masked_op(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule& mask_cap,
                                    const py::capsule& scale_cap, OptAxis axis, int bits, int round, int mask_kind,
                                    int threads, intptr_t stream) {
  fake_quant_symmetric_impl(x_cap, y_cap, &mask_cap, scale_cap, axis, bits, round, mask_kind, false, threads, stream);
}

// abs_max / channel_wise_abs_max with the mask: the scale is reduced from x into scale_out first.
void fake_quant_abs_max_masked_op(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule& scale_cap,
                                  const py::capsule& mask_cap, OptAxis axis, int bits, int round, int mask_kind,
                                  int threads, intptr_t stream) {
  fake_quant_symmetric_impl(x_cap, y_cap, &mask_cap, scale_cap, axis, bits, round, mask_kind, true, threads, stream);
}

void fake_quant_affine_masked_op(const py::capsule& x_cap, const py::capsule& y_cap, const py::capsule& mask_cap,
                                 const py::capsule& scale_cap, const py::capsule& zp_cap, OptAxis axis, int64_t qmin,
                                 int64_t qmax, int round, int threads, intptr_t stream) {
  fake_quant_affine_impl(x_cap, y_cap, &mask_cap, scale_cap, zp_cap, axis, qmin, qmax, round, threads, stream);
}

// grad_x = grad where the saved mask bit is set, else 0 (the backward of the masked forwards).
void apply_grad_mask_op(const py::capsule& grad_cap, const py::capsule& mask_cap, const py::capsule& grad_x_cap,
                        int threads, intptr_t stream) {
  const TensorArg grad = float_input(grad_cap, "grad");
  const TensorArg grad_x = output_like(grad_x_cap, "grad_x", grad, DType::kFloat32);
  require_no_partial_overlap(grad, grad_x);
  const TensorArg mask = mask_arg(mask_cap, grad, {&grad, &grad_x});
  threads_arg(threads);
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (grad.on_cuda())
    return cuda::apply_grad_mask(grad.ptr<float>(), mask.ptr<uint8_t>(), grad_x.ptr<float>(), grad.numel(), stream);
#endif
  (void)stream;
  apply_grad_mask(active_kernels(), grad.ptr<float>(), mask.ptr<uint8_t>(), grad_x.ptr<float>(), grad.numel(),
                  threads);
}

void quantize_op(const py::capsule& x_cap, const py::capsule& q_cap, const py::capsule& scale_cap,
                 const py::capsule& zp_cap, OptAxis axis, int64_t qmin, int64_t qmax, int round, int threads,
                 intptr_t stream) {
  const TensorArg x = float_input(x_cap, "x");
  TensorArg q = tensor_arg(q_cap, "out");
  const DType qd = q.dtype();
  if (qd != DType::kInt8 && qd != DType::kInt16) throw py::type_error("out must be int8 or int16; got " + q.dtype_name());
  q.require_contiguous().require_same_shape(x).require_same_device(x);
  require_no_partial_overlap(x, q);
  if (qd == DType::kInt8) require_range(qmin, qmax, -128, 127, "int8");
  else require_range(qmin, qmax, -32768, 32767, "int16");
  const ChannelLayout l = channel_layout(x, axis);
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  const TensorArg zp = tensor_arg(zp_cap, "zero_point");
  require_params(x, l, scale, &zp);
  require_positive_scales(scale);
  require_zero_points(zp, static_cast<int32_t>(qmin), static_cast<int32_t>(qmax));
  const RoundMode rm = round_mode(round);
  threads_arg(threads);
  const auto lo = static_cast<int32_t>(qmin), hi = static_cast<int32_t>(qmax);
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (x.on_cuda()) {
    if (qd == DType::kInt8)
      return cuda::quantize_int8(x.ptr<float>(), q.ptr<int8_t>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), lo, hi,
                                 rm, stream);
    return cuda::quantize_int16(x.ptr<float>(), q.ptr<int16_t>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), lo, hi,
                                rm, stream);
  }
#endif
  (void)stream;
  if (qd == DType::kInt8)
    quantize_int8(active_kernels(), x.ptr<float>(), q.ptr<int8_t>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), lo, hi,
                  rm, threads);
  else
    quantize_int16(active_kernels(), x.ptr<float>(), q.ptr<int16_t>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), lo,
                   hi, rm, threads);
}

void dequantize_op(const py::capsule& q_cap, const py::capsule& y_cap, const py::capsule& scale_cap,
                   const py::capsule& zp_cap, OptAxis axis, int threads, intptr_t stream) {
  TensorArg q = tensor_arg(q_cap, "q");
  const DType qd = q.dtype();
  if (qd != DType::kInt8 && qd != DType::kInt16) throw py::type_error("q must be int8 or int16; got " + q.dtype_name());
  q.require_contiguous();
  require_cuda_built(q);
  const TensorArg y = output_like(y_cap, "out", q, DType::kFloat32);
  require_no_partial_overlap(q, y);
  const ChannelLayout l = channel_layout(q, axis);
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  const TensorArg zp = tensor_arg(zp_cap, "zero_point");
  require_params(q, l, scale, &zp);
  require_positive_scales(scale);
  threads_arg(threads);
  py::gil_scoped_release release;
#if defined(PYSLIM_WITH_CUDA)
  if (q.on_cuda()) {
    if (qd == DType::kInt8)
      return cuda::dequantize_int8(q.ptr<int8_t>(), y.ptr<float>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), stream);
    return cuda::dequantize_int16(q.ptr<int16_t>(), y.ptr<float>(), l, scale.ptr<float>(), zp.ptr<int32_t>(), stream);
  }
#endif
  (void)stream;
  if (qd == DType::kInt8)
    dequantize_int8(active_kernels(), q.ptr<int8_t>(), y.ptr<float>(), l, scale.ptr<float>(), zp.ptr<int32_t>(),
                    threads);
  else
    dequantize_int16(active_kernels(), q.ptr<int16_t>(), y.ptr<float>(), l, scale.ptr<float>(), zp.ptr<int32_t>(),
                     threads);
}

py::list isa_list(uint32_t mask) {
  py::list out;
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i)
    if (mask & (1u << i)) out.append(isa_name(static_cast<Isa>(i)));
  return out;
}

int cuda_device_count() {
#if defined(PYSLIM_WITH_CUDA)
  return cuda::device_count();
#else
  return 0;
#endif
}

py::dict native_info() {
  py::dict d;
  d["version"] = PYSLIM_VERSION;
  d["built_isas"] = isa_list(built_isas());
  d["detected_isas"] = isa_list(detected_isas());
  uint32_t usable = 0;
  for (Isa i : usable_isas()) usable |= isa_bit(i);
  d["usable_isas"] = isa_list(usable);
  d["active_isa"] = isa_name(active_isa());
#if defined(PYSLIM_WITH_CUDA)
  d["cuda_built"] = true;
#else
  d["cuda_built"] = false;
#endif
  const int devices = cuda_device_count();
  d["cuda_device_count"] = devices;
  d["cuda_available"] = devices > 0;
  d["parallel_backend"] = parallel_backend();
  return d;
}

}  // namespace
}  // namespace binding
}  // namespace pyslim

namespace pyslim {
namespace binding {
void register_int8_ops(py::module_& m);
void register_calibration_ops(py::module_& m);
void register_embedding_ops(py::module_& m);
void register_fpgm_ops(py::module_& m);
}  // namespace binding
}  // namespace pyslim

PYBIND11_MODULE(_C, m) {
  using namespace pyslim;
  using namespace pyslim::binding;
  m.doc() = "pyslim native core: ISA-dispatched kernels behind thin validating binders";

  // PYSLIM_ISA forces a path for the whole process; an unknown or unsupported path fails the import with
  // a message that names the variable and the paths this CPU has.
  if (const char* env = std::getenv("PYSLIM_ISA")) {
    if (*env) {
      try {
        force_isa(std::string(env));
      } catch (const std::invalid_argument& e) {
        throw py::value_error(std::string("PYSLIM_ISA=") + env + ": " + e.what());
      }
    }
  }

  m.def("native_info", &native_info, "Version, built/detected/usable/active ISA paths, CUDA build and devices.");
  m.def("force_isa", [](const std::string& name) {
    try {
      force_isa(name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("name"));
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("use_openmp_runtime", [](const std::string& path) { return use_openmp_runtime(path.c_str()); },
        py::arg("library_path"),
        "Runs the CPU kernels' threads on the OpenMP runtime at library_path if it is already loaded.");
  m.def("use_own_pool", &use_own_pool, "Runs the CPU kernels' threads on pyslim's own pool.");
  m.def("parallel_backend", [] { return std::string(parallel_backend()); });

  m.def("abs_max", &abs_max, py::arg("x"), py::arg("out"), py::arg("axis"), py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_symmetric", &fake_quant_symmetric_op, py::arg("x"), py::arg("out"), py::arg("scale"),
        py::arg("axis"), py::arg("bits"), py::arg("round_mode"), py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_abs_max", &fake_quant_abs_max_op, py::arg("x"), py::arg("out"), py::arg("scale_out"),
        py::arg("axis"), py::arg("bits"), py::arg("round_mode"), py::arg("threads"), py::arg("stream"));
  m.def("moving_average_abs_max_update", &moving_average_abs_max_update_op, py::arg("x"), py::arg("state"),
        py::arg("accum"), py::arg("scale"), py::arg("moving_rate"), py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_symmetric_backward", &fake_quant_symmetric_backward_op, py::arg("x"), py::arg("grad"),
        py::arg("grad_x"), py::arg("scale"), py::arg("axis"), py::arg("bits"), py::arg("round_mode"),
        py::arg("grad_mask"), py::arg("grad_scale"), py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_affine", &fake_quant_affine_op, py::arg("x"), py::arg("out"), py::arg("scale"),
        py::arg("zero_point"), py::arg("axis"), py::arg("quant_min"), py::arg("quant_max"), py::arg("round_mode"),
        py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_affine_backward", &fake_quant_affine_backward_op, py::arg("x"), py::arg("grad"),
        py::arg("grad_x"), py::arg("scale"), py::arg("zero_point"), py::arg("axis"), py::arg("quant_min"),
        py::arg("quant_max"), py::arg("round_mode"), py::arg("grad_mask"), py::arg("grad_scale"),
        py::arg("grad_zero_point"), py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_symmetric_masked", &fake_quant_symmetric_masked_op, py::arg("x"), py::arg("out"), py::arg("mask"),
        py::arg("scale"), py::arg("axis"), py::arg("bits"), py::arg("round_mode"), py::arg("grad_mask"),
        py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_abs_max_masked", &fake_quant_abs_max_masked_op, py::arg("x"), py::arg("out"),
        py::arg("scale_out"), py::arg("mask"), py::arg("axis"), py::arg("bits"), py::arg("round_mode"),
        py::arg("grad_mask"), py::arg("threads"), py::arg("stream"));
  m.def("fake_quant_affine_masked", &fake_quant_affine_masked_op, py::arg("x"), py::arg("out"), py::arg("mask"),
        py::arg("scale"), py::arg("zero_point"), py::arg("axis"), py::arg("quant_min"), py::arg("quant_max"),
        py::arg("round_mode"), py::arg("threads"), py::arg("stream"));
  m.def("apply_grad_mask", &apply_grad_mask_op, py::arg("grad"), py::arg("mask"), py::arg("grad_x"),
        py::arg("threads"), py::arg("stream"));
  m.def("quantize", &quantize_op, py::arg("x"), py::arg("out"), py::arg("scale"), py::arg("zero_point"),
        py::arg("axis"), py::arg("quant_min"), py::arg("quant_max"), py::arg("round_mode"), py::arg("threads"),
        py::arg("stream"));
  register_int8_ops(m);
  register_calibration_ops(m);
  register_embedding_ops(m);
  register_fpgm_ops(m);
  m.def("dequantize", &dequantize_op, py::arg("q"), py::arg("out"), py::arg("scale"), py::arg("zero_point"),
        py::arg("axis"), py::arg("threads"), py::arg("stream"));
}
