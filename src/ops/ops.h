// The small per-token operations of a transformer layer, on float32 rows:
// RMSNorm, rotary embeddings, gated activations, softmax and attention over a
// KV cache. Matrix products live in matmul/.
#ifndef LOWBIT_OPS_OPS_H_
#define LOWBIT_OPS_OPS_H_

#include <cstddef>
#include <cstdint>

namespace lowbit {

enum class Activation : int32_t {
  kSilu = 0,      // x * sigmoid(x): Llama, Mistral, Qwen (SwiGLU)
  kGeluTanh = 1,  // GELU, tanh approximation: Gemma (GeGLU)
};

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for `rows` rows of `dim`;
// out may equal x. Gemma's (1 + w) form is the caller's: it passes 1 + w.
void RmsNorm(const float* x, const float* w, size_t rows, size_t dim,
             float eps, float* out);

// out = act(gate) * up, n elements; out may equal gate or up.
void GatedActivation(Activation act, const float* gate, const float* up,
                     size_t n, float* out);

// In place: x = exp(x - max) / sum, n elements.
void Softmax(float* x, size_t n);

// Rotary embedding of `heads` vectors of head_dim in x (contiguous), as
// HuggingFace applies it (halves rotated, not interleaved pairs): for
// i < head_dim / 2, angle = position * inv_freq[i], scaled cos and sin by
// `scaling` (the rope type's attention factor).
void ApplyRope(float* x, size_t heads, size_t head_dim, const float* inv_freq,
               double position, float scaling);

// y[i] = tanh(y[i] / cap) * cap (Gemma 2's soft-capping), n elements.
void SoftCap(float* y, size_t n, float cap);

// Keys and values of one layer: [kv_heads, context, head_dim], float32 or
// int8 with one float scale per (kv head, position).
struct KvLayerView {
  float* k = nullptr;
  float* v = nullptr;
  int8_t* k8 = nullptr;  // int8 cache: codes
  int8_t* v8 = nullptr;
  float* k_scale = nullptr;  // [kv_heads, context]
  float* v_scale = nullptr;
  size_t context = 0;
  size_t head_dim = 0;
  bool int8() const { return k8 != nullptr; }
};

// Writes the keys and values of one token (kv_heads x head_dim each) at
// `position` of the cache.
void StoreKv(const KvLayerView& kv, size_t kv_heads, size_t position,
             const float* k, const float* v);

struct AttentionArgs {
  const float* q = nullptr;  // [tokens, heads, head_dim]
  float* out = nullptr;      // [tokens, heads, head_dim]
  KvLayerView kv;
  size_t tokens = 0;
  size_t heads = 0;
  size_t kv_heads = 0;
  size_t first_position = 0;  // position of token 0
  size_t window = 0;          // 0: full causal; else keys with p > q_pos - window
  float scale = 1.0f;         // multiplies q.k
  float softcap = 0.0f;       // 0: none
};

// Causal (optionally sliding-window) attention of every (token, head) over
// the cache, grouped-query: head h reads kv head h / (heads / kv_heads).
// Threads split the (token, head) pairs.
void Attention(const AttentionArgs& a);

}  // namespace lowbit

#endif  // LOWBIT_OPS_OPS_H_
