// Reading stored weights as float32, shared by the quantize kernels
// (dequantize, reconstruction error) and the linear layers in src/matmul/:
// float16/bfloat16 loads, the packed-code layout (see quant_params.h) and its
// row decoder. Included by each per-target .cc after hwy/highway.h.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_DECODE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_DECODE_INL_H_
#undef LOWBIT_QUANT_DECODE_INL_H_
#else
#define LOWBIT_QUANT_DECODE_INL_H_
#endif

#include <cstring>
#include <vector>

#include "hwy/highway.h"
#include "quant/quant_params.h"
#include "util/float16.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;

// ---------------------------------------------------------------- loading

HWY_INLINE float ToF32(float v) { return v; }
HWY_INLINE float ToF32(hwy::float16_t v) {
  uint16_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return F32FromF16Bits(bits);
}
HWY_INLINE float ToF32(hwy::bfloat16_t v) {
  uint16_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return F32FromBF16Bits(bits);
}

HWY_INLINE hn::Vec<DF> LoadF32(DF d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
HWY_INLINE hn::Vec<DF> LoadF32(DF d, const hwy::float16_t* HWY_RESTRICT p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), p));
}
HWY_INLINE hn::Vec<DF> LoadF32(DF d, const hwy::bfloat16_t* HWY_RESTRICT p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::bfloat16_t, DF>(), p));
}

// A segment is 16 consecutive codes of a row, the unit that one shift + AND
// unpacks; group sizes are multiples of 16, so a segment lies in one group.
// seg_group[s] is the group of segment s (padding segments: the last group).
inline void SegmentGroupsInto(size_t cols, size_t g, int bits,
                              std::vector<uint32_t>* seg_group) {
  const size_t padded =
      bits == 8 ? (cols + kBlockBytes - 1) / kBlockBytes * kBlockBytes
                : PaddedCodes(cols, bits);
  const size_t last = cols / g - 1;
  seg_group->resize(padded / kBlockBytes);
  for (size_t seg = 0; seg < seg_group->size(); ++seg) {
    (*seg_group)[seg] =
        static_cast<uint32_t>(HWY_MIN(seg * kBlockBytes / g, last));
  }
}

inline std::vector<uint32_t> SegmentGroups(size_t cols, size_t g, int bits) {
  std::vector<uint32_t> seg_group;
  SegmentGroupsInto(cols, g, bits, &seg_group);
  return seg_group;
}

// Stores of dequantized rows: non-temporal when the output is far larger
// than the caches, so writing it costs no read of the old contents.
template <bool kStream>
HWY_INLINE void StoreOut(hn::Vec<DF> v, DF d, float* HWY_RESTRICT p) {
  if (kStream) {
    hn::Stream(v, d, p);
  } else {
    hn::StoreU(v, d, p);
  }
}

template <int kBits, bool kAsym, bool kStream>
HWY_INLINE void DecodeBlock(const uint8_t* HWY_RESTRICT in,
                            const uint32_t* HWY_RESTRICT seg,
                            const float* HWY_RESTRICT scale,
                            const float* HWY_RESTRICT zero,
                            float* HWY_RESTRICT out) {
  constexpr int kPer = 8 / kBits;
  constexpr bool kSigned = kBits == 8 && !kAsym;
  const DF d;
  const DI di;
  const size_t N = hn::Lanes(d);
  const auto mask = hn::Set(di, (1 << kBits) - 1);
  for (size_t i = 0; i < kBlockBytes; i += N) {
    hn::Vec<DI> bytes;
    if (kSigned) {
      bytes = hn::PromoteTo(
          di, hn::LoadU(hn::Rebind<int8_t, DI>(),
                        reinterpret_cast<const int8_t*>(in) + i));
    } else {
      bytes = hn::PromoteTo(di, hn::LoadU(hn::Rebind<uint8_t, DI>(), in + i));
    }
    for (int k = 0; k < kPer; ++k) {
      const uint32_t grp = seg[k];
      const auto code =
          kBits == 8 ? bytes
                     : hn::And(hn::ShiftRightSame(bytes, k * kBits), mask);
      const auto y = hn::Mul(hn::Sub(hn::ConvertTo(d, code),
                                     hn::Set(d, zero[grp])),
                             hn::Set(d, scale[grp]));
      StoreOut<kStream>(y, d, out + k * kBlockBytes + i);
    }
  }
}

// The 16 codes of segment `seg` of a row stored as two planes (lo: the low
// plane's bytes, hi: the high plane's), as int32 lanes [i, i + N).
template <int kBits>
HWY_INLINE hn::Vec<DI> SplitCodes(const uint8_t* HWY_RESTRICT lo,
                                  const uint8_t* HWY_RESTRICT hi, size_t seg,
                                  size_t i) {
  constexpr int kLo = LowPlaneBits(kBits);
  constexpr int kHi = HighPlaneBits(kBits);
  constexpr size_t kPerLo = 8 / kLo;
  constexpr size_t kPerHi = 8 / kHi;
  const DI di;
  const hn::Rebind<uint8_t, DI> d8;
  const auto lo_bytes =
      hn::PromoteTo(di, hn::LoadU(d8, lo + seg / kPerLo * kBlockBytes + i));
  const auto hi_bytes =
      hn::PromoteTo(di, hn::LoadU(d8, hi + seg / kPerHi * kBlockBytes + i));
  const int lo_shift = static_cast<int>(seg % kPerLo) * kLo;
  const int hi_shift = static_cast<int>(seg % kPerHi) * kHi;
  const auto low = hn::And(hn::ShiftRightSame(lo_bytes, lo_shift),
                           hn::Set(di, (1 << kLo) - 1));
  const auto high = hn::And(hn::ShiftRightSame(hi_bytes, hi_shift),
                            hn::Set(di, (1 << kHi) - 1));
  return hn::Or(low, hn::ShiftLeft<kLo>(high));
}

// A two-plane row (quant_params.h) into out[0, cols): x^ = scale * (code -
// zero) with code = low + 2^kLo high, the same formula as one plane.
template <int kBits, bool kStream>
HWY_INLINE void DecodeRowSplit(const uint8_t* HWY_RESTRICT in, size_t cols,
                               const uint32_t* seg_group, const float* scale,
                               const float* zero, float* HWY_RESTRICT out) {
  const uint8_t* lo = in;
  const uint8_t* hi = in + PlaneBytes(cols, LowPlaneBits(kBits));
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t full = cols / kBlockBytes;
  for (size_t seg = 0; seg < full; ++seg) {
    const uint32_t grp = seg_group[seg];
    const auto vz = hn::Set(d, zero[grp]);
    const auto vs = hn::Set(d, scale[grp]);
    for (size_t i = 0; i < kBlockBytes; i += N) {
      const auto code = hn::ConvertTo(d, SplitCodes<kBits>(lo, hi, seg, i));
      StoreOut<kStream>(hn::Mul(hn::Sub(code, vz), vs), d,
                        out + seg * kBlockBytes + i);
    }
  }
  const size_t rest = cols - full * kBlockBytes;
  if (rest != 0) {
    // Group sizes are multiples of 16, so only a row's length can end a
    // segment early: its codes are in the padded blocks.
    HWY_ALIGN float padded[kBlockBytes];
    const uint32_t grp = seg_group[full];
    for (size_t i = 0; i < kBlockBytes; i += N) {
      const auto code = hn::ConvertTo(d, SplitCodes<kBits>(lo, hi, full, i));
      hn::Store(hn::Mul(hn::Sub(code, hn::Set(d, zero[grp])),
                        hn::Set(d, scale[grp])),
                d, padded + i);
    }
    std::memcpy(out + full * kBlockBytes, padded, rest * sizeof(float));
  }
}

// zero: per-group zero points, or the constant code offset for symmetric
// schemes (x^ = scale * (code - offset)).
template <int kBits, bool kAsym, bool kStream>
HWY_INLINE void DecodeRow(const uint8_t* HWY_RESTRICT in, size_t cols,
                          const uint32_t* seg_group, const float* scale,
                          const float* zero, float* HWY_RESTRICT out) {
  constexpr int kPer = 8 / kBits;
  constexpr size_t kCodes = kBlockBytes * kPer;
  const size_t full = cols / kCodes;
  for (size_t b = 0; b < full; ++b) {
    DecodeBlock<kBits, kAsym, kStream>(in + b * kBlockBytes,
                                       seg_group + b * kPer, scale, zero,
                                       out + b * kCodes);
  }
  const size_t rest = cols - full * kCodes;
  if (rest != 0) {
    HWY_ALIGN uint8_t block[kBlockBytes] = {};
    std::memcpy(block, in + full * kBlockBytes,
                kBits == 8 ? rest : kBlockBytes);
    HWY_ALIGN float padded[kCodes];
    DecodeBlock<kBits, kAsym, false>(block, seg_group + full * kPer, scale,
                                     zero, padded);
    std::memcpy(out + full * kCodes, padded, rest * sizeof(float));
  }
}

HWY_INLINE void ReadParams(const QuantParams& p, const void* HWY_RESTRICT src,
                           size_t offset, size_t n, float* HWY_RESTRICT dst) {
  if (!p.f16_params) {
    std::memcpy(dst, static_cast<const float*>(src) + offset,
                n * sizeof(float));
    return;
  }
  // Promotion to float32 is exact, so the vector path (F16C, or Highway's
  // emulation) gives the same values as the scalar one.
  const uint16_t* in = static_cast<const uint16_t*>(src) + offset;
  const DF d;
  const hn::Rebind<hwy::float16_t, DF> d16;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::PromoteTo(d, hn::LoadU(d16, reinterpret_cast<
                                                   const hwy::float16_t*>(
                                                   in + i))),
               d, dst + i);
  }
  for (; i < n; ++i) dst[i] = F32FromF16Bits(in[i]);
}

// Decodes rows of a quantized matrix into float32: the per-matrix tables
// (segment -> group, and the fixed zero point of symmetric schemes) are made
// once, each row's scales and zero points read as the row is decoded.
template <int kBits, bool kAsym>
class RowDecoder {
 public:
  RowDecoder(const uint8_t* HWY_RESTRICT codes, const void* HWY_RESTRICT scales,
             const void* HWY_RESTRICT zeros, size_t cols, const QuantParams& p)
      : codes_(codes),
        scales_(scales),
        zeros_(zeros),
        cols_(cols),
        p_(p),
        groups_(cols / (p.group_size == 0 ? cols : p.group_size)),
        row_bytes_(RowBytes(cols, kBits)),
        seg_group_(SegmentGroups(cols, cols / groups_, kBits)),
        scale_(groups_),
        zero_(groups_, kAsym ? 0.0f : static_cast<float>(p.code_offset)) {}

  // Row r of the matrix into out[0, cols); kStream: non-temporal stores.
  template <bool kStream = false>
  void Decode(size_t r, float* HWY_RESTRICT out) {
    ReadParams(p_, scales_, r * groups_, groups_, scale_.data());
    if (kAsym) ReadParams(p_, zeros_, r * groups_, groups_, zero_.data());
    if constexpr (IsSplit(kBits)) {
      DecodeRowSplit<kBits, kStream>(codes_ + r * row_bytes_, cols_,
                                     seg_group_.data(), scale_.data(),
                                     zero_.data(), out);
    } else {
      DecodeRow<kBits, kAsym, kStream>(codes_ + r * row_bytes_, cols_,
                                       seg_group_.data(), scale_.data(),
                                       zero_.data(), out);
    }
  }

 private:
  const uint8_t* codes_;
  const void* scales_;
  const void* zeros_;
  size_t cols_;
  const QuantParams& p_;
  size_t groups_;
  size_t row_bytes_;
  std::vector<uint32_t> seg_group_;
  std::vector<float> scale_, zero_;
};

// The (bits, asymmetric) pairs of the schemes, as template arguments.
template <int kBitsArg, bool kAsymArg>
struct Layout {
  static constexpr int kBits = kBitsArg;
  static constexpr bool kAsym = kAsymArg;
};

template <class Visitor>
HWY_INLINE void VisitLayout(const QuantParams& p, const Visitor& visit) {
  const bool asym = p.asymmetric();
  switch (p.bits) {
    case 8:
      return asym ? visit(Layout<8, true>()) : visit(Layout<8, false>());
    case 4:
      return asym ? visit(Layout<4, true>()) : visit(Layout<4, false>());
    case 2:
      return asym ? visit(Layout<2, true>()) : visit(Layout<2, false>());
    case 1:
      return visit(Layout<1, true>());
    // Two planes (quant_params.h), zero points only.
    case 3:
      return visit(Layout<3, true>());
    case 5:
      return visit(Layout<5, true>());
    case 6:
      return visit(Layout<6, true>());
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_DECODE_INL_H_
