// The KV cache: keys and values of every layer for `context` positions,
// float32 or int8 (one scale per kv head and position). Allocated once at its
// full size but never touched beyond the positions used, so memory is taken
// from the OS as the sequence grows, never more than the context asked for.
#ifndef LOWBIT_MODEL_KV_CACHE_H_
#define LOWBIT_MODEL_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "ops/ops.h"

namespace lowbit {

// Most positions a cache holds: rotary angles take the position as a float32,
// exact up to 2^24.
inline constexpr size_t kMaxContext = size_t{1} << 24;

class KvCache {
 public:
  // std::length_error (SizeOverflow) when the sizes overflow,
  // std::invalid_argument beyond kMaxContext, std::bad_alloc when the memory
  // cannot be reserved.
  KvCache(size_t layers, size_t kv_heads, size_t head_dim, size_t context,
          bool int8);

  KvLayerView layer(size_t l) const;
  size_t context() const { return context_; }
  bool int8() const { return int8_; }
  // Bytes reserved for all layers at the full context.
  size_t bytes() const;

 private:
  size_t layers_, kv_heads_, head_dim_, context_;
  bool int8_;
  size_t per_layer_;  // elements of K (or V) per layer
  // Uninitialised on purpose (new T[] without ()): untouched pages cost no
  // resident memory.
  std::unique_ptr<float[]> k_, v_, k_scale_, v_scale_;
  std::unique_ptr<int8_t[]> k8_, v8_;
};

}  // namespace lowbit

#endif  // LOWBIT_MODEL_KV_CACHE_H_
