#include "model/kv_cache.h"

#include <stdexcept>
#include <string>

#include "util/checked.h"

namespace lowbit {

KvCache::KvCache(size_t layers, size_t kv_heads, size_t head_dim,
                 size_t context, bool int8)
    : layers_(layers),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      context_(context),
      int8_(int8),
      per_layer_(0) {
  if (context > kMaxContext) {
    throw std::invalid_argument(
        "context: " + std::to_string(context) + " positions is more than " +
        std::to_string(kMaxContext) + " (float32 positions are exact below)");
  }
  per_layer_ = CheckedProduct("KV cache", kv_heads, context, head_dim);
  // The bytes of all buffers (K and V, plus the int8 cache's scales) must be
  // representable: bytes() and the pointer arithmetic in layer() rely on it.
  const char* what = "KV cache";
  const size_t total = CheckedMul(layers, per_layer_, what);
  const size_t scales = CheckedProduct(what, layers, kv_heads, context);
  const size_t code_bytes =
      CheckedBytes(total, 2 * (int8 ? 1 : sizeof(float)), what);
  const size_t scale_bytes =
      int8 ? CheckedBytes(scales, 2 * sizeof(float), what) : 0;
  CheckedBytes(CheckedAdd(code_bytes, scale_bytes, what), 1, what);
  if (int8) {
    k8_.reset(new int8_t[total]);
    v8_.reset(new int8_t[total]);
    k_scale_.reset(new float[scales]);
    v_scale_.reset(new float[scales]);
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
