#include "tensor_arg.h"

#include <sstream>

namespace pyslim {
namespace binding {

const char* dtype_label(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt8: return "int8";
    case DType::kInt16: return "int16";
    case DType::kInt32: return "int32";
    default: return "an unsupported dtype";
  }
}

DType TensorArg::dtype() const {
  const auto& d = t->dtype;
  if (d.lanes != 1) return DType::kOther;
  if (d.code == dlpack::kFloat && d.bits == 32) return DType::kFloat32;
  if (d.code == dlpack::kFloat && d.bits == 64) return DType::kFloat64;
  if (d.code == dlpack::kInt && d.bits == 8) return DType::kInt8;
  if (d.code == dlpack::kInt && d.bits == 16) return DType::kInt16;
  if (d.code == dlpack::kInt && d.bits == 32) return DType::kInt32;
  return DType::kOther;
}

std::string TensorArg::dtype_name() const {
  const DType d = dtype();
  if (d != DType::kOther) return dtype_label(d);
  std::ostringstream os;
  os << "dtype(code=" << int(t->dtype.code) << ", bits=" << int(t->dtype.bits) << ", lanes=" << t->dtype.lanes << ")";
  return os.str();
}

int64_t TensorArg::numel() const {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

size_t TensorArg::nbytes() const { return static_cast<size_t>(numel()) * (t->dtype.bits / 8); }

std::string TensorArg::shape_string() const {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < t->ndim; ++i) os << (i ? ", " : "") << t->shape[i];
  if (t->ndim == 1) os << ",";
  os << ")";
  return os.str();
}

const TensorArg& TensorArg::require_dtype(DType want) const {
  if (dtype() != want)
    throw py::type_error(name + " must be " + dtype_label(want) + "; got " + dtype_name());
  return *this;
}

const TensorArg& TensorArg::require_contiguous() const {
  if (t->strides == nullptr || numel() == 0) return *this;
  int64_t expected = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    if (t->shape[i] != 1 && t->strides[i] != expected) {
      throw py::value_error(name + " must be contiguous (row-major); got shape " + shape_string() +
                            " with a non-compact stride on dimension " + std::to_string(i));
    }
    expected *= t->shape[i];
  }
  return *this;
}

const TensorArg& TensorArg::require_numel(int64_t want, const char* what) const {
  if (numel() != want)
    throw py::value_error(name + " must have " + std::to_string(want) + " element(s) (" + what + "); got shape " +
                          shape_string());
  return *this;
}

const TensorArg& TensorArg::require_same_shape(const TensorArg& other) const {
  if (shape() != other.shape())
    throw py::value_error(name + " must have the shape of " + other.name + " " + other.shape_string() + "; got " +
                          shape_string());
  return *this;
}

const TensorArg& TensorArg::require_same_device(const TensorArg& other) const {
  if (t->device.device_type != other.t->device.device_type || t->device.device_id != other.t->device.device_id)
    throw py::value_error(name + " must be on the same device as " + other.name);
  return *this;
}

int threads_arg(int threads) {
  if (threads < 1) throw py::value_error("threads must be >= 1; got " + std::to_string(threads));
  return threads;
}

TensorArg tensor_arg(const py::capsule& capsule, const char* name) {
  const char* cap_name = capsule.name();
  if (cap_name == nullptr || std::string(cap_name) != "dltensor")
    throw py::type_error(std::string(name) + " must be an unconsumed DLPack capsule ('dltensor')");
  auto* managed = static_cast<dlpack::ManagedTensor*>(capsule.get_pointer());
  if (managed == nullptr) throw py::value_error(std::string(name) + ": empty DLPack capsule");
  TensorArg arg;
  arg.name = name;
  arg.t = &managed->dl_tensor;
  const int dev = arg.t->device.device_type;
  if (dev != dlpack::kCPU && dev != dlpack::kCUDA)
    throw py::value_error(std::string(name) + " must be on the CPU or a CUDA device; got DLPack device type " +
                          std::to_string(dev));
  if (arg.t->ndim < 0) throw py::value_error(std::string(name) + ": negative ndim");
  for (int i = 0; i < arg.t->ndim; ++i)
    if (arg.t->shape[i] < 0) throw py::value_error(std::string(name) + ": negative dimension");
  if (arg.numel() > 0 && arg.t->data == nullptr) throw py::value_error(std::string(name) + ": null data pointer");
  return arg;
}

ChannelLayout channel_layout(const TensorArg& x, std::optional<int64_t> axis) {
  ChannelLayout l;
  if (!axis.has_value()) {
    l.inner = x.numel();
    return l;
  }
  const int64_t a = *axis;
  if (a < 0 || a >= x.ndim())
    throw py::value_error("axis must be in [0, " + std::to_string(x.ndim()) + ") for " + x.name + " of shape " +
                          x.shape_string() + "; got " + std::to_string(a));
  l.outer = 1;
  l.inner = 1;
  for (int64_t i = 0; i < a; ++i) l.outer *= x.t->shape[i];
  l.channels = x.t->shape[a];
  for (int64_t i = a + 1; i < x.ndim(); ++i) l.inner *= x.t->shape[i];
  return l;
}

void require_no_partial_overlap(const TensorArg& in, const TensorArg& out) {
  const char* a = static_cast<const char*>(in.data());
  const char* b = static_cast<const char*>(out.data());
  if (a == b || in.nbytes() == 0 || out.nbytes() == 0) return;
  if (a < b + out.nbytes() && b < a + in.nbytes())
    throw py::value_error(out.name + " partially overlaps " + in.name + "; pass a separate tensor or the same one");
}

}  // namespace binding
}  // namespace pyslim
