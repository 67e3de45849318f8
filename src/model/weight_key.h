// The tensors a Model reads, named by (layer, tensor, expert) rather than by
// strings. Which checkpoint tensor fills which slot is the Python side's
// knowledge (python/lowbit/models/tensors.py); this header only lists the
// slots and prints them for error messages: "embed", "L3.q", "L3.E2.gate".
#ifndef LOWBIT_MODEL_WEIGHT_KEY_H_
#define LOWBIT_MODEL_WEIGHT_KEY_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

namespace lowbit {

// Matrices: kEmbed, kLmHead (absent when tied), per layer kQ .. kDown,
// kRouter and the shared expert's, per layer and expert kExpertGate ..
// kExpertDown. The rest are float32 vectors; norm vectors already hold
// Gemma's 1 + w.
enum class Tensor : uint8_t {
  kEmbed,
  kLmHead,
  kFinalNorm,
  kAttnNorm,
  kFfnNorm,
  kAttnPostNorm,
  kFfnPostNorm,
  kQ,
  kK,
  kV,
  kO,
  kQNorm,
  kKNorm,
  kQBias,
  kKBias,
  kVBias,
  kGate,
  kUp,
  kDown,
  kRouter,
  kExpertGate,
  kExpertUp,
  kExpertDown,
  kSharedGate,
  kSharedUp,
  kSharedDown,
  kSharedRouter,
};

// What indexes a tensor: nothing (whole model), a layer, or a layer and an
// expert.
enum class TensorScope : uint8_t { kModel, kLayer, kExpert };

struct TensorInfo {
  Tensor tensor;
  const char* name;  // the last part of the printed name
  TensorScope scope;
};

// Every Tensor once, in enum order.
inline constexpr TensorInfo kTensors[] = {
    {Tensor::kEmbed, "embed", TensorScope::kModel},
    {Tensor::kLmHead, "lm_head", TensorScope::kModel},
    {Tensor::kFinalNorm, "final_norm", TensorScope::kModel},
    {Tensor::kAttnNorm, "attn_norm", TensorScope::kLayer},
    {Tensor::kFfnNorm, "ffn_norm", TensorScope::kLayer},
    {Tensor::kAttnPostNorm, "attn_post_norm", TensorScope::kLayer},
    {Tensor::kFfnPostNorm, "ffn_post_norm", TensorScope::kLayer},
    {Tensor::kQ, "q", TensorScope::kLayer},
    {Tensor::kK, "k", TensorScope::kLayer},
    {Tensor::kV, "v", TensorScope::kLayer},
    {Tensor::kO, "o", TensorScope::kLayer},
    {Tensor::kQNorm, "q_norm", TensorScope::kLayer},
    {Tensor::kKNorm, "k_norm", TensorScope::kLayer},
    {Tensor::kQBias, "q_bias", TensorScope::kLayer},
    {Tensor::kKBias, "k_bias", TensorScope::kLayer},
    {Tensor::kVBias, "v_bias", TensorScope::kLayer},
    {Tensor::kGate, "gate", TensorScope::kLayer},
    {Tensor::kUp, "up", TensorScope::kLayer},
    {Tensor::kDown, "down", TensorScope::kLayer},
    {Tensor::kRouter, "router", TensorScope::kLayer},
    {Tensor::kExpertGate, "gate", TensorScope::kExpert},
    {Tensor::kExpertUp, "up", TensorScope::kExpert},
    {Tensor::kExpertDown, "down", TensorScope::kExpert},
    {Tensor::kSharedGate, "shared_gate", TensorScope::kLayer},
    {Tensor::kSharedUp, "shared_up", TensorScope::kLayer},
    {Tensor::kSharedDown, "shared_down", TensorScope::kLayer},
    {Tensor::kSharedRouter, "shared_router", TensorScope::kLayer},
};
inline constexpr size_t kNumTensors = sizeof(kTensors) / sizeof(kTensors[0]);

constexpr bool TensorsInEnumOrder() {
  for (size_t i = 0; i < kNumTensors; ++i) {
    if (static_cast<size_t>(kTensors[i].tensor) != i) return false;
  }
  return kNumTensors == static_cast<size_t>(Tensor::kSharedRouter) + 1;
}
static_assert(TensorsInEnumOrder(), "kTensors lists every Tensor in order");

// nullptr for a value outside the enum (pybind11 enums take any int).
inline const TensorInfo* FindTensor(Tensor t) {
  const size_t i = static_cast<size_t>(t);
  return i < kNumTensors ? &kTensors[i] : nullptr;
}

// -1: no index. A valid key has exactly the indices its tensor's scope needs.
struct WeightKey {
  int32_t layer = -1;
  Tensor tensor = Tensor::kEmbed;
  int32_t expert = -1;

  bool operator<(const WeightKey& o) const {
    return std::tie(layer, tensor, expert) <
           std::tie(o.layer, o.tensor, o.expert);
  }
  bool operator==(const WeightKey& o) const {
    return layer == o.layer && tensor == o.tensor && expert == o.expert;
  }
};

inline bool IsValid(const WeightKey& k) {
  const TensorInfo* info = FindTensor(k.tensor);
  if (info == nullptr) return false;
  switch (info->scope) {
    case TensorScope::kModel:
      return k.layer == -1 && k.expert == -1;
    case TensorScope::kLayer:
      return k.layer >= 0 && k.expert == -1;
    case TensorScope::kExpert:
      return k.layer >= 0 && k.expert >= 0;
  }
  return false;
}

// "embed", "L3.q", "L3.E2.gate": the names the core's errors print.
inline std::string WeightName(const WeightKey& k) {
  const TensorInfo* info = FindTensor(k.tensor);
  std::string out;
  if (k.layer >= 0) out = "L" + std::to_string(k.layer) + ".";
  if (k.expert >= 0) out += "E" + std::to_string(k.expert) + ".";
  if (info == nullptr) {
    return out + "tensor" + std::to_string(static_cast<int>(k.tensor));
  }
  return out + info->name;
}

// The key WeightName prints as `name`; nullopt for any other string
// (leading zeros and signs included, so that the round trip is exact).
inline std::optional<WeightKey> ParseWeightName(const std::string& name) {
  // Reads a decimal index ending at `end` (a '.') from `pos`; -1 if none.
  auto index = [&](size_t pos, size_t end) -> int32_t {
    if (end == std::string::npos || end == pos || end - pos > 9) return -1;
    if (name[pos] == '0' && end - pos > 1) return -1;
    int32_t v = 0;
    for (size_t i = pos; i < end; ++i) {
      if (name[i] < '0' || name[i] > '9') return -1;
      v = v * 10 + (name[i] - '0');
    }
    return v;
  };
  WeightKey key;
  size_t rest = 0;
  if (!name.empty() && name[0] == 'L') {
    const size_t dot = name.find('.', 1);
    key.layer = index(1, dot);
    if (key.layer < 0) return std::nullopt;
    rest = dot + 1;
    if (rest < name.size() && name[rest] == 'E') {
      const size_t dot2 = name.find('.', rest + 1);
      key.expert = index(rest + 1, dot2);
      if (key.expert >= 0) rest = dot2 + 1;
    }
  }
  const std::string last = name.substr(rest);
  for (const TensorInfo& info : kTensors) {
    key.tensor = info.tensor;
    if (last == info.name && IsValid(key)) return key;
  }
  return std::nullopt;
}

}  // namespace lowbit

#endif  // LOWBIT_MODEL_WEIGHT_KEY_H_
