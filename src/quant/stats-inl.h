// Per-group statistics of one row for the quantize kernels (quantize.cc):
// min, max, max |x| and mean |x|, and where a row's first NaN or Inf is.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_STATS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_STATS_INL_H_
#undef LOWBIT_QUANT_STATS_INL_H_
#else
#define LOWBIT_QUANT_STATS_INL_H_
#endif

#include <cmath>
#include <cstdint>

#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "util/float16.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// One group's statistics, as the parameter searches take them.
struct GroupStats {
  float min;
  float max;
  float absmax;
};

// Per-group max |x| of one row, into gmax. Works on the bit patterns: for
// non-negative floats integer order is float order, and NaN and Inf sort above
// every finite value, so one integer max per vector finds both the absmax and
// any non-finite value. Returns false when the row holds NaN or Inf.
template <typename T>
HWY_INLINE bool RowAbsMax(const T* HWY_RESTRICT row, size_t cols, size_t g,
                          float* HWY_RESTRICT gmax) {
  const DF d;
  const DI di;
  const size_t N = hn::Lanes(d);
  const auto abs_mask = hn::Set(di, 0x7FFFFFFF);
  int32_t row_max = 0;
  for (size_t start = 0, gi = 0; start < cols; start += g, ++gi) {
    const T* x = row + start;
    auto vmax = hn::Zero(di);
    size_t i = 0;
    for (; i + N <= g; i += N) {
      vmax = hn::Max(vmax, hn::And(hn::BitCast(di, LoadF32(d, x + i)), abs_mask));
    }
    int32_t mx = hn::GetLane(hn::MaxOfLanes(di, vmax));
    for (; i < g; ++i) {
      mx = HWY_MAX(mx, static_cast<int32_t>(BitsOf(ToF32(x[i])) & 0x7FFFFFFFu));
    }
    row_max = HWY_MAX(row_max, mx);
    gmax[gi] = FloatOf(static_cast<uint32_t>(mx));
  }
  return row_max < 0x7F800000;
}

// Per-group min and max of one row. Returns false when the row holds NaN or
// Inf.
template <typename T>
HWY_INLINE bool RowMinMax(const T* HWY_RESTRICT row, size_t cols, size_t g,
                          float* HWY_RESTRICT gmin, float* HWY_RESTRICT gmax) {
  const DF d;
  const size_t N = hn::Lanes(d);
  // x - x is 0 for finite x and NaN otherwise; the sum stays 0 or turns NaN.
  auto vbad = hn::Zero(d);
  float bad = 0.0f;
  for (size_t start = 0, gi = 0; start < cols; start += g, ++gi) {
    const T* x = row + start;
    auto vmin = hn::Set(d, HUGE_VALF);
    auto vmax = hn::Set(d, -HUGE_VALF);
    size_t i = 0;
    for (; i + N <= g; i += N) {
      const auto v = LoadF32(d, x + i);
      vbad = hn::Add(vbad, hn::Sub(v, v));
      vmin = hn::Min(vmin, v);
      vmax = hn::Max(vmax, v);
    }
    float mn = hn::GetLane(hn::MinOfLanes(d, vmin));
    float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
    for (; i < g; ++i) {
      const float v = ToF32(x[i]);
      bad += v - v;
      mn = std::fmin(mn, v);
      mx = std::fmax(mx, v);
    }
    gmin[gi] = mn;
    gmax[gi] = mx;
  }
  bad += hn::GetLane(hn::SumOfLanes(d, vbad));
  return bad == 0.0f;
}

template <typename T>
size_t FirstNonFinite(const T* x, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (!std::isfinite(ToF32(x[i]))) return i;
  }
  return 0;
}

// Mean of |x| in double precision: float32 rounding of the result then
// agrees with NumPy's pairwise float64 sum (both sums err by ~2^-53 relative,
// far below a float32 ulp). Eight partial sums break the add latency chain.
template <typename T>
HWY_INLINE float MeanAbs(const T* HWY_RESTRICT x, size_t len) {
  constexpr size_t kParts = 8;
  double part[kParts] = {};
  size_t i = 0;
  for (; i + kParts <= len; i += kParts) {
    for (size_t k = 0; k < kParts; ++k) {
      part[k] += std::fabs(static_cast<double>(ToF32(x[i + k])));
    }
  }
  for (; i < len; ++i) part[0] += std::fabs(static_cast<double>(ToF32(x[i])));
  double sum = 0.0;
  for (size_t k = 0; k < kParts; ++k) sum += part[k];
  return static_cast<float>(sum / static_cast<double>(len));
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_STATS_INL_H_
