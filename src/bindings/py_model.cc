// lowbit._core.Model: the forward pass, seen from Python. The Weights it is
// built from stay referenced here, so their memory maps outlive the model.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/py_weight.h"
#include "model/model.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace lowbit {
namespace {

struct PyModel {
  std::unique_ptr<Model> model;
  std::vector<py::object> keep;  // the Weights whose memory the model reads
};

std::unique_ptr<PyModel> MakeModel(const ModelConfig& config,
                                   const py::dict& weights,
                                   const py::dict& vectors, size_t context,
                                   bool kv_int8) {
  auto out = std::make_unique<PyModel>();
  WeightMap wmap;
  for (auto item : weights) {
    const std::string name = py::cast<std::string>(item.first);
    const PyWeight& w = py::cast<const PyWeight&>(item.second);
    wmap[name] = w.view;
    out->keep.push_back(py::reinterpret_borrow<py::object>(item.second));
  }
  VectorMap vmap;
  for (auto item : vectors) {
    const std::string name = py::cast<std::string>(item.first);
    auto a = py::cast<py::array_t<float, py::array::c_style |
                                             py::array::forcecast>>(
        item.second);
    if (a.ndim() != 1) {
      throw py::value_error(name + ": expected a 1-D vector");
    }
    vmap[name] = std::vector<float>(a.data(), a.data() + a.size());
  }
  try {
    out->model = std::make_unique<Model>(config, std::move(wmap),
                                         std::move(vmap), context, kv_int8);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  } catch (const std::bad_alloc&) {
    throw py::value_error("not enough memory for a KV cache of " +
                          std::to_string(context) + " positions");
  }
  return out;
}

py::array_t<float> Forward(PyModel& m, const py::array_t<int32_t>& ids,
                           bool all_logits) {
  if (ids.ndim() != 1) throw py::value_error("token ids must be 1-D");
  const size_t n = ids.shape(0);
  const size_t vocab = m.model->config().vocab;
  py::array_t<int32_t, py::array::c_style | py::array::forcecast> flat(ids);
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

}  // namespace

void BindModel(py::module_& m) {
  py::enum_<Activation>(m, "Activation")
      .value("SILU", Activation::kSilu)
      .value("GELU_TANH", Activation::kGeluTanh);

  py::class_<LayerConfig>(m, "LayerConfig")
      .def(py::init<>())
      .def_readwrite("sliding_window", &LayerConfig::sliding_window)
      .def_readwrite("inv_freq", &LayerConfig::inv_freq)
      .def_readwrite("rope_scaling", &LayerConfig::rope_scaling);

  py::class_<ModelConfig>(m, "ModelConfig")
      .def(py::init<>())
      .def_readwrite("hidden", &ModelConfig::hidden)
      .def_readwrite("heads", &ModelConfig::heads)
      .def_readwrite("kv_heads", &ModelConfig::kv_heads)
      .def_readwrite("head_dim", &ModelConfig::head_dim)
      .def_readwrite("vocab", &ModelConfig::vocab)
      .def_readwrite("rms_eps", &ModelConfig::rms_eps)
      .def_readwrite("activation", &ModelConfig::activation)
      .def_readwrite("embed_scale", &ModelConfig::embed_scale)
      .def_readwrite("attn_scale", &ModelConfig::attn_scale)
      .def_readwrite("attn_softcap", &ModelConfig::attn_softcap)
      .def_readwrite("final_softcap", &ModelConfig::final_softcap)
      .def_readwrite("experts_per_token", &ModelConfig::experts_per_token)
      .def_readwrite("norm_topk_prob", &ModelConfig::norm_topk_prob)
      .def_readwrite("layers", &ModelConfig::layers);

  py::class_<PyModel>(m, "Model", "A transformer over stored weights.")
      .def(py::init(&MakeModel), "config"_a, "weights"_a, "vectors"_a,
           "context"_a, "kv_int8"_a = false,
           "weights: canonical name -> Weight; vectors: name -> float32 1-D.")
      .def("forward", &Forward, "ids"_a, "all_logits"_a = true,
           "Run int32 token ids after the cached ones; float32 logits "
           "[n, vocab] (or [1, vocab] for the last token).")
      .def("rewind", [](PyModel& m, size_t p) {
             try {
               m.model->Rewind(p);
             } catch (const std::out_of_range& e) {
               throw py::value_error(e.what());
             }
           }, "position"_a, "Forget cached tokens from `position` on.")
      .def_property_readonly("position",
                             [](const PyModel& m) { return m.model->position(); })
      .def_property_readonly("context",
                             [](const PyModel& m) { return m.model->context(); });
}

}  // namespace lowbit
