// lowbit._core.Model: the forward pass, seen from Python. The Weights it is
// built from stay referenced here, so their memory maps outlive the model.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/args.h"
#include "bindings/py_weight.h"
#include "model/model.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace lowbit {
namespace {

struct PyModel {
  std::unique_ptr<Model> model;
  std::vector<py::object> keep;  // the Weights whose memory the model reads
  std::unique_ptr<InputStats> stats;  // while collecting calibration stats
};

// The collected input statistics: WeightKey of the site -> (float64 sums of
// squares per column, rows accumulated).
py::dict InputStatsDict(const PyModel& m) {
  py::dict out;
  if (m.stats == nullptr) return out;
  for (const auto& [key, site] : m.stats->sites()) {
    py::array_t<double> sums(site.sum_sq.size());
    std::copy(site.sum_sq.begin(), site.sum_sq.end(), sums.mutable_data());
    out[py::cast(key)] = py::make_tuple(sums, site.rows);
  }
  return out;
}

// The collected Gram matrices X^T X: WeightKey of the site -> (float64
// [cols, cols], rows accumulated); sites without one are left out.
py::dict InputGramDict(const PyModel& m) {
  py::dict out;
  if (m.stats == nullptr) return out;
  for (const auto& [key, site] : m.stats->sites()) {
    if (site.gram.empty()) continue;
    const size_t cols = site.sum_sq.size();
    py::array_t<double> gram({cols, cols});
    std::copy(site.gram.begin(), site.gram.end(), gram.mutable_data());
    out[py::cast(key)] = py::make_tuple(gram, site.rows);
  }
  return out;
}

// A WeightKey from Python: the key itself, or its printed name ("L3.q").
WeightKey KeyArg(py::handle key) {
  if (py::isinstance<WeightKey>(key)) return py::cast<WeightKey>(key);
  if (!py::isinstance<py::str>(key)) {
    throw py::type_error("weight keys must be lowbit._core.WeightKey or str, "
                         "got " + TypeName(key));
  }
  const std::string name = py::cast<std::string>(key);
  const std::optional<WeightKey> parsed = ParseWeightName(name);
  // Unknown names are refused: the model would silently go without them.
  if (!parsed) throw py::value_error(name + ": not a weight the model reads");
  return *parsed;
}

WeightKey MakeKey(Tensor tensor, const py::object& layer_arg,
                  const py::object& expert_arg) {
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
  WeightKey key{IntArg<int32_t>(layer_arg, "layer", -1, kMax), tensor,
                IntArg<int32_t>(expert_arg, "expert", -1, kMax)};
  if (FindTensor(tensor) == nullptr) {
    throw py::value_error("unknown tensor " +
                          std::to_string(static_cast<int>(tensor)));
  }
  if (IsValid(key)) return key;
  const char* why = "needs a layer and an expert";
  if (FindTensor(tensor)->scope == TensorScope::kModel) {
    why = "a whole-model tensor takes no layer or expert";
  } else if (FindTensor(tensor)->scope == TensorScope::kLayer) {
    why = "needs a layer and no expert";
  }
  throw py::value_error(WeightName(key) + ": " + why);
}

std::unique_ptr<PyModel> MakeModel(const ModelConfig& config,
                                   const py::dict& weights,
                                   const py::dict& vectors,
                                   const py::object& context_arg,
                                   bool kv_int8) {
  const size_t context = SizeArg(context_arg, "context", 1, kMaxContext);
  auto out = std::make_unique<PyModel>();
  WeightMap wmap;
  for (auto item : weights) {
    const WeightKey key = KeyArg(item.first);
    if (!py::isinstance<PyWeight>(item.second)) {
      throw py::type_error(WeightName(key) +
                           ": expected a lowbit._core.Weight, got " +
                           TypeName(item.second));
    }
    const PyWeight& w = py::cast<const PyWeight&>(item.second);
    wmap[key] = w.view;
    out->keep.push_back(py::reinterpret_borrow<py::object>(item.second));
  }
  VectorMap vmap;
  for (auto item : vectors) {
    const WeightKey key = KeyArg(item.first);
    auto a = py::cast<py::array_t<float, py::array::c_style |
                                             py::array::forcecast>>(
        item.second);
    if (a.ndim() != 1) {
      throw py::value_error(WeightName(key) + ": expected a 1-D vector");
    }
    vmap[key] = std::vector<float>(a.data(), a.data() + a.size());
  }
  try {
    out->model = std::make_unique<Model>(config, std::move(wmap),
                                         std::move(vmap), context, kv_int8);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  } catch (const std::length_error& e) {  // SizeOverflow
    throw py::value_error("context " + std::to_string(context) + ": " +
                          e.what());
  } catch (const std::bad_alloc&) {
    throw py::value_error("context " + std::to_string(context) +
                          ": not enough memory for its KV cache");
  }
  return out;
}

// Token ids from Python, checked as int64 before narrowing to int32:
// forcecasting int64 ids to int32 would turn 2^32 + 5 into the valid token 5.
py::array_t<int32_t, py::array::c_style | py::array::forcecast> IdsArg(
    PyModel& m, const py::object& ids_arg) {
  const auto ids = Int64Array(ids_arg, "token ids");
  if (ids.ndim() != 1) throw py::value_error("token ids must be 1-D");
  const size_t n = ids.shape(0);
  const size_t vocab = m.model->config().vocab;
  const int64_t* wide = ids.data();
  for (size_t i = 0; i < n; ++i) {
    // Ids are int32 in the model: a vocabulary past 2^31 cannot be indexed.
    if (wide[i] < 0 || static_cast<uint64_t>(wide[i]) >= vocab ||
        wide[i] > std::numeric_limits<int32_t>::max()) {
      throw py::value_error("token id " + std::to_string(wide[i]) +
                            " at index " + std::to_string(i) +
                            " is outside the vocabulary [0, " +
                            std::to_string(vocab) + ")");
    }
  }
  return py::array_t<int32_t, py::array::c_style | py::array::forcecast>(ids);
}

py::array_t<float> Forward(PyModel& m, const py::object& ids_arg,
                           bool all_logits) {
  const auto flat = IdsArg(m, ids_arg);
  const size_t n = flat.shape(0);
  const size_t vocab = m.model->config().vocab;
  py::array_t<float> logits({all_logits ? n : size_t{1}, vocab});
  try {
    const int32_t* p = flat.data();
    float* out = logits.mutable_data();
    py::gil_scoped_release release;
    m.model->Forward(p, n, all_logits, out);
  } catch (const std::out_of_range& e) {
    throw py::value_error(e.what());
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  return logits;
}

py::array_t<float> Embed(PyModel& m, const py::object& ids_arg) {
  const auto ids = IdsArg(m, ids_arg);
  const size_t n = ids.shape(0);
  py::array_t<float> x({n, m.model->config().hidden});
  const int32_t* p = ids.data();
  float* out = x.mutable_data();
  py::gil_scoped_release release;
  m.model->Embed(p, n, out);
  return x;
}

// x_arg as hidden states of this model: a C-contiguous float32 array
// [n, hidden], writeable when `writeable`; TypeError or ValueError otherwise.
py::array HiddenArg(const PyModel& m, const py::object& x_arg, bool writeable) {
  const size_t hidden = m.model->config().hidden;
  if (!py::isinstance<py::array>(x_arg)) {
    throw py::type_error("hidden states: expected a float32 array, got " +
                         TypeName(x_arg));
  }
  auto x = py::cast<py::array>(x_arg);
  if (x.dtype().kind() != 'f' || x.itemsize() != sizeof(float) ||
      x.ndim() != 2 || static_cast<size_t>(x.shape(1)) != hidden ||
      !(x.flags() & py::array::c_style) || (writeable && !x.writeable())) {
    throw py::value_error(std::string("hidden states: expected a ") +
                          (writeable ? "writeable " : "") +
                          "C-contiguous float32 array of shape (n, " +
                          std::to_string(hidden) + ")");
  }
  return x;
}

py::array_t<float> Logits(PyModel& m, const py::object& x_arg) {
  const py::array x = HiddenArg(m, x_arg, false);
  const size_t n = x.shape(0);
  py::array_t<float> logits({n, m.model->config().vocab});
  const float* in = static_cast<const float*>(x.data());
  float* out = logits.mutable_data();
  py::gil_scoped_release release;
  m.model->Logits(in, n, out);
  return logits;
}

void ForwardLayers(PyModel& m, const py::object& x_arg, const py::object& first,
                   const py::object& last) {
  py::array x = HiddenArg(m, x_arg, true);
  const size_t n = x.shape(0);
  const size_t l0 = SizeArg(first, "first layer");
  const size_t l1 = SizeArg(last, "last layer");
  float* data = static_cast<float*>(x.mutable_data());
  try {
    py::gil_scoped_release release;
    m.model->ForwardLayers(data, n, l0, l1);
  } catch (const std::out_of_range& e) {
    throw py::value_error(e.what());
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace

void BindModel(py::module_& m) {
  m.attr("MAX_CONTEXT") = kMaxContext;
  py::enum_<Activation>(m, "Activation")
      .value("SILU", Activation::kSilu)
      .value("GELU_TANH", Activation::kGeluTanh);

  py::enum_<Tensor>(m, "Tensor", "The slots of model weights.")
      .value("EMBED", Tensor::kEmbed)
      .value("LM_HEAD", Tensor::kLmHead)
      .value("FINAL_NORM", Tensor::kFinalNorm)
      .value("ATTN_NORM", Tensor::kAttnNorm)
      .value("FFN_NORM", Tensor::kFfnNorm)
      .value("ATTN_POST_NORM", Tensor::kAttnPostNorm)
      .value("FFN_POST_NORM", Tensor::kFfnPostNorm)
      .value("Q", Tensor::kQ)
      .value("K", Tensor::kK)
      .value("V", Tensor::kV)
      .value("O", Tensor::kO)
      .value("Q_NORM", Tensor::kQNorm)
      .value("K_NORM", Tensor::kKNorm)
      .value("Q_BIAS", Tensor::kQBias)
      .value("K_BIAS", Tensor::kKBias)
      .value("V_BIAS", Tensor::kVBias)
      .value("GATE", Tensor::kGate)
      .value("UP", Tensor::kUp)
      .value("DOWN", Tensor::kDown)
      .value("ROUTER", Tensor::kRouter)
      .value("EXPERT_GATE", Tensor::kExpertGate)
      .value("EXPERT_UP", Tensor::kExpertUp)
      .value("EXPERT_DOWN", Tensor::kExpertDown)
      .value("SHARED_GATE", Tensor::kSharedGate)
      .value("SHARED_UP", Tensor::kSharedUp)
      .value("SHARED_DOWN", Tensor::kSharedDown)
      .value("SHARED_ROUTER", Tensor::kSharedRouter);

  py::class_<WeightKey>(m, "WeightKey",
                        "A model weight's slot: tensor, layer, expert "
                        "(-1: none).")
      .def(py::init(&MakeKey), "tensor"_a, "layer"_a = -1, "expert"_a = -1)
      .def_static(
          "parse",
          [](const std::string& name) { return KeyArg(py::str(name)); },
          "name"_a, "The key printed as `name` (\"L3.q\"); ValueError else.")
      .def_readonly("layer", &WeightKey::layer)
      .def_readonly("tensor", &WeightKey::tensor)
      .def_readonly("expert", &WeightKey::expert)
      .def_property_readonly("name", &WeightName,
                             "As errors print it: \"embed\", \"L3.E2.gate\".")
      .def("__str__", &WeightName)
      .def("__repr__",
           [](const WeightKey& k) {
             return "WeightKey('" + WeightName(k) + "')";
           })
      .def("__eq__",
           [](const WeightKey& a, const py::object& b) -> py::object {
             if (!py::isinstance<WeightKey>(b)) {
               return py::reinterpret_borrow<py::object>(Py_NotImplemented);
             }
             return py::bool_(a == py::cast<WeightKey>(b));
           })
      .def("__hash__", [](const WeightKey& k) {
        return py::hash(
            py::make_tuple(k.layer, static_cast<int>(k.tensor), k.expert));
      });

  constexpr size_t kMaxSize = std::numeric_limits<ptrdiff_t>::max();
  py::class_<LayerConfig> layer(m, "LayerConfig");
  layer.def(py::init<>())
      .def_readwrite("inv_freq", &LayerConfig::inv_freq)
      .def_readwrite("rope_scaling", &LayerConfig::rope_scaling);
  IntField(layer, "LayerConfig", "sliding_window",
           &LayerConfig::sliding_window, size_t{0}, kMaxSize);

  // Sizes are checked against the weights' shapes (with checked products)
  // when the Model is built; here only their type.
  py::class_<ModelConfig> config(m, "ModelConfig");
  for (auto [field, member] :
       {std::pair{"hidden", &ModelConfig::hidden},
        std::pair{"heads", &ModelConfig::heads},
        std::pair{"kv_heads", &ModelConfig::kv_heads},
        std::pair{"head_dim", &ModelConfig::head_dim},
        std::pair{"vocab", &ModelConfig::vocab},
        std::pair{"experts_per_token", &ModelConfig::experts_per_token}}) {
    IntField(config, "ModelConfig", field, member, size_t{0}, kMaxSize);
  }
  config.def(py::init<>())
      .def_readwrite("rms_eps", &ModelConfig::rms_eps)
      .def_readwrite("activation", &ModelConfig::activation)
      .def_readwrite("embed_scale", &ModelConfig::embed_scale)
      .def_readwrite("attn_scale", &ModelConfig::attn_scale)
      .def_readwrite("attn_softcap", &ModelConfig::attn_softcap)
      .def_readwrite("final_softcap", &ModelConfig::final_softcap)
      .def_readwrite("norm_topk_prob", &ModelConfig::norm_topk_prob)
      .def_readwrite("layers", &ModelConfig::layers);

  py::class_<PyModel>(m, "Model", "A transformer over stored weights.")
      .def(py::init(&MakeModel), "config"_a, "weights"_a, "vectors"_a,
           "context"_a, "kv_int8"_a = false,
           "weights: WeightKey (or its name, \"L3.q\") -> Weight; vectors: "
           "WeightKey (or name) -> float32 1-D.")
      .def("forward", &Forward, "ids"_a, "all_logits"_a = true,
           "Run int32 token ids after the cached ones; float32 logits "
           "[n, vocab] (or [1, vocab] for the last token).")
      .def("rewind", [](PyModel& m, const py::object& p) {
             try {
               m.model->Rewind(SizeArg(p, "position"));
             } catch (const std::out_of_range& e) {
               throw py::value_error(e.what());
             }
           }, "position"_a, "Forget cached tokens from `position` on.")
      .def("embed", &Embed, "ids"_a,
           "The scaled embeddings of int32 token ids: float32 [n, hidden].")
      .def("forward_layers", &ForwardLayers, "x"_a, "first"_a, "last"_a,
           "Run hidden states x (float32 [n, hidden], changed in place) "
           "through layers [first, last) after the cached positions, then "
           "advance the position by n.")
      .def("logits", &Logits, "x"_a,
           "The logits (float32 [n, vocab]) of the last layer's outputs x "
           "(float32 [n, hidden]): final norm, lm_head, soft cap.")
      .def("collect_input_stats",
           [](PyModel& m, bool on, bool gram) {
             if (on) {
               m.stats = std::make_unique<InputStats>(gram);
               m.model->set_input_stats(m.stats.get());
             } else {
               m.model->set_input_stats(nullptr);
             }
           },
           "on"_a, "gram"_a = false,
           "on: start collecting the inputs of every linear layer (anew; "
           "gram: X^T X too); off: stop (what was collected stays "
           "readable).")
      .def("input_gram", &InputGramDict,
           "WeightKey of each input site -> (float64 [cols, cols] X^T X, "
           "rows), when collected with gram=True.")
      .def("input_stats", &InputStatsDict,
           "WeightKey of each input site (q for q/k/v, gate for gate/up/"
           "router, o, down, lm_head, an expert's down) -> (float64 [cols] "
           "sums of x^2, rows).")
      .def_property_readonly("position",
                             [](const PyModel& m) { return m.model->position(); })
      .def_property_readonly("context",
                             [](const PyModel& m) { return m.model->context(); });
}

}  // namespace lowbit
