// The hqq search (half-quadratic quantization, Badri & Shaji 2023): the
// min/max scale kept, the zero point optimised against an lp-norm residual.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_SEARCH_HQQ_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_SEARCH_HQQ_INL_H_
#undef LOWBIT_QUANT_SEARCH_HQQ_INL_H_
#else
#define LOWBIT_QUANT_SEARCH_HQQ_INL_H_
#endif

#include <cmath>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "quant/params-inl.h"
#include "quant/quant_params.h"
#include "quant/stats-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// One half-quadratic step (HQQ): with the codes fixed, the zero point that
// fits x minus the lp-shrunk residual: mean(q - (x - e) / scale), or with
// importances `w` the weighted mean sum(w (q - (x - e) / scale)) / sum(w),
// which is the zero point minimising the weighted squared error.
template <typename T>
HWY_INLINE float HqqZeroStep(const QuantParams& p, const T* HWY_RESTRICT x,
                             size_t len, const GroupQ& q, float beta,
                             const float* HWY_RESTRICT w) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const float lo = static_cast<float>(p.qmin);
  const float hi = static_cast<float>(p.qmax);
  const float inv_beta = 1.0f / beta;
  const auto vinv = hn::Set(d, q.inv);
  const auto vzero = hn::Set(d, q.zero);
  const auto vscale = hn::Set(d, q.scale);
  const auto vlo = hn::Set(d, lo);
  const auto vhi = hn::Set(d, hi);
  const auto vpow = hn::Set(d, kHqqLpNorm - 1.0f);
  const auto vtiny = hn::Set(d, 1e-30f);
  const auto vinv_beta = hn::Set(d, inv_beta);
  auto acc = hn::Zero(d);
  auto wacc = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= len; i += N) {
    const auto v = LoadF32(d, x + i);
    const auto t = hn::Add(hn::Mul(v, vinv), vzero);
    const auto code = hn::Round(hn::Min(hn::Max(t, vlo), vhi));
    const auto resid = hn::Sub(v, hn::Mul(hn::Sub(code, vzero), vscale));
    const auto mag = hn::Max(hn::Abs(resid), vtiny);
    // |r|^(p-1) as exp((p-1) log|r|).
    const auto thresh =
        hn::Mul(hn::Exp(d, hn::Mul(vpow, hn::Log(d, mag))), vinv_beta);
    const auto shrunk = hn::Max(hn::Sub(hn::Abs(resid), thresh), hn::Zero(d));
    const auto e = hn::CopySignToAbs(shrunk, resid);
    const auto step = hn::Sub(code, hn::Mul(hn::Sub(v, e), vinv));
    if (w == nullptr) {
      acc = hn::Add(acc, step);
    } else {
      const auto vw = hn::LoadU(d, w + i);
      acc = hn::MulAdd(vw, step, acc);
      wacc = hn::Add(wacc, vw);
    }
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, acc));
  float wsum = hn::GetLane(hn::SumOfLanes(d, wacc));
  for (; i < len; ++i) {
    const float v = ToF32(x[i]);
    const float code = RoundClamp(v * q.inv + q.zero, lo, hi);
    const float resid = v - (code - q.zero) * q.scale;
    const float mag = std::fmax(std::fabs(resid), 1e-30f);
    const float thresh = std::pow(mag, kHqqLpNorm - 1.0f) * inv_beta;
    const float e = std::copysign(std::fmax(std::fabs(resid) - thresh, 0.0f),
                                  resid);
    const float step = code - (v - e) * q.inv;
    if (w == nullptr) {
      sum += step;
    } else {
      sum += w[i] * step;
      wsum += w[i];
    }
  }
  if (w == nullptr) return sum / static_cast<float>(len);
  // All-zero importances (a channel never active in calibration): the plain
  // step is as good as any.
  return wsum > 0.0f ? sum / wsum : HqqZeroStep(p, x, len, q, beta, nullptr);
}

// HQQ keeps the min/max scale and optimises the zero point. Each step's zero
// point is kept only while it lowers the squared error, so hqq is never worse
// than rtn on the measure the tests and users compare.
template <typename T>
HWY_INLINE GroupQ HqqParams(const QuantParams& p, const T* x, size_t len,
                            const GroupStats& st, const float* w = nullptr) {
  GroupQ best = FromRange(p, st.min, st.max);
  if (best.scale == 0.0f || st.min == st.max) return best;
  float best_sse = GroupSse(p, x, len, best, w);
  float beta = kHqqBeta;
  for (int it = 0; it < kHqqIters; ++it) {
    GroupQ cand = best;
    cand.zero = StoreParam(p, HqqZeroStep(p, x, len, best, beta, w));
    beta *= kHqqKappa;
    if (!std::isfinite(cand.zero)) break;
    const float sse = GroupSse(p, x, len, cand, w);
    if (!(sse < best_sse)) break;
    best = cand;
    best_sse = sse;
  }
  return best;
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_SEARCH_HQQ_INL_H_
