// Round-to-nearest (rtn) parameters: from each group's statistics by the
// scheme's scale rule, for a whole row at once or one group with a clip ratio
// (the mse search scales the rtn parameters).

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_SEARCH_RTN_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_SEARCH_RTN_INL_H_
#undef LOWBIT_QUANT_SEARCH_RTN_INL_H_
#else
#define LOWBIT_QUANT_SEARCH_RTN_INL_H_
#endif

#include <cmath>

#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "quant/params-inl.h"
#include "quant/quant_params.h"
#include "quant/stats-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// rtn parameters of all groups of a row from their statistics, the same
// arithmetic as FromScale / FromRange lane by lane. gmin is unused for
// kAbsMax (gmax holds max |x|). Returns false if a parameter overflows.
HWY_INLINE bool RtnParamsRow(const QuantParams& p, const float* gmin,
                             const float* gmax, size_t groups, float* scale,
                             float* inv, float* zero) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  bool ok = true;
  if (p.rule == ScaleRule::kAbsMax) {
    const auto div = hn::Set(d, p.scale_divisor);
    for (; i + N <= groups; i += N) {
      const auto s = StoreParam(p, d, hn::Div(hn::LoadU(d, gmax + i), div));
      hn::StoreU(s, d, scale + i);
      hn::StoreU(Inverse(d, s), d, inv + i);
      hn::StoreU(hn::Zero(d), d, zero + i);
    }
    for (; i < groups; ++i) {
      const GroupQ q = FromScale(p, gmax[i] / p.scale_divisor);
      scale[i] = q.scale;
      inv[i] = q.inv;
      zero[i] = q.zero;
    }
  } else if (p.rule == ScaleRule::kSignedMax) {
    for (; i < groups; ++i) {
      const GroupQ q =
          FromScale(p, SignedExtreme(gmin[i], gmax[i]) / p.scale_divisor);
      scale[i] = q.scale;
      inv[i] = q.inv;
      zero[i] = q.zero;
    }
  } else {
    const auto qmax = hn::Set(d, static_cast<float>(p.qmax));
    const auto vzero = hn::Zero(d);
    for (; i + N <= groups; i += N) {
      const auto mn = hn::LoadU(d, gmin + i);
      const auto mx = hn::LoadU(d, gmax + i);
      const auto constant = hn::Eq(mx, mn);
      const auto s = StoreParam(
          p, d,
          hn::IfThenElse(constant, hn::Abs(mx), hn::Div(hn::Sub(mx, mn), qmax)));
      const auto vinv = Inverse(d, s);
      // -sign(mx) for a constant group (exact with code 0).
      const auto neg_sign = hn::Sub(
          hn::IfThenElseZero(hn::Lt(mx, vzero), hn::Set(d, 1.0f)),
          hn::IfThenElseZero(hn::Gt(mx, vzero), hn::Set(d, 1.0f)));
      const auto z = hn::IfThenElse(
          constant, neg_sign, StoreParam(p, d, hn::Mul(hn::Neg(mn), vinv)));
      hn::StoreU(s, d, scale + i);
      hn::StoreU(vinv, d, inv + i);
      hn::StoreU(z, d, zero + i);
    }
    for (; i < groups; ++i) {
      const GroupQ q = FromRange(p, gmin[i], gmax[i]);
      scale[i] = q.scale;
      inv[i] = q.inv;
      zero[i] = q.zero;
    }
  }
  for (size_t j = 0; j < groups; ++j) {
    ok &= std::isfinite(scale[j]) && std::isfinite(zero[j]);
  }
  return ok;
}

// The round-to-nearest parameters of a group, scaled by a clip `ratio`.
template <typename T>
HWY_INLINE GroupQ RtnParams(const QuantParams& p, const T* x, size_t len,
                            const GroupStats& st, float ratio) {
  switch (p.rule) {
    case ScaleRule::kAbsMax:
      return FromScale(p, (st.absmax * ratio) / p.scale_divisor);
    case ScaleRule::kSignedMax:
      return FromScale(p, (SignedExtreme(st.min, st.max) * ratio) /
                              p.scale_divisor);
    case ScaleRule::kMeanAbs:
      return FromScale(p, MeanAbs(x, len) * ratio);
    case ScaleRule::kMinMax:
      return FromRange(p, st.min * ratio, st.max * ratio);
  }
  return GroupQ{0.0f, 0.0f, 0.0f};
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_SEARCH_RTN_INL_H_
