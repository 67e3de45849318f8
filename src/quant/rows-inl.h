// Row drivers of the quantize kernels, called by quantize.cc on ranges of
// rows: quantize (statistics, parameter search, encoding), dequantize, and
// the reconstruction error measured against the decoded rows. The NumPy
// reference in python/lowbit/reference.py is the spec: for rtn the codes
// here equal its codes bit for bit.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_ROWS_INL_H_
#undef LOWBIT_QUANT_ROWS_INL_H_
#else
#define LOWBIT_QUANT_ROWS_INL_H_
#endif

#include <cmath>
#include <cstdint>
#include <vector>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "quant/encode-inl.h"
#include "quant/params-inl.h"
#include "quant/quant_params.h"
#include "quant/search_hqq-inl.h"
#include "quant/search_mse-inl.h"
#include "quant/search_rtn-inl.h"
#include "quant/stats-inl.h"
#include "util/errors.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// The parameters of one group by the scheme's method; `w`: the group's
// importances (null: unweighted).
template <typename T>
HWY_INLINE GroupQ FindParams(const QuantParams& p, const T* x, size_t len,
                             const GroupStats& st, const float* w) {
  if (p.method == Method::kHqq) return HqqParams(p, x, len, st, w);
  if (p.method == Method::kMse) return MseParams(p, x, len, st, w);
  return RtnParams(p, x, len, st, 1.0f);
}

template <int kBits, bool kAsym, typename T>
void QuantizeRowsT(const T* HWY_RESTRICT x, size_t r0, size_t r1, size_t cols,
                   const QuantParams& p, const float* importance,
                   uint8_t* HWY_RESTRICT codes, void* HWY_RESTRICT scales,
                   void* HWY_RESTRICT zeros, ErrorSink* errors) {
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
        const float* w = importance == nullptr ? nullptr : importance + gi * g;
        const GroupQ q = FindParams(p, row + gi * g, g, st, w);
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
                  size_t cols, const QuantParams& p, const float* importance,
                  uint8_t* codes, void* scales, void* zeros,
                  ErrorSink* errors) {
  VisitLayout(p, [&](auto layout) {
    constexpr int kBits = decltype(layout)::kBits;
    constexpr bool kAsym = decltype(layout)::kAsym;
    switch (dtype) {
      case DType::kF32:
        return QuantizeRowsT<kBits, kAsym>(static_cast<const float*>(x), r0,
                                           r1, cols, p, importance, codes, scales,
                                           zeros, errors);
      case DType::kF16:
        return QuantizeRowsT<kBits, kAsym>(
            static_cast<const hwy::float16_t*>(x), r0, r1, cols, p, importance, codes,
            scales, zeros, errors);
      case DType::kBF16:
        return QuantizeRowsT<kBits, kAsym>(
            static_cast<const hwy::bfloat16_t*>(x), r0, r1, cols, p, importance, codes,
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

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_ROWS_INL_H_
