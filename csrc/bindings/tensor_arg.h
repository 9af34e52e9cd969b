// Reading and validating tensors that cross the binding as DLPack capsules.
//
// The capsule is borrowed, not consumed: Python keeps it alive for the whole call and its own destructor
// releases the producer's tensor. Every check runs before any kernel touches memory, and every failure
// is a Python ValueError/TypeError that names the argument.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pyslim/dlpack_abi.h"
#include "pyslim/fake_quant.h"

namespace pyslim {
namespace binding {

namespace py = pybind11;

enum class DType { kFloat32, kFloat64, kInt8, kInt16, kInt32, kOther };

struct TensorArg {
  std::string name;
  const dlpack::Tensor* t = nullptr;

  DType dtype() const;
  std::string dtype_name() const;
  bool on_cuda() const { return t->device.device_type == dlpack::kCUDA; }
  int device_id() const { return t->device.device_id; }
  int64_t numel() const;
  int ndim() const { return t->ndim; }
  std::vector<int64_t> shape() const { return std::vector<int64_t>(t->shape, t->shape + t->ndim); }
  std::string shape_string() const;
  void* data() const { return static_cast<char*>(t->data) + t->byte_offset; }
  size_t nbytes() const;
  template <typename T>
  T* ptr() const { return static_cast<T*>(data()); }

  // Checks: each throws a ValueError/TypeError naming this argument.
  const TensorArg& require_dtype(DType want) const;
  const TensorArg& require_contiguous() const;
  const TensorArg& require_numel(int64_t want, const char* what) const;
  const TensorArg& require_same_shape(const TensorArg& other) const;
  const TensorArg& require_same_device(const TensorArg& other) const;
};

// The `threads` argument of a native op: >= 1, else ValueError.
int threads_arg(int threads);

// Parses a "dltensor" capsule; rejects devices other than CPU and CUDA.
TensorArg tensor_arg(const py::capsule& capsule, const char* name);

// Layout of `x` quantized along `axis` (None = per tensor); checks the axis range.
ChannelLayout channel_layout(const TensorArg& x, std::optional<int64_t> axis);

// `out` must not partially overlap `in` (identical pointers, an in-place update, are allowed).
void require_no_partial_overlap(const TensorArg& in, const TensorArg& out);

const char* dtype_label(DType d);

}  // namespace binding
}  // namespace pyslim
