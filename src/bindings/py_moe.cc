// lowbit._core's upcycling functions: seeded noise for expert copies and
// balanced clustering of FFN neurons (src/moe/upcycle.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "moe/upcycle.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace lowbit {
namespace {

void CheckFloat32(const py::array& a, const std::string& name) {
  if (!py::isinstance<py::array_t<float>>(a) ||
      a.dtype().kind() != 'f' || a.itemsize() != 4) {
    throw py::type_error(name + ": expected a float32 array");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(name + ": array is not C-contiguous");
  }
}

// Adds noise to x in place (x must be writeable float32).
void AddNoisePy(py::array x, float sigma, uint64_t seed, uint64_t stream,
                const std::string& name) {
  CheckFloat32(x, name);
  if (!x.writeable()) throw py::value_error(name + ": array is read-only");
  if (!std::isfinite(sigma) || sigma < 0.0f) {
    throw py::value_error(name + ": sigma must be finite and >= 0");
  }
  float* data = static_cast<float*>(x.mutable_data());
  const size_t n = x.size();
  py::gil_scoped_release release;
  AddGaussianNoise(data, n, sigma, seed, stream);
}

py::array_t<float> NoisePy(size_t n, uint64_t seed, uint64_t stream) {
  py::array_t<float> out(n);
  float* data = out.mutable_data();
  {
    py::gil_scoped_release release;
    GaussianNoise(data, n, seed, stream);
  }
  return out;
}

py::array_t<int32_t> KMeansPy(const py::array& features, size_t k,
                              size_t iters, uint64_t seed,
                              const std::string& name) {
  CheckFloat32(features, name);
  if (features.ndim() != 2) {
    throw py::value_error(name + ": expected a 2-D [rows, features] array");
  }
  const size_t n = features.shape(0);
  const size_t d = features.shape(1);
  if (k == 0 || n == 0 || n % k != 0) {
    throw py::value_error(name + ": " + std::to_string(k) +
                          " clusters do not divide " + std::to_string(n) +
                          " rows");
  }
  py::array_t<int32_t> labels(n);
  const float* f = static_cast<const float*>(features.data());
  int32_t* out = labels.mutable_data();
  {
    py::gil_scoped_release release;
    BalancedKMeans(f, n, d, k, iters, seed, out);
  }
  return labels;
}

}  // namespace

void BindMoe(py::module_& m) {
  m.def("add_gaussian_noise", &AddNoisePy, "x"_a, "sigma"_a, "seed"_a,
        "stream"_a, "name"_a,
        "x += sigma * N(0, 1) in place; the noise depends only on (seed, "
        "stream, element index).");
  m.def("gaussian_noise", &NoisePy, "n"_a, "seed"_a, "stream"_a,
        "The n standard normals add_gaussian_noise uses, as float32.");
  m.def("balanced_kmeans", &KMeansPy, "features"_a, "k"_a, "iters"_a,
        "seed"_a, "name"_a,
        "Balanced spherical k-means of the rows: int32 labels, rows/k each.");
  m.def("upcycle_target", &UpcycleTarget,
        "The SIMD target the upcycling kernels run on now.");
}

}  // namespace lowbit
