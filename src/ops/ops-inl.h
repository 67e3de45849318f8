// SIMD bodies of ops.h, compiled once per Highway target by ops.cc.

#if defined(LOWBIT_OPS_OPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_OPS_OPS_INL_H_
#undef LOWBIT_OPS_OPS_INL_H_
#else
#define LOWBIT_OPS_OPS_INL_H_
#endif

#include <cmath>
#include <vector>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "ops/ops.h"
#include "util/dot-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

// Dot of float32 a with int8 codes b (times nothing: the caller scales).
HWY_INLINE float DotI8(const float* HWY_RESTRICT a,
                       const int8_t* HWY_RESTRICT b, size_t n) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<int8_t, DF> d8;
  const size_t N = hn::Lanes(d);
  auto acc = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto w = hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(d8, b + i)));
    acc = hn::MulAdd(hn::LoadU(d, a + i), w, acc);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) sum += a[i] * static_cast<float>(b[i]);
  return sum;
}

// y += alpha * x
HWY_INLINE void Axpy(float alpha, const float* HWY_RESTRICT x,
                     float* HWY_RESTRICT y, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto va = hn::Set(d, alpha);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d,
               y + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

HWY_INLINE void AxpyI8(float alpha, const int8_t* HWY_RESTRICT x,
                       float* HWY_RESTRICT y, size_t n) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<int8_t, DF> d8;
  const size_t N = hn::Lanes(d);
  const auto va = hn::Set(d, alpha);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto w = hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(d8, x + i)));
    hn::StoreU(hn::MulAdd(va, w, hn::LoadU(d, y + i)), d, y + i);
  }
  for (; i < n; ++i) y[i] += alpha * static_cast<float>(x[i]);
}

void RmsNormRows(const float* HWY_RESTRICT x, const float* HWY_RESTRICT w,
                 size_t rows, size_t dim, float eps, float* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    const float mean_sq = Dot(xr, xr, dim) / static_cast<float>(dim);
    const float inv = 1.0f / std::sqrt(mean_sq + eps);
    const auto vinv = hn::Set(d, inv);
    size_t i = 0;
    for (; i + N <= dim; i += N) {
      // HF order: (x * inv) * w, each product rounded.
      const auto normed = hn::Mul(hn::LoadU(d, xr + i), vinv);
      hn::StoreU(hn::Mul(normed, hn::LoadU(d, w + i)), d, o + i);
    }
    for (; i < dim; ++i) o[i] = (xr[i] * inv) * w[i];
  }
}

void GatedActivationRange(Activation act, const float* HWY_RESTRICT gate,
                          const float* HWY_RESTRICT up, size_t n, float* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto one = hn::Set(d, 1.0f);
  const auto half = hn::Set(d, 0.5f);
  const auto k0 = hn::Set(d, 0.7978845608028654f);  // sqrt(2 / pi)
  const auto k1 = hn::Set(d, 0.044715f);
  auto apply = [&](hn::Vec<DF> g) {
    if (act == Activation::kSilu) {
      // g * sigmoid(g) = g / (1 + exp(-g))
      return hn::Div(g, hn::Add(one, hn::Exp(d, hn::Neg(g))));
    }
    const auto inner = hn::Mul(k0, hn::MulAdd(hn::Mul(k1, hn::Mul(g, g)), g, g));
    return hn::Mul(hn::Mul(half, g), hn::Add(one, hn::Tanh(d, inner)));
  };
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(apply(hn::LoadU(d, gate + i)), hn::LoadU(d, up + i)), d,
               out + i);
  }
  if (i < n) {
    HWY_ALIGN float g[hn::MaxLanes(d)] = {};
    HWY_ALIGN float u[hn::MaxLanes(d)] = {};
    for (size_t j = i; j < n; ++j) {
      g[j - i] = gate[j];
      u[j - i] = up[j];
    }
    HWY_ALIGN float o[hn::MaxLanes(d)];
    hn::Store(hn::Mul(apply(hn::Load(d, g)), hn::Load(d, u)), d, o);
    for (size_t j = i; j < n; ++j) out[j] = o[j - i];
  }
}

HWY_INLINE void SoftmaxRow(float* HWY_RESTRICT x, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  float mx = x[0];
  for (size_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  const auto vmax = hn::Set(d, mx);
  auto vsum = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, x + i), vmax));
    vsum = hn::Add(vsum, e);
    hn::StoreU(e, d, x + i);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, vsum));
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const auto inv = hn::Set(d, 1.0f / sum);
  for (i = 0; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(hn::LoadU(d, x + i), inv), d, x + i);
  }
  for (; i < n; ++i) x[i] *= 1.0f / sum;
}

void SoftmaxInPlace(float* x, size_t n) { SoftmaxRow(x, n); }

void SoftCapRange(float* HWY_RESTRICT y, size_t n, float cap) {
  for (size_t i = 0; i < n; ++i) y[i] = std::tanh(y[i] / cap) * cap;
}

// (token, head) pairs [begin, end) of a.
void AttentionRange(const AttentionArgs& a, size_t begin, size_t end) {
  const size_t hd = a.kv.head_dim;
  const size_t group = a.heads / a.kv_heads;
  std::vector<float> scores(a.first_position + a.tokens);
  for (size_t task = begin; task < end; ++task) {
    const size_t t = task / a.heads;
    const size_t h = task % a.heads;
    const size_t kvh = h / group;
    const size_t pos = a.first_position + t;
    const size_t lo = (a.window != 0 && pos + 1 > a.window) ? pos + 1 - a.window : 0;
    const float* q = a.q + (t * a.heads + h) * hd;
    const size_t base = kvh * a.kv.context;
    const size_t len = pos + 1 - lo;
    for (size_t p = lo; p <= pos; ++p) {
      float s;
      if (a.kv.int8()) {
        s = DotI8(q, a.kv.k8 + (base + p) * hd, hd) * a.kv.k_scale[base + p];
      } else {
        s = Dot(q, a.kv.k + (base + p) * hd, hd);
      }
      s *= a.scale;
      if (a.softcap != 0.0f) s = std::tanh(s / a.softcap) * a.softcap;
      scores[p - lo] = s;
    }
    SoftmaxRow(scores.data(), len);
    float* out = a.out + (t * a.heads + h) * hd;
    for (size_t i = 0; i < hd; ++i) out[i] = 0.0f;
    for (size_t p = lo; p <= pos; ++p) {
      const float w = scores[p - lo];
      if (a.kv.int8()) {
        AxpyI8(w * a.kv.v_scale[base + p], a.kv.v8 + (base + p) * hd, out, hd);
      } else {
        Axpy(w, a.kv.v + (base + p) * hd, out, hd);
      }
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_OPS_OPS_INL_H_
