#include "bindings/py_weight.h"

#include <pybind11/stl.h>

#include <string>

#include "bindings/args.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace lowbit {
namespace {

void CheckContiguous(const py::array& a, const std::string& name) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(name + ": array is not C-contiguous");
  }
}

// A float weight: a 2-D array of float32, or float16 / bfloat16 given as
// their 16-bit patterns (format says which).
PyWeight FloatWeight(const py::array& values, WeightFormat format,
                     const std::string& name) {
  if (format == WeightFormat::kQuantized) {
    throw py::value_error(name + ": use Weight.quantized for codes");
  }
  if (format != WeightFormat::kF32 && format != WeightFormat::kF16 &&
      format != WeightFormat::kBF16) {
    throw py::value_error(name + ": unknown format " +
                          std::to_string(static_cast<int>(format)));
  }
  CheckContiguous(values, name);
  if (values.ndim() != 2) {
    throw py::value_error(name + ": expected a 2-D array, got " +
                          std::to_string(values.ndim()) + "-D");
  }
  const size_t itemsize = format == WeightFormat::kF32 ? 4 : 2;
  if (static_cast<size_t>(values.itemsize()) != itemsize) {
    throw py::type_error(name + ": expected " + std::to_string(itemsize) +
                         "-byte elements, got " +
                         std::to_string(values.itemsize()));
  }
  const char kind = values.dtype().kind();
  const bool kind_ok =
      format == WeightFormat::kF32 ? kind == 'f' : kind == 'f' || kind == 'u';
  if (!kind_ok || !values.dtype().attr("isnative").cast<bool>()) {
    throw py::type_error(name + ": dtype " +
                         py::str(values.dtype()).cast<std::string>() +
                         " does not hold this format (float32, or float16 / "
                         "bfloat16 as float16 or uint16)");
  }
  if (values.shape(0) == 0 || values.shape(1) == 0) {
    throw py::value_error(name + ": matrix is empty");
  }
  if (static_cast<size_t>(values.shape(1)) > kMaxCols) {
    throw py::value_error(name + ": " + std::to_string(values.shape(1)) +
                          " columns is more than " + std::to_string(kMaxCols));
  }
  PyWeight w;
  w.view.format = format;
  w.view.data = values.data();
  w.view.rows = values.shape(0);
  w.view.cols = values.shape(1);
  w.name = name;
  w.keep_data = values;
  return w;
}

PyWeight QuantizedWeight(const py::array& codes, const py::array& scales,
                         const std::optional<py::array>& zeros,
                         const py::object& rows_arg, const py::object& cols_arg,
                         const QuantParams& p, const std::string& name) {
  const size_t rows = SizeArg(rows_arg, name + ": rows", 1);
  const size_t cols = SizeArg(cols_arg, name + ": cols", 1, kMaxCols);
  CheckQuantized(codes, scales, zeros, rows, cols, p, name);
  PyWeight w;
  w.view.format = WeightFormat::kQuantized;
  w.view.data = codes.data();
  w.view.scales = scales.data();
  w.view.zeros = p.asymmetric() ? zeros->data() : nullptr;
  w.view.rows = rows;
  w.view.cols = cols;
  w.view.params = p;
  w.name = name;
  w.keep_data = codes;
  w.keep_scales = scales;
  if (zeros) w.keep_zeros = *zeros;
  return w;
}

py::array_t<float> MatMulPy(const PyWeight& w, const py::array_t<float>& x) {
  CheckContiguous(x, w.name + " input");
  if (x.ndim() != 2 || static_cast<size_t>(x.shape(1)) != w.view.cols) {
    throw py::value_error(w.name + ": input must be float32 [n, " +
                          std::to_string(w.view.cols) + "]");
  }
  const size_t n = x.shape(0);
  py::array_t<float> y({n, w.view.rows});
  {
    const float* xs = x.data();
    float* out = y.mutable_data();
    py::gil_scoped_release release;
    if (n != 0) MatMul(w.view, xs, n, out);
  }
  return y;
}

py::array_t<float> RowPy(const PyWeight& w, const py::object& r_arg) {
  if (!PyIndex_Check(r_arg.ptr()) || PyBool_Check(r_arg.ptr())) {
    throw py::type_error(w.name + ": row index r: expected an integer, got " +
                         TypeName(r_arg));
  }
  const py::int_ r_int =
      py::reinterpret_steal<py::int_>(PyNumber_Index(r_arg.ptr()));
  if (!r_int) throw py::error_already_set();
  if (r_int < py::int_(0) || r_int >= py::int_(w.view.rows)) {
    throw py::index_error(w.name + ": row " +
                          py::str(r_int).cast<std::string>() +
                          " out of range [0, " + std::to_string(w.view.rows) +
                          ")");
  }
  const size_t r = r_int.cast<size_t>();
  if (r >= w.view.rows) {
    throw py::index_error(w.name + ": row " + std::to_string(r) +
                          " out of range [0, " + std::to_string(w.view.rows) +
                          ")");
  }
  py::array_t<float> out(w.view.cols);
  WeightRow(w.view, r, out.mutable_data());
  return out;
}

}  // namespace

void BindWeight(py::module_& m) {
  py::enum_<WeightFormat>(m, "WeightFormat")
      .value("F32", WeightFormat::kF32)
      .value("F16", WeightFormat::kF16)
      .value("BF16", WeightFormat::kBF16)
      .value("QUANTIZED", WeightFormat::kQuantized);

  py::class_<PyWeight>(m, "Weight",
                       "A weight matrix [rows, cols] in a stored format.")
      .def_static("floats", &FloatWeight, "values"_a, "format"_a, "name"_a,
                  "float32 values, or float16/bfloat16 bits (uint16).")
      .def_static("quantized", &QuantizedWeight, "codes"_a, "scales"_a,
                  "zeros"_a, "rows"_a, "cols"_a, "params"_a, "name"_a,
                  "Packed codes with their scales and zero points.")
      .def_property_readonly("shape",
                             [](const PyWeight& w) {
                               return py::make_tuple(w.view.rows, w.view.cols);
                             })
      .def_readonly("name", &PyWeight::name)
      .def("matmul", &MatMulPy, "x"_a,
           "x @ W.T for float32 x [n, cols]; float32 [n, rows].")
      .def("row", &RowPy, "r"_a, "Row r of W as float32.");

  m.def(
      "sum_floats",
      [](const py::array_t<float, py::array::c_style>& x) {
        const float* data = x.data();
        const size_t n = x.size();
        py::gil_scoped_release release;
        return SumFloats(data, n);
      },
      "x"_a,
      "Sum of a float32 array on all threads: a memory read-bandwidth probe.");
}

}  // namespace lowbit
