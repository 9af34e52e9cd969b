// Binders for the calibration statistics (csrc/include/pyslim/calibration.h): validate every argument,
// release the GIL, call the CPU routine, and turn a NaN report into a ValueError. No math here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>

#include "pyslim/calibration.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace pyslim {
namespace binding {
namespace {

void require_cpu(const TensorArg& t) {
  if (t.on_cuda())
    throw py::value_error(t.name + " is a CUDA tensor; the calibration statistics run on the CPU (move it with "
                                   ".cpu())");
}

int bits_arg(int bits) {
  if (bits < 2 || bits > 16) throw py::value_error("bits must be in [2, 16]; got " + std::to_string(bits));
  return bits;
}

// |x| histogram over [lo, hi] added into hist (float64 or int64, `bins` elements).
void abs_histogram(const py::capsule& x_cap, const py::capsule& hist_cap, double lo, double hi, int threads) {
  const TensorArg x = tensor_arg(x_cap, "x");
  x.require_dtype(DType::kFloat32).require_contiguous();
  require_cpu(x);
  const TensorArg hist = tensor_arg(hist_cap, "hist");
  const DType hd = hist.dtype();
  if (hd != DType::kFloat64 && !(hist.t->dtype.code == dlpack::kInt && hist.t->dtype.bits == 64 &&
                                  hist.t->dtype.lanes == 1))
    throw py::type_error("hist must be float64 or int64; got " + hist.dtype_name());
  if (hist.ndim() != 1 || hist.numel() < 1)
    throw py::value_error("hist must be 1-D with at least one bin; got shape " + hist.shape_string());
  hist.require_contiguous();
  require_cpu(hist);
  if (!(std::isfinite(lo) && std::isfinite(hi) && lo < hi))
    throw py::value_error("the histogram range must be finite with lo < hi; got [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
  threads_arg(threads);
  const int64_t bins = hist.numel();
  int64_t nan_count = 0;
  {
    py::gil_scoped_release release;
    if (hd == DType::kFloat64)
      nan_count = abs_histogram_accumulate(x.ptr<float>(), x.numel(), lo, hi, bins, hist.ptr<double>(), threads);
    else
      nan_count = abs_histogram_accumulate(x.ptr<float>(), x.numel(), lo, hi, bins, hist.ptr<int64_t>(), threads);
  }
  if (nan_count)
    throw py::value_error("x contains " + std::to_string(nan_count) +
                          " NaN value(s); the histogram was left unchanged");
}

double kl_threshold_op(const py::capsule& hist_cap, double bin_width, int bits, std::optional<py::capsule> curve_cap,
                       int threads) {
  const TensorArg hist = tensor_arg(hist_cap, "hist");
  hist.require_dtype(DType::kFloat64).require_contiguous();
  require_cpu(hist);
  if (hist.ndim() != 1) throw py::value_error("hist must be 1-D; got shape " + hist.shape_string());
  bits_arg(bits);
  const int64_t bins = hist.numel();
  const int64_t quant_range = (int64_t{1} << (bits - 1)) - 1;
  if ((bins - 1) / 2 < quant_range)
    throw py::value_error("hist needs int((bins - 1) / 2) >= 2^(bits-1)-1 = " + std::to_string(quant_range) +
                          " so that every merged bucket holds a bin; got " + std::to_string(bins) + " bins");
  if (!(std::isfinite(bin_width) && bin_width > 0.0))
    throw py::value_error("bin_width must be finite and > 0; got " + std::to_string(bin_width));
  const double* h = hist.ptr<double>();
  for (int64_t i = 0; i < bins; ++i)
    if (!(std::isfinite(h[i]) && h[i] >= 0.0))
      throw py::value_error("hist must hold finite counts >= 0; hist[" + std::to_string(i) + "] = " +
                            std::to_string(h[i]));
  double* curve = nullptr;
  std::optional<TensorArg> c;
  if (curve_cap) {
    c = tensor_arg(*curve_cap, "kl_curve");
    c->require_dtype(DType::kFloat64).require_contiguous().require_numel(bins, "one per bin");
    require_cpu(*c);
    curve = c->ptr<double>();
  }
  threads_arg(threads);
  py::gil_scoped_release release;
  return kl_threshold(h, bins, bin_width, bits, curve, threads);
}

void quant_error_sweep_op(const py::capsule& x_cap, const py::capsule& scales_cap, int bits,
                          const py::capsule& out_cap, const py::capsule& x_stats_cap, int threads) {
  const TensorArg x = tensor_arg(x_cap, "x");
  x.require_dtype(DType::kFloat32).require_contiguous();
  require_cpu(x);
  if (x.numel() < 1) throw py::value_error("x must not be empty");
  const TensorArg scales = tensor_arg(scales_cap, "scales");
  scales.require_dtype(DType::kFloat64).require_contiguous();
  require_cpu(scales);
  if (scales.ndim() != 1 || scales.numel() < 1)
    throw py::value_error("scales must be 1-D and non-empty; got shape " + scales.shape_string());
  const double* s = scales.ptr<double>();
  for (int64_t i = 0; i < scales.numel(); ++i)
    if (!(std::isfinite(s[i]) && s[i] > 0.0))
      throw py::value_error("scales must be finite and > 0; scales[" + std::to_string(i) + "] = " +
                            std::to_string(s[i]));
  bits_arg(bits);
  const TensorArg out = tensor_arg(out_cap, "out");
  out.require_dtype(DType::kFloat64).require_contiguous().require_numel(3 * scales.numel(),
                                                                          "three per scale: mse, mean, std");
  require_cpu(out);
  const TensorArg x_stats = tensor_arg(x_stats_cap, "x_stats");
  x_stats.require_dtype(DType::kFloat64).require_contiguous().require_numel(2, "mean and std of x");
  require_cpu(x_stats);
  threads_arg(threads);
  int64_t bad = 0;
  {
    py::gil_scoped_release release;
    bad = quant_error_sweep(x.ptr<float>(), x.numel(), s, scales.numel(), bits, out.ptr<double>(),
                            x_stats.ptr<double>(), threads);
  }
  if (bad) throw py::value_error("x contains " + std::to_string(bad) + " NaN or Inf value(s)");
}

}  // namespace

void register_calibration_ops(py::module_& m) {
  m.def("abs_histogram", &abs_histogram, py::arg("x"), py::arg("hist"), py::arg("lo"), py::arg("hi"),
        py::arg("threads"), "Adds the numpy.histogram of |x| over [lo, hi] into hist (float64 or int64).");
  m.def("kl_threshold", &kl_threshold_op, py::arg("hist"), py::arg("bin_width"), py::arg("bits"),
        py::arg("kl_curve"), py::arg("threads"), "Paddle's cal_kl_threshold on a float64 histogram.");
  m.def("quant_error_sweep", &quant_error_sweep_op, py::arg("x"), py::arg("scales"), py::arg("bits"),
        py::arg("out"), py::arg("x_stats"), py::arg("threads"),
        "Per candidate scale: mse, mean and std of the quant-dequantized x (MSE / EMD calibration).");
}

}  // namespace binding
}  // namespace pyslim
