#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <utility>

#include "util/checked.h"

namespace lowbit {
namespace {

// Tokens per pass through the layers: bounds the activation buffers (about
// kChunk x (intermediate + 4 hidden) floats) whatever the prompt length.
constexpr size_t kChunk = 256;

std::string Shape(size_t rows, size_t cols) {
  return "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
}

}  // namespace

struct Model::Layer {
  WeightView q, k, v, o;
  WeightView gate, up, down;                    // dense FFN
  WeightView router;                            // MoE
  std::vector<WeightView> e_gate, e_up, e_down;  // experts
  WeightView shared_gate, shared_up, shared_down, shared_router;
  const std::vector<float>* attn_norm = nullptr;
  const std::vector<float>* ffn_norm = nullptr;
  const std::vector<float>* attn_post_norm = nullptr;
  const std::vector<float>* ffn_post_norm = nullptr;
  const std::vector<float>* q_norm = nullptr;
  const std::vector<float>* k_norm = nullptr;
  const std::vector<float>* q_bias = nullptr;
  const std::vector<float>* k_bias = nullptr;
  const std::vector<float>* v_bias = nullptr;
  size_t ffn_width = 0;  // widest intermediate (dense, expert or shared)
  int32_t index = 0;     // position in the stack (calibration sites)
};

// Activation buffers for up to `tokens` tokens; kept between calls so that
// decoding one token allocates nothing.
struct Model::Scratch {
  void Reserve(size_t n, const ModelConfig& c, size_t ffn_width,
               size_t experts) {
    if (n <= tokens) return;
    const char* what = "activation buffers";
    const size_t hidden = CheckedMul(n, c.hidden, what);
    const size_t q_width = CheckedProduct(what, n, c.heads, c.head_dim);
    const size_t kv_width = CheckedProduct(what, n, c.kv_heads, c.head_dim);
    const size_t ffn = CheckedMul(n, ffn_width, what);
    const size_t routes = CheckedMul(n, std::max<size_t>(experts, 1), what);
    for (size_t width : {hidden, q_width, kv_width, ffn, routes}) {
      CheckedBytes(width, sizeof(float), what);
    }
    for (auto* b : {&x, &h, &y, &gathered, &expert_out}) b->resize(hidden);
    q.resize(q_width);
    attn.resize(q_width);
    k.resize(kv_width);
    v.resize(kv_width);
    g.resize(ffn);
    u.resize(ffn);
    router.resize(routes);
    gate1.resize(n);
    tokens = n;
  }
  size_t tokens = 0;
  std::vector<float> x, h, y, q, k, v, attn, g, u, router, gathered,
      expert_out, gate1;
};

Model::Model(ModelConfig config, WeightMap weights, VectorMap vectors,
             size_t context, bool kv_int8)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      vectors_(std::move(vectors)),
      final_norm_(nullptr),
      scratch_(std::make_unique<Scratch>()) {
  const ModelConfig& c = config_;
  for (auto [field, value] : {std::pair{"hidden", c.hidden},
                              std::pair{"heads", c.heads},
                              std::pair{"kv_heads", c.kv_heads},
                              std::pair{"head_dim", c.head_dim},
                              std::pair{"vocab", c.vocab},
                              std::pair{"layers", c.layers.size()}}) {
    if (value == 0) {
      throw std::invalid_argument(std::string("model config: ") + field +
                                  " is 0");
    }
  }
  if (c.heads % c.kv_heads != 0) {
    throw std::invalid_argument("model config: heads (" +
                                std::to_string(c.heads) +
                                ") not a multiple of kv heads (" +
                                std::to_string(c.kv_heads) + ")");
  }
  if (c.head_dim % 2 != 0) {
    throw std::invalid_argument("model config: head_dim must be even");
  }
  if (c.activation != Activation::kSilu &&
      c.activation != Activation::kGeluTanh) {
    throw std::invalid_argument("model config: unknown activation " +
                                std::to_string(static_cast<int>(c.activation)));
  }
  // Products of config sizes are compared with the weights' real shapes
  // below; a wrapped product could match a small weight.
  const size_t q_rows =
      CheckedMul(c.heads, c.head_dim, "model config: heads x head_dim");
  const size_t kv_rows =
      CheckedMul(c.kv_heads, c.head_dim, "model config: kv_heads x head_dim");
  if (context == 0) throw std::invalid_argument("context must be positive");

  auto matrix = [&](const WeightKey& key, size_t rows, size_t cols,
                    bool required) -> WeightView {
    auto it = weights_.find(key);
    if (it == weights_.end()) {
      if (required) {
        throw std::invalid_argument(WeightName(key) + ": weight is missing");
      }
      return WeightView();
    }
    const WeightView& w = it->second;
    if ((rows != 0 && w.rows != rows) || w.cols != cols) {
      throw std::invalid_argument(
          WeightName(key) + ": shape " + Shape(w.rows, w.cols) +
          ", expected " + Shape(rows, cols) + " from the config");
    }
    return w;
  };
  auto vector = [&](const WeightKey& key, size_t len,
                    bool required) -> const std::vector<float>* {
    auto it = vectors_.find(key);
    if (it == vectors_.end()) {
      if (required) {
        throw std::invalid_argument(WeightName(key) + ": weight is missing");
      }
      return nullptr;
    }
    if (it->second.size() != len) {
      throw std::invalid_argument(WeightName(key) + ": length " +
                                  std::to_string(it->second.size()) +
                                  ", expected " + std::to_string(len));
    }
    return &it->second;
  };

  const size_t hd = c.head_dim;
  embed_ = matrix({-1, Tensor::kEmbed}, c.vocab, c.hidden, true);
  lm_head_ = matrix({-1, Tensor::kLmHead}, c.vocab, c.hidden, false);
  if (lm_head_.empty()) lm_head_ = embed_;  // tied embeddings
  final_norm_ = vector({-1, Tensor::kFinalNorm}, c.hidden, true);

  // Layer and expert indices are int32 in a WeightKey.
  constexpr size_t kMaxIndex = std::numeric_limits<int32_t>::max();
  if (c.layers.size() > kMaxIndex) {
    throw std::invalid_argument("model config: too many layers");
  }
  for (size_t l = 0; l < c.layers.size(); ++l) {
    const int32_t li = static_cast<int32_t>(l);
    const std::string p = "L" + std::to_string(l) + ".";
    auto key = [li](Tensor t) { return WeightKey{li, t}; };
    const LayerConfig& lc = c.layers[l];
    if (lc.inv_freq.size() != hd / 2) {
      throw std::invalid_argument(p + "inv_freq: length " +
                                  std::to_string(lc.inv_freq.size()) +
                                  ", expected head_dim / 2");
    }
    Layer layer;
    layer.q = matrix(key(Tensor::kQ), q_rows, c.hidden, true);
    layer.k = matrix(key(Tensor::kK), kv_rows, c.hidden, true);
    layer.v = matrix(key(Tensor::kV), kv_rows, c.hidden, true);
    layer.o = matrix(key(Tensor::kO), c.hidden, q_rows, true);
    layer.attn_norm = vector(key(Tensor::kAttnNorm), c.hidden, true);
    layer.ffn_norm = vector(key(Tensor::kFfnNorm), c.hidden, true);
    layer.attn_post_norm =
        vector(key(Tensor::kAttnPostNorm), c.hidden, false);
    layer.ffn_post_norm = vector(key(Tensor::kFfnPostNorm), c.hidden, false);
    layer.q_norm = vector(key(Tensor::kQNorm), hd, false);
    layer.k_norm = vector(key(Tensor::kKNorm), hd, false);
    layer.q_bias = vector(key(Tensor::kQBias), q_rows, false);
    layer.k_bias = vector(key(Tensor::kKBias), kv_rows, false);
    layer.v_bias = vector(key(Tensor::kVBias), kv_rows, false);

    layer.router = matrix(key(Tensor::kRouter), 0, c.hidden, false);
    if (layer.router.empty()) {
      layer.gate = matrix(key(Tensor::kGate), 0, c.hidden, true);
      const size_t inter = layer.gate.rows;
      layer.up = matrix(key(Tensor::kUp), inter, c.hidden, true);
      layer.down = matrix(key(Tensor::kDown), c.hidden, inter, true);
      layer.ffn_width = inter;
    } else {
      const size_t experts = layer.router.rows;
      if (experts > kMaxIndex) {
        throw std::invalid_argument(p + "router: too many experts");
      }
      if (c.experts_per_token == 0 || c.experts_per_token > experts) {
        throw std::invalid_argument(
            p + "router: experts per token (" +
            std::to_string(c.experts_per_token) + ") must be in [1, " +
            std::to_string(experts) + "]");
      }
      for (size_t e = 0; e < experts; ++e) {
        auto expert = [li, e](Tensor t) {
          return WeightKey{li, t, static_cast<int32_t>(e)};
        };
        layer.e_gate.push_back(
            matrix(expert(Tensor::kExpertGate), 0, c.hidden, true));
        const size_t inter = layer.e_gate.back().rows;
        layer.e_up.push_back(
            matrix(expert(Tensor::kExpertUp), inter, c.hidden, true));
        layer.e_down.push_back(
            matrix(expert(Tensor::kExpertDown), c.hidden, inter, true));
        layer.ffn_width = std::max(layer.ffn_width, inter);
      }
      layer.shared_gate =
          matrix(key(Tensor::kSharedGate), 0, c.hidden, false);
      if (!layer.shared_gate.empty()) {
        const size_t inter = layer.shared_gate.rows;
        layer.shared_up =
            matrix(key(Tensor::kSharedUp), inter, c.hidden, true);
        layer.shared_down =
            matrix(key(Tensor::kSharedDown), c.hidden, inter, true);
        layer.shared_router =
            matrix(key(Tensor::kSharedRouter), 1, c.hidden, false);
        layer.ffn_width = std::max(layer.ffn_width, inter);
      }
    }
    layer.index = li;
    layers_.push_back(std::move(layer));
  }
  cache_ = std::make_unique<KvCache>(c.layers.size(), c.kv_heads, hd, context,
                                     kv_int8);
}

Model::~Model() = default;

void Model::Rewind(size_t position) {
  if (position > position_) {
    throw std::out_of_range("rewind to " + std::to_string(position) +
                            " is past the current position " +
                            std::to_string(position_));
  }
  position_ = position;
}

void Model::CheckRoom(size_t n) const {
  if (n == 0) throw std::invalid_argument("no tokens to run");
  if (n > context() - position_) {
    throw std::out_of_range(
        std::to_string(position_ + n) + " tokens exceed the context of " +
        std::to_string(context()) + " (load the model with a larger context)");
  }
}

void Model::CheckTokens(const int32_t* ids, size_t n) const {
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= config_.vocab) {
      throw std::out_of_range("token id " + std::to_string(ids[i]) +
                              " at index " + std::to_string(i) +
                              " is outside the vocabulary [0, " +
                              std::to_string(config_.vocab) + ")");
    }
  }
}

void Model::Forward(const int32_t* ids, size_t n, bool all_logits,
                    float* logits) {
  CheckRoom(n);
  CheckTokens(ids, n);
  for (size_t start = 0; start < n; start += kChunk) {
    const size_t m = std::min(kChunk, n - start);
    const bool last = start + m == n;
    if (all_logits) {
      ForwardChunk(ids + start, m, logits + start * config_.vocab, true);
    } else {
      ForwardChunk(ids + start, m, last ? logits : nullptr, false);
    }
  }
}

void Model::Embed(const int32_t* ids, size_t n, float* x) const {
  const ModelConfig& c = config_;
  CheckTokens(ids, n);
  for (size_t t = 0; t < n; ++t) {
    float* row = x + t * c.hidden;
    WeightRow(embed_, static_cast<size_t>(ids[t]), row);
    if (c.embed_scale != 1.0f) {
      for (size_t i = 0; i < c.hidden; ++i) row[i] *= c.embed_scale;
    }
  }
}

void Model::ForwardLayers(float* x, size_t n, size_t first, size_t last) {
  if (first > last || last > layers_.size()) {
    throw std::out_of_range("layers [" + std::to_string(first) + ", " +
                            std::to_string(last) + ") are not in [0, " +
                            std::to_string(layers_.size()) + ")");
  }
  CheckRoom(n);
  for (size_t start = 0; start < n; start += kChunk) {
    const size_t m = std::min(kChunk, n - start);
    RunLayers(x + start * config_.hidden, m, first, last, ReserveScratch(m));
    position_ += m;
  }
}

Model::Scratch& Model::ReserveScratch(size_t n) {
  size_t ffn_width = 0, experts = 0;
  for (const Layer& layer : layers_) {
    ffn_width = std::max(ffn_width, layer.ffn_width);
    experts = std::max(experts, layer.e_gate.size());
  }
  scratch_->Reserve(n, config_, ffn_width, experts);
  return *scratch_;
}

void Model::RunLayers(float* x, size_t n, size_t first, size_t last,
                      Scratch& s) {
  const ModelConfig& c = config_;
  for (size_t l = first; l < last; ++l) {
    AttentionBlock(l, n, x, s);
    const Layer& layer = layers_[l];
    RmsNorm(x, layer.ffn_norm->data(), n, c.hidden, c.rms_eps, s.h.data());
    Record(static_cast<int32_t>(l), Tensor::kGate, -1, s.h.data(), n,
           c.hidden);
    FeedForward(layer, n, s.h.data(), s.y.data(), s);
    if (layer.ffn_post_norm != nullptr) {
      RmsNorm(s.y.data(), layer.ffn_post_norm->data(), n, c.hidden, c.rms_eps,
              s.y.data());
    }
    for (size_t i = 0; i < n * c.hidden; ++i) x[i] += s.y[i];
  }
}

void Model::ForwardChunk(const int32_t* ids, size_t n, float* logits,
                         bool all_logits) {
  const ModelConfig& c = config_;
  Scratch& s = ReserveScratch(n);
  float* x = s.x.data();
  Embed(ids, n, x);
  RunLayers(x, n, 0, layers_.size(), s);
  position_ += n;
  if (logits == nullptr) return;
  const size_t first = all_logits ? 0 : n - 1;
  ChunkLogits(x + first * c.hidden, n - first, logits, s);
}

void Model::Logits(const float* x, size_t n, float* logits) {
  const ModelConfig& c = config_;
  for (size_t start = 0; start < n; start += kChunk) {
    const size_t m = std::min(kChunk, n - start);
    ChunkLogits(x + start * c.hidden, m, logits + start * c.vocab,
                ReserveScratch(m));
  }
}

void Model::ChunkLogits(const float* x, size_t n, float* logits, Scratch& s) {
  const ModelConfig& c = config_;
  RmsNorm(x, final_norm_->data(), n, c.hidden, c.rms_eps, s.h.data());
  Record(-1, Tensor::kLmHead, -1, s.h.data(), n, c.hidden);
  MatMul(lm_head_, s.h.data(), n, logits);
  if (c.final_softcap != 0.0f) SoftCap(logits, n * c.vocab, c.final_softcap);
}

void Model::AttentionBlock(size_t l, size_t n, float* x, Scratch& s) {
  const ModelConfig& c = config_;
  const Layer& layer = layers_[l];
  const LayerConfig& lc = c.layers[l];
  const size_t hd = c.head_dim;
  const size_t q_width = c.heads * hd;
  const size_t kv_width = c.kv_heads * hd;
  RmsNorm(x, layer.attn_norm->data(), n, c.hidden, c.rms_eps, s.h.data());
  const int32_t li = static_cast<int32_t>(l);
  Record(li, Tensor::kQ, -1, s.h.data(), n, c.hidden);
  {
    const WeightView* ws[3] = {&layer.q, &layer.k, &layer.v};
    float* outs[3] = {s.q.data(), s.k.data(), s.v.data()};
    MatMulShared(ws, 3, s.h.data(), n, outs);
  }
  auto add_bias = [n](const std::vector<float>* bias, float* y, size_t width) {
    if (bias == nullptr) return;
    for (size_t t = 0; t < n; ++t) {
      for (size_t i = 0; i < width; ++i) y[t * width + i] += (*bias)[i];
    }
  };
  add_bias(layer.q_bias, s.q.data(), q_width);
  add_bias(layer.k_bias, s.k.data(), kv_width);
  add_bias(layer.v_bias, s.v.data(), kv_width);
  if (layer.q_norm != nullptr) {
    RmsNorm(s.q.data(), layer.q_norm->data(), n * c.heads, hd, c.rms_eps,
            s.q.data());
  }
  if (layer.k_norm != nullptr) {
    RmsNorm(s.k.data(), layer.k_norm->data(), n * c.kv_heads, hd, c.rms_eps,
            s.k.data());
  }
  const KvLayerView kv = cache_->layer(l);
  for (size_t t = 0; t < n; ++t) {
    const double pos = static_cast<double>(position_ + t);
    ApplyRope(s.q.data() + t * q_width, c.heads, hd, lc.inv_freq.data(), pos,
              lc.rope_scaling);
    ApplyRope(s.k.data() + t * kv_width, c.kv_heads, hd, lc.inv_freq.data(),
              pos, lc.rope_scaling);
    StoreKv(kv, c.kv_heads, position_ + t, s.k.data() + t * kv_width,
            s.v.data() + t * kv_width);
  }
  AttentionArgs a;
  a.q = s.q.data();
  a.out = s.attn.data();
  a.kv = kv;
  a.tokens = n;
  a.heads = c.heads;
  a.kv_heads = c.kv_heads;
  a.first_position = position_;
  a.window = lc.sliding_window;
  a.scale = c.attn_scale;
  a.softcap = c.attn_softcap;
  Attention(a);
  Record(li, Tensor::kO, -1, s.attn.data(), n, q_width);
  MatMul(layer.o, s.attn.data(), n, s.y.data());
  if (layer.attn_post_norm != nullptr) {
    RmsNorm(s.y.data(), layer.attn_post_norm->data(), n, c.hidden, c.rms_eps,
            s.y.data());
  }
  for (size_t i = 0; i < n * c.hidden; ++i) x[i] += s.y[i];
}

void Model::FeedForward(const Layer& layer, size_t n, const float* in,
                        float* out, Scratch& s) {
  if (layer.router.empty()) {
    DenseFfn(layer.gate, layer.up, layer.down,
             WeightKey{layer.index, Tensor::kDown, -1}, n, in, out, s);
  } else {
    MoeFfn(layer, n, in, out, s);
  }
}

void Model::DenseFfn(const WeightView& gate, const WeightView& up,
                     const WeightView& down, const WeightKey& down_site,
                     size_t n, const float* in, float* out, Scratch& s) {
  const size_t inter = gate.rows;
  {
    const WeightView* ws[2] = {&gate, &up};
    float* outs[2] = {s.g.data(), s.u.data()};
    MatMulShared(ws, 2, in, n, outs);
  }
  GatedActivation(config_.activation, s.g.data(), s.u.data(), n * inter,
                  s.g.data());
  Record(down_site.layer, down_site.tensor, down_site.expert, s.g.data(), n,
         inter);
  MatMul(down, s.g.data(), n, out);
}

void Model::MoeFfn(const Layer& layer, size_t n, const float* in, float* out,
                   Scratch& s) {
  const ModelConfig& c = config_;
  const size_t experts = layer.router.rows;
  const size_t top_k = c.experts_per_token;
  MatMul(layer.router, in, n, s.router.data());
  // Per token: softmax over experts, the top k (ties to the lower index),
  // renormalised when the config says so.
  std::vector<std::vector<std::pair<size_t, float>>> routed(experts);
  std::vector<size_t> order(experts);
  for (size_t t = 0; t < n; ++t) {
    float* probs = s.router.data() + t * experts;
    Softmax(probs, experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return probs[a] > probs[b]; });
    float sum = 0.0f;
    for (size_t j = 0; j < top_k; ++j) sum += probs[order[j]];
    for (size_t j = 0; j < top_k; ++j) {
      const float w = c.norm_topk_prob ? probs[order[j]] / sum : probs[order[j]];
      routed[order[j]].emplace_back(t, w);
    }
  }
  std::fill(out, out + n * c.hidden, 0.0f);
  // Dispatch: each expert runs once on the tokens routed to it, gathered into
  // one batch; its output is scattered back with the token's router weight.
  for (size_t e = 0; e < experts; ++e) {
    const auto& tokens = routed[e];
    if (tokens.empty()) continue;
    const size_t m = tokens.size();
    for (size_t j = 0; j < m; ++j) {
      std::copy(in + tokens[j].first * c.hidden,
                in + (tokens[j].first + 1) * c.hidden,
                s.gathered.data() + j * c.hidden);
    }
    DenseFfn(layer.e_gate[e], layer.e_up[e], layer.e_down[e],
             WeightKey{layer.index, Tensor::kExpertDown,
                       static_cast<int32_t>(e)},
             m, s.gathered.data(), s.expert_out.data(), s);
    for (size_t j = 0; j < m; ++j) {
      float* dst = out + tokens[j].first * c.hidden;
      const float* src = s.expert_out.data() + j * c.hidden;
      const float w = tokens[j].second;
      for (size_t i = 0; i < c.hidden; ++i) dst[i] += w * src[i];
    }
  }
  if (!layer.shared_gate.empty()) {
    DenseFfn(layer.shared_gate, layer.shared_up, layer.shared_down,
             WeightKey{layer.index, Tensor::kSharedDown, -1}, n, in,
             s.expert_out.data(), s);
    if (!layer.shared_router.empty()) {
      MatMul(layer.shared_router, in, n, s.gate1.data());
    }
    for (size_t t = 0; t < n; ++t) {
      const float g =
          layer.shared_router.empty()
              ? 1.0f
              : 1.0f / (1.0f + std::exp(-s.gate1[t]));
      float* dst = out + t * c.hidden;
      const float* src = s.expert_out.data() + t * c.hidden;
      for (size_t i = 0; i < c.hidden; ++i) dst[i] += g * src[i];
    }
  }
}

}  // namespace lowbit
