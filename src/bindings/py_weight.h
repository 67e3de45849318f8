// lowbit._core.Weight: a weight matrix in a stored format, seen from Python.
// It keeps the NumPy arrays (often memory maps) it points into alive, so the
// C++ side can hold a plain WeightView for as long as the Weight lives.
#ifndef LOWBIT_BINDINGS_PY_WEIGHT_H_
#define LOWBIT_BINDINGS_PY_WEIGHT_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>

#include "matmul/matmul.h"

namespace lowbit {

struct PyWeight {
  WeightView view;
  std::string name;
  pybind11::object keep_data, keep_scales, keep_zeros;
};

// Checks codes/scales/zeros against rows x cols and p (ValueError naming the
// tensor otherwise); defined in module.cc.
void CheckQuantized(const pybind11::array& codes, const pybind11::array& scales,
                    const std::optional<pybind11::array>& zeros, size_t rows,
                    size_t cols, const QuantParams& p, const std::string& name);

void BindWeight(pybind11::module_& m);
void BindModel(pybind11::module_& m);  // py_model.cc

}  // namespace lowbit

#endif  // LOWBIT_BINDINGS_PY_WEIGHT_H_
