// Float conversions between float32, float16 and bfloat16, with round to
// nearest even on every target (quantize.cc's CastRange, and the float16
// rounding of group parameters in params-inl.h).

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_CAST_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_CAST_INL_H_
#undef LOWBIT_QUANT_CAST_INL_H_
#else
#define LOWBIT_QUANT_CAST_INL_H_
#endif

#include <cmath>
#include <cstdint>
#include <type_traits>

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

template <typename From>
float LoadScalar(const void* in, size_t i) {
  return ToF32(static_cast<const From*>(in)[i]);
}

// Element by element, with exact error positions: the fallback for targets
// without a rounding float16 conversion, and the way to locate an error that
// the vector path detected in a chunk. f16 overflow (|x| >= 65520 rounds to
// inf) is an error, as is bf16 overflow. Returns false when it reported one.
bool CastScalar(const void* in, DType in_type, size_t begin, size_t end,
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
      return false;
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
      return false;
    }
    static_cast<uint16_t*>(out)[i] = bits;
  }
  return true;
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
    // Only this range's own error ends it: another thread's error further
    // on must not stop it before an earlier one (the sink keeps the first).
    if (!CastScalar(in, in_type, i, stop, out, out_type, errors)) return;
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

#endif  // LOWBIT_QUANT_CAST_INL_H_
