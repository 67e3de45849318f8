// The mse search: the clip ratio of the rtn parameters (MseRatio) that
// minimises a group's squared reconstruction error.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_SEARCH_MSE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_SEARCH_MSE_INL_H_
#undef LOWBIT_QUANT_SEARCH_MSE_INL_H_
#else
#define LOWBIT_QUANT_SEARCH_MSE_INL_H_
#endif

#include "hwy/highway.h"
#include "quant/params-inl.h"
#include "quant/quant_params.h"
#include "quant/search_rtn-inl.h"
#include "quant/stats-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// Tries the ratios in order from 1 and keeps the first one of least error
// (weighted by `w` when given, see GroupSse); ratios whose parameters
// overflow are skipped.
template <typename T>
HWY_INLINE GroupQ MseParams(const QuantParams& p, const T* x, size_t len,
                            const GroupStats& st, const float* w = nullptr) {
  GroupQ best = RtnParams(p, x, len, st, 1.0f);
  float best_sse = GroupSse(p, x, len, best, w);
  for (int step = 1; step < MseSteps(p); ++step) {
    const GroupQ cand = RtnParams(p, x, len, st, MseRatio(p, step));
    if (!IsFiniteQ(cand)) continue;
    const float sse = GroupSse(p, x, len, cand, w);
    if (sse < best_sse) {
      best = cand;
      best_sse = sse;
    }
  }
  return best;
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_SEARCH_MSE_INL_H_
