// Dispatch and threading for the kernels in ops-inl.h; the scalar parts
// (rotary angles, KV cache stores) live here too.
#include "ops/ops.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/ops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "ops/ops-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cmath>

#include "util/thread_pool.h"

namespace lowbit {

HWY_EXPORT(RmsNormRows);
HWY_EXPORT(GatedActivationRange);
HWY_EXPORT(SoftmaxInPlace);
HWY_EXPORT(SoftCapRange);
HWY_EXPORT(AttentionRange);

void RmsNorm(const float* x, const float* w, size_t rows, size_t dim,
             float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsNormRows)(x, w, rows, dim, eps, out);
}

void GatedActivation(Activation act, const float* gate, const float* up,
                     size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(GatedActivationRange)(act, gate, up, n, out);
}

void Softmax(float* x, size_t n) {
  if (n != 0) HWY_DYNAMIC_DISPATCH(SoftmaxInPlace)(x, n);
}

void SoftCap(float* y, size_t n, float cap) {
  HWY_DYNAMIC_DISPATCH(SoftCapRange)(y, n, cap);
}

void ApplyRope(float* x, size_t heads, size_t head_dim, const float* inv_freq,
               double position, float scaling) {
  const size_t half = head_dim / 2;
  for (size_t i = 0; i < half; ++i) {
    // HF forms the angle as a float32 product, then cos/sin in float32.
    const float angle = static_cast<float>(position) * inv_freq[i];
    const float c = static_cast<float>(std::cos(static_cast<double>(angle))) * scaling;
    const float s = static_cast<float>(std::sin(static_cast<double>(angle))) * scaling;
    for (size_t h = 0; h < heads; ++h) {
      float* v = x + h * head_dim;
      const float a = v[i];
      const float b = v[i + half];
      v[i] = a * c - b * s;
      v[i + half] = b * c + a * s;
    }
  }
}

namespace {

// Symmetric int8 of one vector: scale = max|x| / 127.
void QuantizeI8(const float* x, size_t n, int8_t* codes, float* scale) {
  float amax = 0.0f;
  for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = amax / 127.0f;
  const float inv = s == 0.0f ? 0.0f : 1.0f / s;
  for (size_t i = 0; i < n; ++i) {
    codes[i] = static_cast<int8_t>(std::nearbyint(x[i] * inv));
  }
  *scale = s;
}

}  // namespace

void StoreKv(const KvLayerView& kv, size_t kv_heads, size_t position,
             const float* k, const float* v) {
  const size_t hd = kv.head_dim;
  for (size_t h = 0; h < kv_heads; ++h) {
    const size_t slot = h * kv.context + position;
    if (kv.int8()) {
      QuantizeI8(k + h * hd, hd, kv.k8 + slot * hd, kv.k_scale + slot);
      QuantizeI8(v + h * hd, hd, kv.v8 + slot * hd, kv.v_scale + slot);
    } else {
      std::copy(k + h * hd, k + (h + 1) * hd, kv.k + slot * hd);
      std::copy(v + h * hd, v + (h + 1) * hd, kv.v + slot * hd);
    }
  }
}

void Attention(const AttentionArgs& a) {
  const size_t tasks = a.tokens * a.heads;
  ThreadPool::Global().ParallelFor(tasks, 1, [&](size_t begin, size_t end) {
    HWY_DYNAMIC_DISPATCH(AttentionRange)(a, begin, end);
  });
}

}  // namespace lowbit
#endif  // HWY_ONCE
