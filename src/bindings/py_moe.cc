// lowbit._core's upcycling functions: seeded noise for expert copies and
// balanced clustering of FFN neurons (src/moe/upcycle.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

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

py::array_t<int32_t> RefinePy(const py::array& energy,
                              const py::array& labels, size_t k, size_t top_k,
                              size_t iters, const std::string& name) {
  CheckFloat32(energy, name);
  if (energy.ndim() != 2) {
    throw py::value_error(name + ": expected a 2-D [neurons, tokens] array");
  }
  const size_t n = energy.shape(0);
  const size_t t = energy.shape(1);
  if (k == 0 || n == 0 || n % k != 0 || top_k == 0 || top_k > k) {
    throw py::value_error(name + ": " + std::to_string(k) +
                          " clusters (top " + std::to_string(top_k) +
                          ") do not fit " + std::to_string(n) + " rows");
  }
  auto start = py::array_t<int32_t, py::array::c_style | py::array::forcecast>(
      labels);
  if (start.ndim() != 1 || static_cast<size_t>(start.size()) != n) {
    throw py::value_error(name + ": expected " + std::to_string(n) + " labels");
  }
  std::vector<size_t> count(k, 0);
  for (size_t i = 0; i < n; ++i) {
    const int32_t c = start.at(i);
    if (c < 0 || static_cast<size_t>(c) >= k || ++count[c] > n / k) {
      throw py::value_error(name + ": labels are not a balanced partition");
    }
  }
  py::array_t<int32_t> out(n);
  int32_t* dst = out.mutable_data();
  std::copy_n(start.data(), n, dst);
  const float* e = static_cast<const float*>(energy.data());
  {
    py::gil_scoped_release release;
    RefineForTopK(e, n, t, k, top_k, iters, dst);
  }
  return out;
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
  m.def("refine_for_top_k", &RefinePy, "energy"_a, "labels"_a, "k"_a,
        "top_k"_a, "iters"_a, "name"_a,
        "Moves neurons between balanced clusters so that each token's top_k "
        "clusters hold more of its energy: new int32 labels.");
  m.def("upcycle_target", &UpcycleTarget,
        "The SIMD target the upcycling kernels run on now.");
}

}  // namespace lowbit
