// Checks of lowbit._core's arguments before they reach C++ types: pybind11's
// own conversion to size_t or int32_t rejects -1 with a TypeError that names
// no argument, and forcecasting arrays wraps int64 values silently. Each
// helper here names the argument in its error.
#ifndef LOWBIT_BINDINGS_ARGS_H_
#define LOWBIT_BINDINGS_ARGS_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

namespace lowbit {

// Columns of one matrix row: group indices are uint32_t in the kernels.
inline constexpr size_t kMaxCols = std::numeric_limits<uint32_t>::max();

// Iterations of the clustering loops: a bound on their time (30 converge).
inline constexpr size_t kMaxIters = 10000;

// The name of value's Python type, for messages.
inline std::string TypeName(pybind11::handle value) {
  return Py_TYPE(value.ptr())->tp_name;
}

// value as an integer in [lo, hi]: a Python int or anything with __index__
// (NumPy integers), not a bool or a float. TypeError or ValueError naming
// `name` otherwise.
template <typename T>
T IntArg(pybind11::handle value, const std::string& name, T lo, T hi) {
  namespace py = pybind11;
  if (PyBool_Check(value.ptr()) || !PyIndex_Check(value.ptr())) {
    throw py::type_error(name + ": expected an integer, got " +
                         TypeName(value));
  }
  py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(value.ptr()));
  if (!v) throw py::error_already_set();
  const py::int_ py_lo(lo), py_hi(hi);
  if (v < py_lo || v > py_hi) {
    throw py::value_error(name + ": " + py::str(v).cast<std::string>() +
                          " is outside [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
  }
  return v.cast<T>();
}

// A size argument in [lo, hi] (by default any count a buffer can hold).
inline size_t SizeArg(pybind11::handle value, const std::string& name,
                      size_t lo = 0,
                      size_t hi = std::numeric_limits<ptrdiff_t>::max()) {
  return IntArg<size_t>(value, name, lo, hi);
}

// The integer array (or sequence) `a` as int64, from any integer dtype:
// uint64 values past int64's range become negative, so a range check
// afterwards refuses them instead of wrapping. TypeError naming `name` for
// any other dtype.
inline pybind11::array_t<int64_t, pybind11::array::c_style>
Int64Array(pybind11::handle a, const std::string& name) {
  namespace py = pybind11;
  const py::array arr = py::array::ensure(a);  // lists too, as NumPy reads them
  if (!arr) {
    throw py::type_error(name + ": expected an integer array, got " +
                         TypeName(a));
  }
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u') {
    throw py::type_error(name + ": expected integers, got dtype " +
                         py::str(arr.dtype()).cast<std::string>());
  }
  if (kind == 'u' && arr.itemsize() == 8) {
    // Explicitly: a uint64 value >= 2^63 reinterpreted as int64 is negative
    // (in native byte order first, so that the bits mean the same number).
    return py::array_t<int64_t, py::array::c_style>(
        arr.attr("astype")("=u8").attr("view")(py::dtype::of<int64_t>()));
  }
  return py::array_t<int64_t, py::array::c_style | py::array::forcecast>(arr);
}

// An output array: float32, C-contiguous, writeable and of `rows` x `cols`.
// Anything else would be converted to a temporary that the kernel fills
// while `out` stays as it was.
inline pybind11::array_t<float> FloatOut(pybind11::handle out,
                                         const std::string& name, size_t rows,
                                         size_t cols) {
  namespace py = pybind11;
  const std::string expected = "a writeable float32 array of shape (" +
                               std::to_string(rows) + ", " +
                               std::to_string(cols) + "), C-contiguous";
  if (!py::isinstance<py::array>(out)) {
    throw py::type_error(name + ": out must be " + expected + ", got " +
                         TypeName(out));
  }
  const py::array a = py::reinterpret_borrow<py::array>(out);
  std::string problem;
  if (!py::isinstance<py::array_t<float>>(a)) {  // native float32 only
    problem = "dtype " + py::str(a.dtype()).cast<std::string>();
  } else if (a.ndim() != 2 || static_cast<size_t>(a.shape(0)) != rows ||
             static_cast<size_t>(a.shape(1)) != cols) {
    problem = "shape " + py::str(a.attr("shape")).cast<std::string>();
  } else if (!(a.flags() & py::array::c_style)) {
    problem = "a non-contiguous array";
  } else if (!a.writeable()) {
    problem = "a read-only array";
  }
  if (!problem.empty()) {
    throw py::value_error(name + ": out must be " + expected + ", got " +
                          problem);
  }
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

// A read-write property `cls_name.field` of an integer member whose setter
// checks the value with IntArg (pybind11's def_readwrite would refuse -1 for
// a size_t with a TypeError that names nothing).
template <typename C, typename T>
void IntField(pybind11::class_<C>& cls, const char* cls_name,
              const char* field, T C::*member, T lo, T hi) {
  const std::string name = std::string(cls_name) + "." + field;
  cls.def_property(
      field, [member](const C& c) { return c.*member; },
      [member, name, lo, hi](C& c, pybind11::handle v) {
        c.*member = IntArg<T>(v, name, lo, hi);
      });
}

}  // namespace lowbit

#endif  // LOWBIT_BINDINGS_ARGS_H_
