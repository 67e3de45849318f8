// A group's quantization parameters (scale, 1/scale, zero point) as the
// searches in search_*-inl.h build them: the rounding of stored parameters,
// the symmetric and asymmetric forms, and the squared error the mse and hqq
// searches minimise.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_PARAMS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_PARAMS_INL_H_
#undef LOWBIT_QUANT_PARAMS_INL_H_
#else
#define LOWBIT_QUANT_PARAMS_INL_H_
#endif

#include <cmath>

#include "hwy/highway.h"
#include "quant/cast-inl.h"
#include "quant/decode-inl.h"
#include "quant/quant_params.h"
#include "util/float16.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// Round half to even, clamped to [lo, hi]; the clamp comes first so that no
// value can overflow the int32 conversion (the result is the same).
HWY_INLINE float RoundClamp(float t, float lo, float hi) {
  return std::nearbyint(std::fmin(std::fmax(t, lo), hi));
}

// A group's stored scale and zero point, and 1/scale for the codes.
struct GroupQ {
  float scale;
  float inv;
  float zero;
};

HWY_INLINE float StoreParam(const QuantParams& p, float v) {
  // Qualified: the vector RoundToF16 of cast-inl.h hides the scalar one.
  return p.f16_params ? lowbit::RoundToF16(v) : v;
}

HWY_INLINE float Inverse(float scale) {
  return scale == 0.0f ? 0.0f : 1.0f / scale;
}

// Symmetric: x^ = scale * q.
HWY_INLINE GroupQ FromScale(const QuantParams& p, float scale) {
  const float stored = StoreParam(p, scale);
  return GroupQ{stored, Inverse(stored), 0.0f};
}

// Asymmetric: x^ = scale * (q - zero), [mn, mx] mapped onto [0, qmax].
HWY_INLINE GroupQ FromRange(const QuantParams& p, float mn, float mx) {
  if (mx == mn) {
    // A constant group is exact with code 0: zero = -sign(x), scale = |x|.
    const float stored = StoreParam(p, std::fabs(mx));
    const float zero = mx > 0.0f ? -1.0f : (mx < 0.0f ? 1.0f : 0.0f);
    return GroupQ{stored, Inverse(stored), zero};
  }
  const float stored = StoreParam(p, (mx - mn) / static_cast<float>(p.qmax));
  const float inv = Inverse(stored);
  return GroupQ{stored, inv, StoreParam(p, -mn * inv)};
}

HWY_INLINE bool IsFiniteQ(const GroupQ& q) {
  return std::isfinite(q.scale) && std::isfinite(q.zero);
}

HWY_INLINE hn::Vec<DF> StoreParam(const QuantParams& p, DF d, hn::Vec<DF> v) {
  return p.f16_params ? RoundToF16(d, v) : v;
}

HWY_INLINE hn::Vec<DF> Inverse(DF d, hn::Vec<DF> scale) {
  const auto zero = hn::Zero(d);
  const auto is_zero = hn::Eq(scale, zero);
  // Dividing by 1 where scale is 0 keeps the lane finite; it is then zeroed.
  const auto safe = hn::IfThenElse(is_zero, hn::Set(d, 1.0f), scale);
  return hn::IfThenZeroElse(is_zero, hn::Div(hn::Set(d, 1.0f), safe));
}

// kSignedMax: the group's value of largest magnitude, sign kept.
HWY_INLINE float SignedExtreme(float mn, float mx) {
  return -mn > mx ? mn : mx;
}

// Squared reconstruction error of a group under parameters q: what the mse
// and hqq searches minimise. With `w` (len importances, E[x_j^2] of the
// column's input from calibration) each error is weighted: sum w_j d_j^2,
// the expected squared error of the layer's output from this group. w = null
// is the plain sum (and w = 1 gives the same float32 result).
template <typename T>
HWY_INLINE float GroupSse(const QuantParams& p, const T* HWY_RESTRICT x,
                          size_t len, const GroupQ& q,
                          const float* HWY_RESTRICT w = nullptr) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const bool asym = p.asymmetric();
  const float lo = static_cast<float>(p.qmin);
  const float hi = static_cast<float>(p.qmax);
  const auto vinv = hn::Set(d, q.inv);
  const auto vzero = hn::Set(d, q.zero);
  const auto vscale = hn::Set(d, q.scale);
  const auto vlo = hn::Set(d, lo);
  const auto vhi = hn::Set(d, hi);
  auto acc = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= len; i += N) {
    const auto v = LoadF32(d, x + i);
    auto t = hn::Mul(v, vinv);
    if (asym) t = hn::Add(t, vzero);
    const auto code = hn::Round(hn::Min(hn::Max(t, vlo), vhi));
    const auto rec = hn::Mul(hn::Sub(code, vzero), vscale);
    const auto diff = hn::Sub(v, rec);
    const auto wdiff = w == nullptr ? diff : hn::Mul(hn::LoadU(d, w + i), diff);
    acc = hn::MulAdd(wdiff, diff, acc);
  }
  float sse = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < len; ++i) {
    const float v = ToF32(x[i]);
    float t = v * q.inv;
    if (asym) t += q.zero;
    const float diff = v - (RoundClamp(t, lo, hi) - q.zero) * q.scale;
    sse += (w == nullptr ? diff : w[i] * diff) * diff;
  }
  return sse;
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_PARAMS_INL_H_
