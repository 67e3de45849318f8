#include "model/kv_cache.h"

namespace lowbit {

KvCache::KvCache(size_t layers, size_t kv_heads, size_t head_dim,
                 size_t context, bool int8)
    : layers_(layers),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      context_(context),
      int8_(int8),
      per_layer_(kv_heads * context * head_dim) {
  const size_t total = layers * per_layer_;
  if (int8) {
    k8_.reset(new int8_t[total]);
    v8_.reset(new int8_t[total]);
    k_scale_.reset(new float[layers * kv_heads * context]);
    v_scale_.reset(new float[layers * kv_heads * context]);
  } else {
    k_.reset(new float[total]);
    v_.reset(new float[total]);
  }
}

KvLayerView KvCache::layer(size_t l) const {
  KvLayerView view;
  view.context = context_;
  view.head_dim = head_dim_;
  if (int8_) {
    view.k8 = k8_.get() + l * per_layer_;
    view.v8 = v8_.get() + l * per_layer_;
    view.k_scale = k_scale_.get() + l * kv_heads_ * context_;
    view.v_scale = v_scale_.get() + l * kv_heads_ * context_;
  } else {
    view.k = k_.get() + l * per_layer_;
    view.v = v_.get() + l * per_layer_;
  }
  return view;
}

size_t KvCache::bytes() const {
  const size_t codes = 2 * layers_ * per_layer_;
  if (int8_) return codes + 2 * layers_ * kv_heads_ * context_ * sizeof(float);
  return codes * sizeof(float);
}

}  // namespace lowbit
