// Binders for the quantized embedding lookups (pyslim/embedding.h). Every argument is checked here before
// the kernel runs, including every index against the table's row count, so an out-of-range index is a
// ValueError that names it, never a read outside the table.
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#include "pyslim/embedding.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace pyslim {
namespace binding {
namespace {

void require_cpu(const TensorArg& t) {
  if (t.on_cuda())
    throw py::value_error(t.name + " is a CUDA tensor; the native embedding lookup runs on the CPU (the Python "
                                   "layer uses its pure-torch path for other devices)");
}

struct Lookup {
  TensorArg table, indices, out;
  int64_t num_rows = 0, dim = 0, count = 0;
};

// table: int8 [V, D]; indices: int64 of any shape, every value in [0, V); out: float32 indices.shape + (D,).
Lookup check_lookup(const py::capsule& table_cap, const py::capsule& indices_cap, const py::capsule& out_cap) {
  Lookup l;
  l.table = tensor_arg(table_cap, "table");
  l.table.require_dtype(DType::kInt8).require_contiguous();
  require_cpu(l.table);
  if (l.table.ndim() != 2)
    throw py::value_error("table must be 2-D (num_embeddings, embedding_dim) int8; got shape " +
                          l.table.shape_string());
  l.num_rows = l.table.t->shape[0];
  l.dim = l.table.t->shape[1];

  l.indices = tensor_arg(indices_cap, "indices");
  const auto& d = l.indices.t->dtype;
  if (!(d.code == dlpack::kInt && d.bits == 64 && d.lanes == 1))
    throw py::type_error("indices must be int64; got " + l.indices.dtype_name());
  l.indices.require_contiguous();
  require_cpu(l.indices);
  l.count = l.indices.numel();

  l.out = tensor_arg(out_cap, "out");
  l.out.require_dtype(DType::kFloat32).require_contiguous();
  require_cpu(l.out);
  std::vector<int64_t> want = l.indices.shape();
  want.push_back(l.dim);
  if (l.out.shape() != want)
    throw py::value_error("out must have shape indices.shape + (embedding_dim,) = " + [&] {
      std::string s = "(";
      for (size_t i = 0; i < want.size(); ++i) s += (i ? ", " : "") + std::to_string(want[i]);
      return s + (want.size() == 1 ? ",)" : ")");
    }() + "; got " + l.out.shape_string());

  const int64_t bad = first_out_of_range_index(l.indices.ptr<int64_t>(), l.count, l.num_rows);
  if (bad >= 0)
    throw py::value_error("indices contains " + std::to_string(l.indices.ptr<int64_t>()[bad]) +
                          " (at flat position " + std::to_string(bad) +
                          "), out of range for an embedding table of " + std::to_string(l.num_rows) +
                          " rows: every index must lie in [0, " + std::to_string(l.num_rows) + ")");
  return l;
}

int32_t max_range_for_bits(int bits) {
  if (bits < 2 || bits > 8) throw py::value_error("bits must be in [2, 8] for an int8 table; got " +
                                                  std::to_string(bits));
  return (int32_t{1} << (bits - 1)) - 1;
}

void lookup_abs_max(const py::capsule& table_cap, const py::capsule& scale_cap, const py::capsule& indices_cap,
                    const py::capsule& out_cap, int bits, int threads) {
  const Lookup l = check_lookup(table_cap, indices_cap, out_cap);
  const TensorArg scale = tensor_arg(scale_cap, "scale");
  scale.require_dtype(DType::kFloat32).require_numel(1, "one per table");
  require_cpu(scale);
  const float s = *scale.ptr<float>();
  if (!std::isfinite(s) || s < 0.0f)
    throw py::value_error("scale must be finite and >= 0; got " + std::to_string(s));
  const int32_t max_range = max_range_for_bits(bits);
  const int nt = threads_arg(threads);
  py::gil_scoped_release release;
  embedding_lookup_abs_max(l.table.ptr<int8_t>(), l.num_rows, l.dim, s, max_range, l.indices.ptr<int64_t>(), l.count,
                           l.out.ptr<float>(), nt);
}

void lookup_log(const py::capsule& table_cap, const py::capsule& dictionary_cap, const py::capsule& indices_cap,
                const py::capsule& out_cap, int threads) {
  const Lookup l = check_lookup(table_cap, indices_cap, out_cap);
  const TensorArg dict = tensor_arg(dictionary_cap, "dictionary");
  dict.require_dtype(DType::kFloat32).require_contiguous();
  require_cpu(dict);
  const int64_t size = dict.numel();
  if (dict.ndim() != 1 || size < 1 || size > 128 || (size & (size - 1)) != 0)
    throw py::value_error("dictionary must be 1-D with 2^(bits-1) entries (a power of two in [1, 128]); got shape " +
                          dict.shape_string());
  const int nt = threads_arg(threads);
  py::gil_scoped_release release;
  embedding_lookup_log(l.table.ptr<int8_t>(), l.num_rows, l.dim, dict.ptr<float>(), static_cast<int32_t>(size),
                       l.indices.ptr<int64_t>(), l.count, l.out.ptr<float>(), nt);
}

}  // namespace

void register_embedding_ops(py::module_& m) {
  m.def("embedding_lookup_abs_max", &lookup_abs_max, py::arg("table"), py::arg("scale"), py::arg("indices"),
        py::arg("out"), py::arg("bits"), py::arg("threads"),
        "out = table[indices] * scale / (2^(bits-1) - 1) for an int8 table (PaddleSlim abs_max embedding).");
  m.def("embedding_lookup_log", &lookup_log, py::arg("table"), py::arg("dictionary"), py::arg("indices"),
        py::arg("out"), py::arg("threads"),
        "out = dictionary[c] (c >= 0) or -dictionary[c + len] (c < 0) for the codes c = table[indices].");
}

}  // namespace binding
}  // namespace pyslim
