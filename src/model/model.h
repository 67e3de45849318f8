// A decoder-only transformer over stored (memory-mapped, usually quantized)
// weights: the forward pass of every family lowbit supports, with a KV cache.
//
// The Python side (python/lowbit/runtime/config.py) reads config.json and
// maps the checkpoint's tensor names onto the slots of model/weight_key.h;
// this class knows no family by name, only the features a family switches
// on.
#ifndef LOWBIT_MODEL_MODEL_H_
#define LOWBIT_MODEL_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "matmul/matmul.h"
#include "model/input_stats.h"
#include "model/kv_cache.h"
#include "model/weight_key.h"
#include "ops/ops.h"

namespace lowbit {

struct LayerConfig {
  size_t sliding_window = 0;   // 0: full causal attention
  std::vector<float> inv_freq;  // head_dim / 2 rotary frequencies
  float rope_scaling = 1.0f;    // multiplies cos and sin (rope attention factor)
};

struct ModelConfig {
  size_t hidden = 0;
  size_t heads = 0;
  size_t kv_heads = 0;
  size_t head_dim = 0;
  size_t vocab = 0;
  float rms_eps = 1e-6f;
  Activation activation = Activation::kSilu;
  float embed_scale = 1.0f;     // Gemma: sqrt(hidden)
  float attn_scale = 1.0f;      // multiplies q.k
  float attn_softcap = 0.0f;    // 0: none
  float final_softcap = 0.0f;   // 0: none
  size_t experts_per_token = 0;
  bool norm_topk_prob = false;  // renormalise the top-k router weights
  std::vector<LayerConfig> layers;
};

// Weights by slot (model/weight_key.h): matrices in one map, float32
// vectors in the other. Keys the model does not read are ignored.
using WeightMap = std::map<WeightKey, WeightView>;
using VectorMap = std::map<WeightKey, std::vector<float>>;

class Model {
 public:
  // Checks every shape against the config; std::invalid_argument naming the
  // weight otherwise. kv_int8: int8 KV cache instead of float32.
  Model(ModelConfig config, WeightMap weights, VectorMap vectors,
        size_t context, bool kv_int8);
  ~Model();

  // Runs tokens ids[0, n) at positions position() .. position() + n - 1 and
  // appends them to the cache. logits: [n, vocab] when all_logits, else
  // [1, vocab] for the last token. std::out_of_range when the context would
  // overflow or an id is not in the vocabulary (nothing is run then).
  void Forward(const int32_t* ids, size_t n, bool all_logits, float* logits);

  // Layer by layer, for calibration that runs one layer at a time on the
  // outputs of the layers before it (GPTQ): Embed writes the scaled
  // embeddings of ids[0, n) into x [n, hidden]; ForwardLayers runs x through
  // layers [first, last) in place at positions position() ..
  // position() + n - 1, caching those layers' keys and values, and then
  // advances position() by n; Logits writes the logits [n, vocab] of the
  // last layer's outputs x [n, hidden] (final norm, lm_head, soft cap).
  // Forward(ids) is Embed, ForwardLayers over all layers, and Logits. Errors
  // as for Forward.
  void Embed(const int32_t* ids, size_t n, float* x) const;
  void ForwardLayers(float* x, size_t n, size_t first, size_t last);
  void Logits(const float* x, size_t n, float* logits);

  size_t position() const { return position_; }
  size_t context() const { return cache_->context(); }
  // Forget the cache from `position` on (0: start a new sequence).
  void Rewind(size_t position);
  const ModelConfig& config() const { return config_; }

  // While set (not null), every Forward adds the inputs of the linear layers
  // to `stats` (calibration); the caller owns it.
  void set_input_stats(InputStats* stats) { input_stats_ = stats; }

 private:
  struct Layer;
  struct Scratch;

  void ForwardChunk(const int32_t* ids, size_t n, float* logits,
                    bool all_logits);
  // Logits of x [n, hidden], n <= kChunk, with s.h as the normed rows.
  void ChunkLogits(const float* x, size_t n, float* logits, Scratch& s);
  // Checks that ids[0, n) fit the vocabulary and n tokens the context.
  void CheckTokens(const int32_t* ids, size_t n) const;
  void CheckRoom(size_t n) const;
  Scratch& ReserveScratch(size_t n);
  // Layers [first, last) on x [n, hidden], n <= kChunk, in place.
  void RunLayers(float* x, size_t n, size_t first, size_t last, Scratch& s);
  void AttentionBlock(size_t l, size_t n, float* x, Scratch& s);
  void FeedForward(const Layer& layer, size_t n, const float* in, float* out,
                   Scratch& s);
  void DenseFfn(const WeightView& gate, const WeightView& up,
                const WeightView& down, const WeightKey& down_site, size_t n,
                const float* in, float* out, Scratch& s);
  void Record(int32_t layer, Tensor tensor, int32_t expert, const float* x,
              size_t rows, size_t cols) {
    if (input_stats_ != nullptr) {
      input_stats_->Add(WeightKey{layer, tensor, expert}, x, rows, cols);
    }
  }
  void MoeFfn(const Layer& layer, size_t n, const float* in, float* out,
              Scratch& s);

  ModelConfig config_;
  WeightMap weights_;
  VectorMap vectors_;
  WeightView embed_;
  WeightView lm_head_;
  const std::vector<float>* final_norm_;
  std::vector<Layer> layers_;
  // Built last in the constructor: its size comes from the config, which
  // must have been checked against the weights first.
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Scratch> scratch_;
  InputStats* input_stats_ = nullptr;
  size_t position_ = 0;
};

}  // namespace lowbit

#endif  // LOWBIT_MODEL_MODEL_H_
