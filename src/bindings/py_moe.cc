// lowbit._core's upcycling functions: seeded noise for expert copies and
// balanced clustering of FFN neurons (src/moe/upcycle.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/args.h"
#include "moe/upcycle.h"
#include "util/checked.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace lowbit {
namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
// Labels are int32 in the kernels.
constexpr size_t kMaxClusters = std::numeric_limits<int32_t>::max();

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
void AddNoisePy(py::array x, float sigma, const py::object& seed_arg,
                const py::object& stream_arg, const std::string& name) {
  const uint64_t seed = IntArg<uint64_t>(seed_arg, name + ": seed", 0, kU64Max);
  const uint64_t stream =
      IntArg<uint64_t>(stream_arg, name + ": stream", 0, kU64Max);
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

py::array_t<float> NoisePy(const py::object& n_arg, const py::object& seed_arg,
                           const py::object& stream_arg) {
  const size_t n = SizeArg(n_arg, "n", 0, kMaxBufferBytes / sizeof(float));
  const uint64_t seed = IntArg<uint64_t>(seed_arg, "seed", 0, kU64Max);
  const uint64_t stream = IntArg<uint64_t>(stream_arg, "stream", 0, kU64Max);
  py::array_t<float> out;
  try {
    out = py::array_t<float>(n);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
    PyErr_SetString(PyExc_MemoryError,
                    ("n: no memory for " + std::to_string(n) + " floats")
                        .c_str());
    throw py::error_already_set();
  }
  float* data = out.mutable_data();
  {
    py::gil_scoped_release release;
    GaussianNoise(data, n, seed, stream);
  }
  return out;
}

py::array_t<int32_t> KMeansPy(const py::array& features,
                              const py::object& k_arg,
                              const py::object& iters_arg,
                              const py::object& seed_arg,
                              const std::string& name) {
  const size_t k = SizeArg(k_arg, name + ": k", 1, kMaxClusters);
  const size_t iters = SizeArg(iters_arg, name + ": iters", 0, kMaxIters);
  const uint64_t seed = IntArg<uint64_t>(seed_arg, name + ": seed", 0, kU64Max);
  CheckFloat32(features, name);
  if (features.ndim() != 2) {
    throw py::value_error(name + ": expected a 2-D [rows, features] array");
  }
  const size_t n = features.shape(0);
  const size_t d = features.shape(1);
  if (n == 0 || n % k != 0 || n > kMaxClusters) {
    throw py::value_error(name + ": " + std::to_string(k) +
                          " clusters do not divide " + std::to_string(n) +
                          " rows (k must divide the rows, at most " +
                          std::to_string(kMaxClusters) + ")");
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
                              const py::object& labels,
                              const py::object& k_arg,
                              const py::object& top_k_arg,
                              const py::object& iters_arg,
                              const std::string& name) {
  const size_t k = SizeArg(k_arg, name + ": k", 1, kMaxClusters);
  const size_t top_k = SizeArg(top_k_arg, name + ": top_k", 1, kMaxClusters);
  const size_t iters = SizeArg(iters_arg, name + ": iters", 0, kMaxIters);
  CheckFloat32(energy, name);
  if (energy.ndim() != 2) {
    throw py::value_error(name + ": expected a 2-D [neurons, tokens] array");
  }
  const size_t n = energy.shape(0);
  const size_t t = energy.shape(1);
  if (n == 0 || n % k != 0 || top_k > k || n > kMaxClusters) {
    throw py::value_error(name + ": " + std::to_string(k) +
                          " clusters (top " + std::to_string(top_k) +
                          ") do not fit " + std::to_string(n) +
                          " rows (k must divide the rows, at most " +
                          std::to_string(kMaxClusters) + ", top_k <= k)");
  }
  // Checked as int64: forcecasting int64 labels to int32 would wrap 2^32 to
  // the valid label 0.
  const auto start = Int64Array(labels, name + ": labels");
  if (start.ndim() != 1 || static_cast<size_t>(start.size()) != n) {
    throw py::value_error(name + ": labels: expected " + std::to_string(n) +
                          " labels");
  }
  std::vector<size_t> count(k, 0);
  const int64_t* wide = start.data();
  for (size_t i = 0; i < n; ++i) {
    const int64_t c = wide[i];
    if (c < 0 || static_cast<uint64_t>(c) >= k) {
      throw py::value_error(name + ": labels: " + std::to_string(c) +
                            " at index " + std::to_string(i) +
                            " is outside [0, k=" + std::to_string(k) + ")");
    }
    if (++count[c] > n / k) {
      throw py::value_error(name + ": labels are not a balanced partition");
    }
  }
  py::array_t<int32_t> out(n);
  int32_t* dst = out.mutable_data();
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<int32_t>(wide[i]);
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
