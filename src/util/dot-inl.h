// Dot products of float32 vectors, compiled once per Highway target by each
// kernel file that includes it (ops, moe).

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_UTIL_DOT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_UTIL_DOT_INL_H_
#undef LOWBIT_UTIL_DOT_INL_H_
#else
#define LOWBIT_UTIL_DOT_INL_H_
#endif

#include <cstddef>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// sum_i a[i] * b[i]. Two accumulators hide the multiply-add latency.
HWY_INLINE float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b,
                     size_t n) {
  namespace hn = hwy::HWY_NAMESPACE;
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto acc0 = hn::Zero(d);
  auto acc1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), acc1);
  }
  for (; i + N <= n; i += N) {
    acc0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), acc0);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(acc0, acc1)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// sum_i a[i] * b[i] accumulated in float64 and rounded once to float32.
//
// For results that feed discrete decisions (an argmax, a sort, a cluster
// assignment) and must not depend on the machine. Each product of two floats
// is exact in float64, so the targets differ only in the order of the float64
// additions: a relative difference of about n * 1e-16. Rounding to float32
// (ulp 6e-8) then gives the same float on every target and thread count
// unless the sum lies within that distance of a rounding midpoint, about
// 1e-9 of the time for n ~ 1e4, where a float32 Dot differs in most results.
HWY_INLINE float DotReproducible(const float* HWY_RESTRICT a,
                                 const float* HWY_RESTRICT b, size_t n) {
  namespace hn = hwy::HWY_NAMESPACE;
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;  // as many floats as doubles
  const size_t N = hn::Lanes(dd);
  auto acc0 = hn::Zero(dd);
  auto acc1 = hn::Zero(dd);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::MulAdd(hn::PromoteTo(dd, hn::LoadU(df, a + i)),
                      hn::PromoteTo(dd, hn::LoadU(df, b + i)), acc0);
    acc1 = hn::MulAdd(hn::PromoteTo(dd, hn::LoadU(df, a + i + N)),
                      hn::PromoteTo(dd, hn::LoadU(df, b + i + N)), acc1);
  }
  double sum = hn::GetLane(hn::SumOfLanes(dd, hn::Add(acc0, acc1)));
  for (; i < n; ++i) sum += double{a[i]} * double{b[i]};
  return static_cast<float>(sum);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
