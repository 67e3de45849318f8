// SIMD bodies of the quantize / dequantize kernels, compiled once per Highway
// target by quantize.cc. The NumPy reference in python/lowbit/reference.py is
// the spec: for rtn the codes here equal its codes bit for bit.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_QUANTIZE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_QUANTIZE_INL_H_
#undef LOWBIT_QUANT_QUANTIZE_INL_H_
#else
#define LOWBIT_QUANT_QUANTIZE_INL_H_
#endif

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "quant/quant_params.h"
#include "util/errors.h"
#include "util/float16.h"

// Whether this target converts float32 to float16 with round-to-nearest-even
// in hardware (F16C); Highway's emulation elsewhere truncates. Redefined for
// each target this file is compiled for.
#undef LOWBIT_HAVE_F16_RNE
#if HWY_ARCH_X86 && HWY_TARGET < HWY_SSE4 && !defined(HWY_DISABLE_F16C)
#define LOWBIT_HAVE_F16_RNE 1
#else
#define LOWBIT_HAVE_F16_RNE 0
#endif

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// Round half to even, clamped to [lo, hi]; the clamp comes first so that no
// value can overflow the int32 conversion (the result is the same).
HWY_INLINE float RoundClamp(float t, float lo, float hi) {
  return std::nearbyint(std::fmin(std::fmax(t, lo), hi));
}

// ---------------------------------------------------------------- statistics

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

// ---------------------------------------------------------------- parameters

// A group's stored scale and zero point, and 1/scale for the codes.
struct GroupQ {
  float scale;
  float inv;
  float zero;
};

HWY_INLINE float StoreParam(const QuantParams& p, float v) {
  return p.f16_params ? RoundToF16(v) : v;
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

// Rounds each lane to the nearest float16 value (ties to even). F16C does
// that in hardware; Highway's emulation on older targets truncates, so those
// use the scalar conversion.
HWY_INLINE hn::Vec<DF> RoundToF16(DF d, hn::Vec<DF> v) {
#if LOWBIT_HAVE_F16_RNE
  const hn::Rebind<hwy::float16_t, DF> d16;
  return hn::PromoteTo(d, hn::DemoteTo(d16, v));
#else
  HWY_ALIGN float lanes[hn::MaxLanes(d)];
  hn::Store(v, d, lanes);
  for (size_t i = 0; i < hn::Lanes(d); ++i) lanes[i] = lowbit::RoundToF16(lanes[i]);
  return hn::Load(d, lanes);
#endif
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

// Squared reconstruction error of a group under parameters q.
template <typename T>
HWY_INLINE float GroupSse(const QuantParams& p, const T* HWY_RESTRICT x,
                          size_t len, const GroupQ& q) {
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
    acc = hn::MulAdd(diff, diff, acc);
  }
  float sse = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < len; ++i) {
    const float v = ToF32(x[i]);
    float t = v * q.inv;
    if (asym) t += q.zero;
    const float diff = v - (RoundClamp(t, lo, hi) - q.zero) * q.scale;
    sse += diff * diff;
  }
  return sse;
}

// One half-quadratic step (HQQ): with the codes fixed, the zero point that
// fits x minus the lp-shrunk residual: mean(q - (x - e) / scale).
template <typename T>
HWY_INLINE float HqqZeroStep(const QuantParams& p, const T* HWY_RESTRICT x,
                             size_t len, const GroupQ& q, float beta) {
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
    acc = hn::Add(acc, hn::Sub(code, hn::Mul(hn::Sub(v, e), vinv)));
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < len; ++i) {
    const float v = ToF32(x[i]);
    const float code = RoundClamp(v * q.inv + q.zero, lo, hi);
    const float resid = v - (code - q.zero) * q.scale;
    const float mag = std::fmax(std::fabs(resid), 1e-30f);
    const float thresh = std::pow(mag, kHqqLpNorm - 1.0f) * inv_beta;
    const float e = std::copysign(std::fmax(std::fabs(resid) - thresh, 0.0f),
                                  resid);
    sum += code - (v - e) * q.inv;
  }
  return sum / static_cast<float>(len);
}

// HQQ keeps the min/max scale and optimises the zero point. Each step's zero
// point is kept only while it lowers the squared error, so hqq is never worse
// than rtn on the measure the tests and users compare.
template <typename T>
HWY_INLINE GroupQ HqqParams(const QuantParams& p, const T* x, size_t len,
                            const GroupStats& st) {
  GroupQ best = FromRange(p, st.min, st.max);
  if (best.scale == 0.0f || st.min == st.max) return best;
  float best_sse = GroupSse(p, x, len, best);
  float beta = kHqqBeta;
  for (int it = 0; it < kHqqIters; ++it) {
    GroupQ cand = best;
    cand.zero = StoreParam(p, HqqZeroStep(p, x, len, best, beta));
    beta *= kHqqKappa;
    if (!std::isfinite(cand.zero)) break;
    const float sse = GroupSse(p, x, len, cand);
    if (!(sse < best_sse)) break;
    best = cand;
    best_sse = sse;
  }
  return best;
}

template <typename T>
HWY_INLINE GroupQ FindParams(const QuantParams& p, const T* x, size_t len,
                             const GroupStats& st) {
  if (p.method == Method::kHqq) return HqqParams(p, x, len, st);
  GroupQ best = RtnParams(p, x, len, st, 1.0f);
  if (p.method != Method::kMse) return best;
  float best_sse = GroupSse(p, x, len, best);
  for (int step = 1; step < MseSteps(p); ++step) {
    const GroupQ cand = RtnParams(p, x, len, st, MseRatio(p, step));
    if (!IsFiniteQ(cand)) continue;
    const float sse = GroupSse(p, x, len, cand);
    if (sse < best_sse) {
      best = cand;
      best_sse = sse;
    }
  }
  return best;
}

// ---------------------------------------------------------------- codes

// Encodes one 16-byte block from the values xb[0 .. 16 * 8 / kBits); seg
// holds the group index of each of the block's segments.
template <int kBits, bool kAsym, typename TT>
HWY_INLINE void EncodeBlock(const QuantParams& p, const TT* HWY_RESTRICT xb,
                            const uint32_t* HWY_RESTRICT seg,
                            const float* HWY_RESTRICT inv,
                            const float* HWY_RESTRICT zero,
                            uint8_t* HWY_RESTRICT out) {
  constexpr int kPer = 8 / kBits;
  constexpr bool kSigned = kBits == 8 && !kAsym;
  const DF d;
  const DI di;
  const size_t N = hn::Lanes(d);
  const auto vlo = hn::Set(d, static_cast<float>(p.qmin));
  const auto vhi = hn::Set(d, static_cast<float>(p.qmax));
  const auto voff = hn::Set(di, p.code_offset);
  for (size_t i = 0; i < kBlockBytes; i += N) {
    auto acc = hn::Zero(di);
    for (int k = 0; k < kPer; ++k) {
      const uint32_t grp = seg[k];
      auto t = hn::Mul(LoadF32(d, xb + k * kBlockBytes + i),
                       hn::Set(d, inv[grp]));
      if (kAsym) t = hn::Add(t, hn::Set(d, zero[grp]));
      auto q = hn::NearestInt(hn::Min(hn::Max(t, vlo), vhi));
      if (!kAsym) q = hn::Add(q, voff);
      acc = kPer == 1 ? q : hn::Or(acc, hn::ShiftLeftSame(q, k * kBits));
    }
    if (kSigned) {
      const hn::Rebind<int8_t, DI> d8;
      hn::StoreU(hn::DemoteTo(d8, acc), d8,
                 reinterpret_cast<int8_t*>(out) + i);
    } else {
      const hn::Rebind<uint8_t, DI> d8;
      hn::StoreU(hn::DemoteTo(d8, acc), d8, out + i);
    }
  }
}

template <int kBits, bool kAsym, typename T>
HWY_INLINE void EncodeRow(const QuantParams& p, const T* HWY_RESTRICT row,
                          size_t cols, const uint32_t* seg_group,
                          const float* inv, const float* zero,
                          uint8_t* HWY_RESTRICT out) {
  constexpr int kPer = 8 / kBits;
  constexpr size_t kCodes = kBlockBytes * kPer;
  const size_t full = cols / kCodes;
  for (size_t b = 0; b < full; ++b) {
    EncodeBlock<kBits, kAsym>(p, row + b * kCodes, seg_group + b * kPer, inv,
                              zero, out + b * kBlockBytes);
  }
  const size_t rest = cols - full * kCodes;
  if (rest != 0) {
    // The last block is padded with zeros, quantized like any other value.
    HWY_ALIGN float padded[kCodes] = {};
    for (size_t i = 0; i < rest; ++i) padded[i] = ToF32(row[full * kCodes + i]);
    // 8-bit rows are not padded in memory: encode the tail block aside.
    HWY_ALIGN uint8_t block[kBlockBytes];
    EncodeBlock<kBits, kAsym>(p, padded, seg_group + full * kPer, inv, zero,
                              block);
    const size_t tail_bytes = kBits == 8 ? rest : kBlockBytes;
    std::memcpy(out + full * kBlockBytes, block, tail_bytes);
  }
}

// Stores a row's parameters: float16 bits for groups, float32 per row. The
// values are already float16-exact, so any float16 conversion is exact here.
HWY_INLINE void WriteParams(const QuantParams& p, const float* HWY_RESTRICT src,
                            size_t n, void* HWY_RESTRICT dst, size_t offset) {
  if (!p.f16_params) {
    std::memcpy(static_cast<float*>(dst) + offset, src, n * sizeof(float));
    return;
  }
  uint16_t* out = static_cast<uint16_t*>(dst) + offset;
  const DF d;
  const hn::Rebind<hwy::float16_t, DF> d16;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::DemoteTo(d16, hn::LoadU(d, src + i)), d16,
               reinterpret_cast<hwy::float16_t*>(out + i));
  }
  for (; i < n; ++i) out[i] = F16BitsFromF32(src[i]);
}

// ---------------------------------------------------------------- rows

template <int kBits, bool kAsym, typename T>
void QuantizeRowsT(const T* HWY_RESTRICT x, size_t r0, size_t r1, size_t cols,
                   const QuantParams& p, uint8_t* HWY_RESTRICT codes,
                   void* HWY_RESTRICT scales, void* HWY_RESTRICT zeros,
                   ErrorSink* errors) {
  const size_t g = p.group_size == 0 ? cols : p.group_size;
  const size_t groups = cols / g;
  const size_t row_bytes = RowBytes(cols, kBits);
  const std::vector<uint32_t> seg_group = SegmentGroups(cols, g, kBits);
  // Round-to-nearest with an absmax scale needs only max |x| per group.
  const bool abs_only =
      p.rule == ScaleRule::kAbsMax && p.method == Method::kRtn;
  std::vector<float> gmin(groups), gmax(groups);
  std::vector<float> inv(groups), zero(groups), scale(groups);
  for (size_t r = r0; r < r1; ++r) {
    const T* row = x + r * cols;
    const bool finite = abs_only
                            ? RowAbsMax(row, cols, g, gmax.data())
                            : RowMinMax(row, cols, g, gmin.data(), gmax.data());
    if (!finite) {
      errors->Report(ErrorKind::kNonFinite, r, FirstNonFinite(row, cols));
      continue;
    }
    bool ok = true;
    if (p.method == Method::kRtn && p.rule != ScaleRule::kMeanAbs) {
      ok = RtnParamsRow(p, gmin.data(), gmax.data(), groups, scale.data(),
                        inv.data(), zero.data());
    } else {
      for (size_t gi = 0; gi < groups; ++gi) {
        const GroupStats st{gmin[gi], gmax[gi],
                            std::fmax(-gmin[gi], gmax[gi])};
        const GroupQ q = FindParams(p, row + gi * g, g, st);
        scale[gi] = q.scale;
        inv[gi] = q.inv;
        zero[gi] = q.zero;
        ok &= IsFiniteQ(q);
      }
    }
    if (!ok) {
      size_t gi = 0;
      while (std::isfinite(scale[gi]) && std::isfinite(zero[gi])) ++gi;
      errors->Report(ErrorKind::kScaleOverflow, r, gi * g);
      continue;
    }
    WriteParams(p, scale.data(), groups, scales, r * groups);
    if (zeros != nullptr) WriteParams(p, zero.data(), groups, zeros, r * groups);
    EncodeRow<kBits, kAsym>(p, row, cols, seg_group.data(), inv.data(),
                            zero.data(), codes + r * row_bytes);
  }
}

template <int kBits, bool kAsym>
void DequantizeRowsT(const uint8_t* HWY_RESTRICT codes,
                     const void* HWY_RESTRICT scales,
                     const void* HWY_RESTRICT zeros, size_t r0, size_t r1,
                     size_t cols, const QuantParams& p,
                     float* HWY_RESTRICT out) {
  RowDecoder<kBits, kAsym> decoder(codes, scales, zeros, cols, p);
  // Streaming stores need every row start aligned to the vector size, and
  // pay off only for outputs far larger than the last-level cache.
  const DF d;
  const size_t align = hn::Lanes(d) * sizeof(float);
  const bool stream =
      p.stream_output &&
      reinterpret_cast<uintptr_t>(out) % align == 0 &&
      (cols * sizeof(float)) % align == 0;
  for (size_t r = r0; r < r1; ++r) {
    if (stream) {
      decoder.template Decode<true>(r, out + r * cols);
    } else {
      decoder.Decode(r, out + r * cols);
    }
  }
  if (stream) hwy::FlushStream();
}

// Squared norm of each row of x and of its reconstruction error, without
// materialising the reconstruction: each row is decoded into a row buffer and
// compared at once. Sums per row are float32 vectors reduced into double.
template <int kBits, bool kAsym, typename T>
void ErrorRowsT(const T* HWY_RESTRICT x, const uint8_t* HWY_RESTRICT codes,
                const void* HWY_RESTRICT scales, const void* HWY_RESTRICT zeros,
                size_t r0, size_t r1, size_t cols, const QuantParams& p,
                double* HWY_RESTRICT signal, double* HWY_RESTRICT noise) {
  RowDecoder<kBits, kAsym> decoder(codes, scales, zeros, cols, p);
  std::vector<float> row_hat(cols);
  const DF d;
  const size_t N = hn::Lanes(d);
  for (size_t r = r0; r < r1; ++r) {
    decoder.Decode(r, row_hat.data());
    const T* row = x + r * cols;
    auto vs = hn::Zero(d);
    auto vn = hn::Zero(d);
    size_t i = 0;
    for (; i + N <= cols; i += N) {
      const auto v = LoadF32(d, row + i);
      const auto diff = hn::Sub(v, hn::LoadU(d, row_hat.data() + i));
      vs = hn::MulAdd(v, v, vs);
      vn = hn::MulAdd(diff, diff, vn);
    }
    double sig = hn::GetLane(hn::SumOfLanes(d, vs));
    double err = hn::GetLane(hn::SumOfLanes(d, vn));
    for (; i < cols; ++i) {
      const double v = ToF32(row[i]);
      const double diff = v - row_hat[i];
      sig += v * v;
      err += diff * diff;
    }
    signal[r] = sig;
    noise[r] = err;
  }
}

void QuantizeRows(const void* x, DType dtype, size_t r0, size_t r1,
                  size_t cols, const QuantParams& p, uint8_t* codes,
                  void* scales, void* zeros, ErrorSink* errors) {
  VisitLayout(p, [&](auto layout) {
    constexpr int kBits = decltype(layout)::kBits;
    constexpr bool kAsym = decltype(layout)::kAsym;
    switch (dtype) {
      case DType::kF32:
        return QuantizeRowsT<kBits, kAsym>(static_cast<const float*>(x), r0,
                                           r1, cols, p, codes, scales, zeros,
                                           errors);
      case DType::kF16:
        return QuantizeRowsT<kBits, kAsym>(
            static_cast<const hwy::float16_t*>(x), r0, r1, cols, p, codes,
            scales, zeros, errors);
      case DType::kBF16:
        return QuantizeRowsT<kBits, kAsym>(
            static_cast<const hwy::bfloat16_t*>(x), r0, r1, cols, p, codes,
            scales, zeros, errors);
    }
  });
}

void DequantizeRows(const uint8_t* codes, const void* scales,
                    const void* zeros, size_t r0, size_t r1, size_t cols,
                    const QuantParams& p, float* out) {
  VisitLayout(p, [&](auto layout) {
    constexpr int kBits = decltype(layout)::kBits;
    constexpr bool kAsym = decltype(layout)::kAsym;
    DequantizeRowsT<kBits, kAsym>(codes, scales, zeros, r0, r1, cols, p, out);
  });
}

void ErrorRows(const void* x, DType dtype, const uint8_t* codes,
               const void* scales, const void* zeros, size_t r0, size_t r1,
               size_t cols, const QuantParams& p, double* signal,
               double* noise) {
  VisitLayout(p, [&](auto layout) {
    constexpr int kBits = decltype(layout)::kBits;
    constexpr bool kAsym = decltype(layout)::kAsym;
    switch (dtype) {
      case DType::kF32:
        return ErrorRowsT<kBits, kAsym>(static_cast<const float*>(x), codes,
                                        scales, zeros, r0, r1, cols, p, signal,
                                        noise);
      case DType::kF16:
        return ErrorRowsT<kBits, kAsym>(
            static_cast<const hwy::float16_t*>(x), codes, scales, zeros, r0,
            r1, cols, p, signal, noise);
      case DType::kBF16:
        return ErrorRowsT<kBits, kAsym>(
            static_cast<const hwy::bfloat16_t*>(x), codes, scales, zeros, r0,
            r1, cols, p, signal, noise);
    }
  });
}

// The target this copy of the kernels was compiled for: tells tests which
// one dynamic dispatch picked.
int64_t KernelTarget() { return HWY_TARGET; }

// ---------------------------------------------------------------- casts

template <typename From>
float LoadScalar(const void* in, size_t i) {
  return ToF32(static_cast<const From*>(in)[i]);
}

// Element by element, with exact error positions: the fallback for targets
// without a rounding float16 conversion, and the way to locate an error that
// the vector path detected in a chunk. f16 overflow (|x| >= 65520 rounds to
// inf) is an error, as is bf16 overflow.
void CastScalar(const void* in, DType in_type, size_t begin, size_t end,
                void* out, DType out_type, ErrorSink* errors) {
  for (size_t i = begin; i < end; ++i) {
    float v;
    switch (in_type) {
      case DType::kF32: v = LoadScalar<float>(in, i); break;
      case DType::kF16: v = LoadScalar<hwy::float16_t>(in, i); break;
      default: v = LoadScalar<hwy::bfloat16_t>(in, i); break;
    }
    if (!std::isfinite(v)) {
      errors->Report(ErrorKind::kNonFinite, 0, i);
      return;
    }
    if (out_type == DType::kF32) {
      static_cast<float*>(out)[i] = v;
      continue;
    }
    const bool half = out_type == DType::kF16;
    const uint16_t bits = half ? F16BitsFromF32(v) : BF16BitsFromF32(v);
    const uint16_t inf_exponent = half ? 0x7C00u : 0x7F80u;
    if ((bits & inf_exponent) == inf_exponent) {
      errors->Report(ErrorKind::kCastOverflow, 0, i);
      return;
    }
    static_cast<uint16_t*>(out)[i] = bits;
  }
}

// Converts one vector to the output type at `out + i`.
HWY_INLINE void StoreConverted(DF d, hn::Vec<DF> v, DType out_type, void* out,
                               size_t i) {
  switch (out_type) {
    case DType::kF32:
      hn::StoreU(v, d, static_cast<float*>(out) + i);
      return;
    case DType::kF16: {
#if LOWBIT_HAVE_F16_RNE
      const hn::Rebind<hwy::float16_t, DF> d16;
      hn::StoreU(hn::DemoteTo(d16, v), d16,
                 static_cast<hwy::float16_t*>(out) + i);
#endif
      return;
    }
    case DType::kBF16: {
      // Round to nearest even on the bits: add 0x7FFF plus the lowest kept bit.
      const hn::RebindToUnsigned<DF> du;
      const hn::RebindToSigned<DF> di;
      const hn::Rebind<uint16_t, DF> d16;
      const auto bits = hn::BitCast(du, v);
      const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1));
      const auto rounded =
          hn::ShiftRight<16>(hn::Add(bits, hn::Add(hn::Set(du, 0x7FFF), lsb)));
      hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, rounded)), d16,
                 static_cast<uint16_t*>(out) + i);
      return;
    }
  }
}

// Vector casts, one chunk at a time. A chunk that holds NaN/Inf or a value
// that overflows the output is redone element by element to report where.
template <typename T>
void CastVectors(const T* HWY_RESTRICT in, size_t begin, size_t end, void* out,
                 DType out_type, ErrorSink* errors) {
  constexpr size_t kChunk = 4096;
  const DF d;
  const size_t N = hn::Lanes(d);
  // Smallest magnitudes that round to infinity in the output type.
  const float limit = out_type == DType::kF16    ? 65520.0f
                      : out_type == DType::kBF16 ? FloatOf(0x7F7F8000u)
                                                 : HUGE_VALF;
  const DType in_type = std::is_same<T, float>::value ? DType::kF32
                        : std::is_same<T, hwy::float16_t>::value
                            ? DType::kF16
                            : DType::kBF16;
  for (size_t c = begin; c < end; c += kChunk) {
    const size_t stop = HWY_MIN(end, c + kChunk);
    auto vbad = hn::Zero(d);  // x - x: NaN for NaN/Inf inputs
    auto vmax = hn::Zero(d);
    size_t i = c;
    for (; i + N <= stop; i += N) {
      const auto v = LoadF32(d, in + i);
      vbad = hn::Add(vbad, hn::Sub(v, v));
      vmax = hn::Max(vmax, hn::Abs(v));
      StoreConverted(d, v, out_type, out, i);
    }
    const float bad = hn::GetLane(hn::SumOfLanes(d, vbad));
    const float amax = hn::GetLane(hn::MaxOfLanes(d, vmax));
    if (!(bad == 0.0f) || !(amax < limit)) {
      CastScalar(in, in_type, c, stop, out, out_type, errors);
      return;
    }
    CastScalar(in, in_type, i, stop, out, out_type, errors);
    if (errors->kind() != ErrorKind::kNone) return;
  }
}

void CastRange(const void* in, DType in_type, size_t begin, size_t end,
               void* out, DType out_type, ErrorSink* errors) {
  if (out_type == DType::kF16 && !LOWBIT_HAVE_F16_RNE) {
    CastScalar(in, in_type, begin, end, out, out_type, errors);
    return;
  }
  switch (in_type) {
    case DType::kF32:
      return CastVectors(static_cast<const float*>(in), begin, end, out,
                         out_type, errors);
    case DType::kF16:
      return CastVectors(static_cast<const hwy::float16_t*>(in), begin, end,
                         out, out_type, errors);
    case DType::kBF16:
      return CastVectors(static_cast<const hwy::bfloat16_t*>(in), begin, end,
                         out, out_type, errors);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_QUANTIZE_INL_H_
