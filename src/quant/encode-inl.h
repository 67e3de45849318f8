// Writing a quantized row: codes packed into 16-byte blocks (the layout in
// quant_params.h) and the row's stored scales and zero points.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_ENCODE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_ENCODE_INL_H_
#undef LOWBIT_QUANT_ENCODE_INL_H_
#else
#define LOWBIT_QUANT_ENCODE_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "quant/quant_params.h"
#include "util/float16.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

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

// A row of a two-plane width (quant_params.h): each segment's 16 codes are
// found as for one plane (zero points only), then their low bits go to the
// low plane and the rest to the high plane. The padding past cols holds
// zeros quantized by the row's last group, up to the high plane's last
// block (the low plane's blocks end first).
template <int kBits, typename T>
HWY_INLINE void EncodeRowSplit(const QuantParams& p, const T* HWY_RESTRICT row,
                               size_t cols, const uint32_t* seg_group,
                               const float* inv, const float* zero,
                               uint8_t* HWY_RESTRICT out) {
  constexpr int kLo = LowPlaneBits(kBits);
  constexpr int kHi = HighPlaneBits(kBits);
  constexpr size_t kPerLo = 8 / kLo;
  constexpr size_t kPerHi = 8 / kHi;
  const size_t lo_bytes = PlaneBytes(cols, kLo);
  uint8_t* lo = out;
  uint8_t* hi = out + lo_bytes;
  std::memset(out, 0, lo_bytes + PlaneBytes(cols, kHi));
  const DF d;
  const DI di;
  const hn::Rebind<uint8_t, DI> d8;
  const size_t N = hn::Lanes(d);
  const auto vlo = hn::Set(d, static_cast<float>(p.qmin));
  const auto vhi = hn::Set(d, static_cast<float>(p.qmax));
  const auto low_mask = hn::Set(di, (1 << kLo) - 1);
  const size_t lo_segments = lo_bytes / kBlockBytes * kPerLo;
  const size_t segments = PaddedCodes(cols, kBits) / kBlockBytes;
  HWY_ALIGN float buf[kBlockBytes];
  for (size_t seg = 0; seg < segments; ++seg) {
    const uint32_t grp = seg_group[seg];
    const size_t c0 = seg * kBlockBytes;
    const size_t have = c0 >= cols ? 0 : HWY_MIN(kBlockBytes, cols - c0);
    for (size_t i = 0; i < kBlockBytes; ++i) {
      buf[i] = i < have ? ToF32(row[c0 + i]) : 0.0f;
    }
    uint8_t* lo_block = lo + seg / kPerLo * kBlockBytes;
    uint8_t* hi_block = hi + seg / kPerHi * kBlockBytes;
    const int lo_shift = static_cast<int>(seg % kPerLo) * kLo;
    const int hi_shift = static_cast<int>(seg % kPerHi) * kHi;
    for (size_t i = 0; i < kBlockBytes; i += N) {
      const auto t = hn::Add(hn::Mul(hn::Load(d, buf + i), hn::Set(d, inv[grp])),
                             hn::Set(d, zero[grp]));
      const auto q = hn::NearestInt(hn::Min(hn::Max(t, vlo), vhi));
      if (seg < lo_segments) {
        const auto old = hn::PromoteTo(di, hn::LoadU(d8, lo_block + i));
        const auto low = hn::ShiftLeftSame(hn::And(q, low_mask), lo_shift);
        hn::StoreU(hn::DemoteTo(d8, hn::Or(old, low)), d8, lo_block + i);
      }
      const auto old = hn::PromoteTo(di, hn::LoadU(d8, hi_block + i));
      const auto high = hn::ShiftLeftSame(hn::ShiftRight<kLo>(q), hi_shift);
      hn::StoreU(hn::DemoteTo(d8, hn::Or(old, high)), d8, hi_block + i);
    }
  }
}

// A row of a one-plane width.
template <int kBits, bool kAsym, typename T>
HWY_INLINE void EncodeRowPlane(const QuantParams& p, const T* HWY_RESTRICT row,
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

// Codes of one row (codes: its RowBytes) with the groups' 1/scale and zero
// points; seg_group: SegmentGroups of the row.
template <int kBits, bool kAsym, typename T>
HWY_INLINE void EncodeRow(const QuantParams& p, const T* HWY_RESTRICT row,
                          size_t cols, const uint32_t* seg_group,
                          const float* inv, const float* zero,
                          uint8_t* HWY_RESTRICT out) {
  if constexpr (IsSplit(kBits)) {
    EncodeRowSplit<kBits>(p, row, cols, seg_group, inv, zero, out);
  } else {
    EncodeRowPlane<kBits, kAsym>(p, row, cols, seg_group, inv, zero, out);
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

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_ENCODE_INL_H_
