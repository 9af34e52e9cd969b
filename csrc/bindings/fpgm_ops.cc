// Binder for the FPGM scores (csrc/include/pyslim/fpgm.h): validate every argument, release the GIL, call
// the CPU driver on the active kernel table (or the CUDA launcher for device tensors). No math here.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "pyslim/fpgm.h"
#include "pyslim/kernels.h"
#include "tensor_arg.h"
#if defined(PYSLIM_WITH_CUDA)
#include "pyslim/cuda_kernels.h"
#endif

namespace py = pybind11;

namespace pyslim {
namespace binding {
namespace {

// weight: float32 (C, K) contiguous; out: float64 (C,) contiguous on the same device. Scores sum over pairs
// of rows: out[i] = sum_j ||weight[i] - weight[j]||_2.
void fpgm_scores_binding(const py::capsule& weight_cap, const py::capsule& out_cap, int threads, intptr_t stream) {
  TensorArg w = tensor_arg(weight_cap, "weight");
  w.require_dtype(DType::kFloat32).require_contiguous();
  if (w.ndim() != 2)
    throw py::value_error("weight must be 2-D (channels, -1) float32; got shape " + w.shape_string());
  const int64_t C = w.t->shape[0], K = w.t->shape[1];
  TensorArg out = tensor_arg(out_cap, "out");
  out.require_dtype(DType::kFloat64).require_contiguous().require_same_device(w);
  if (out.ndim() != 1 || out.t->shape[0] != C)
    throw py::value_error("out must have shape (" + std::to_string(C) + ",) (one score per row of weight); got " +
                          out.shape_string());
  threads_arg(threads);
  if (w.on_cuda()) {
#if defined(PYSLIM_WITH_CUDA)
    py::gil_scoped_release release;
    cuda::fpgm_scores(w.ptr<float>(), C, K, out.ptr<double>(), stream);
    return;
#else
    throw py::value_error("weight is a CUDA tensor, but this pyslim build has no CUDA kernels "
                          "(rebuild with PYSLIM_ENABLE_CUDA=ON)");
#endif
  }
  (void)stream;
  const KernelTable& kt = active_kernels();
  py::gil_scoped_release release;
  fpgm_scores(kt, w.ptr<float>(), C, K, K, out.ptr<double>(), threads);
}

}  // namespace

void register_fpgm_ops(py::module_& m) {
  m.def("fpgm_scores", &fpgm_scores_binding, py::arg("weight"), py::arg("out"), py::arg("threads"),
        py::arg("stream") = 0,
        "out[i] = sum_j ||weight[i] - weight[j]||_2 (float64) for a float32 (C, K) weight (FPGM pruning). "
        "`stream` is the cudaStream_t (as an int) for CUDA tensors.");
}

}  // namespace binding
}  // namespace pyslim
