// SIMD bodies of the linear layers in matmul.h, compiled once per Highway
// target by matmul.cc.
//
// Two shapes of work:
// - GEMV (a few tokens, decoding): memory bound, so each weight is read once
//   and turned into float32 in registers, multiplied by the group scale and
//   fused into the dot products of up to kGemvTokens inputs; four rows share
//   each load of x. Zero points (and the code offset of symmetric schemes) are
//   applied once per group afterwards through the group sums of x:
//   sum_c s (q_c - z) x_c = s sum_c q_c x_c - s z sum_c x_c.
// - GEMM (many tokens, prefill): compute bound, so a panel of 2 vectors of
//   rows is decoded exactly as dequantize() would (float32 values) and laid
//   out column-major; a micro-kernel keeps 2 x kGemmTokens vectors of outputs
//   in registers, one broadcast of x per token and column.
// Every output is a sum over columns in an order fixed by the shape alone, so
// results do not depend on the thread count or on how rows are split.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_MATMUL_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_MATMUL_MATMUL_INL_H_
#undef LOWBIT_MATMUL_MATMUL_INL_H_
#else
#define LOWBIT_MATMUL_MATMUL_INL_H_
#endif

#include <cstring>
#include <new>
#include <vector>

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "matmul/matmul.h"
#include "quant/decode-inl.h"
#include "quant/quant_params.h"

// Loops over the compile-time tile sizes must be unrolled completely, or GCC
// keeps the accumulator arrays in memory and stores them every iteration.
#ifndef LOWBIT_UNROLL
#define LOWBIT_UNROLL _Pragma("GCC unroll 16")
#endif

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// ---------------------------------------------------------------- GEMV

// Rows sharing one pass over x: four independent FMA chains per token hide
// the FMA latency, and each vector of x is loaded once for four rows.
constexpr size_t kGemvRows = 4;

// Scales (and zero points) of rows [r, r + k) as float32, row-major
// [k][groups]: read once per row tile, then broadcast per segment.
HWY_INLINE void ReadRowParams(const WeightView& w, size_t groups, size_t r,
                              size_t k, float* HWY_RESTRICT scale,
                              float* HWY_RESTRICT zero) {
  ReadParams(w.params, w.scales, r * groups, k * groups, scale);
  if (w.zeros != nullptr && w.params.asymmetric()) {
    ReadParams(w.params, w.zeros, r * groups, k * groups, zero);
  }
}

// One 16-byte block of kR rows (row i at in + i * in_stride) against kT
// inputs (input t at xb + t * xstride, already offset to the block's first
// column). seg: the group of each of the block's segments. kScale: multiply
// the codes by their group's scale here; otherwise the caller scales the
// sums once per group.
template <int kBits, bool kAsym, size_t kR, size_t kT, bool kScale>
HWY_INLINE void GemvBlock(const uint8_t* HWY_RESTRICT in, size_t in_stride,
                          const uint32_t* HWY_RESTRICT seg,
                          const float* HWY_RESTRICT scale, size_t groups,
                          const float* HWY_RESTRICT xb, size_t xstride,
                          hn::Vec<DF> (&acc)[kR][kT]) {
  constexpr int kPer = 8 / kBits;
  constexpr bool kSigned = kBits == 8 && !kAsym;
  const DF d;
  const DI di;
  const size_t N = hn::Lanes(d);
  const auto mask = hn::Set(di, (1 << kBits) - 1);
  // 16 bytes per block; N <= 16 on every target compiled here.
  for (size_t i = 0; i < kBlockBytes; i += N) {
    hn::Vec<DI> bytes[kR];
    LOWBIT_UNROLL
    for (size_t r = 0; r < kR; ++r) {
      const uint8_t* p = in + r * in_stride + i;
      if (kSigned) {
        bytes[r] = hn::PromoteTo(
            di, hn::LoadU(hn::Rebind<int8_t, DI>(),
                          reinterpret_cast<const int8_t*>(p)));
      } else {
        bytes[r] = hn::PromoteTo(di, hn::LoadU(hn::Rebind<uint8_t, DI>(), p));
      }
    }
    LOWBIT_UNROLL
    for (int k = 0; k < kPer; ++k) {
      const uint32_t grp = seg[k];
      hn::Vec<DF> xv[kT];
      LOWBIT_UNROLL
      for (size_t t = 0; t < kT; ++t) {
        xv[t] = hn::LoadU(d, xb + t * xstride + k * kBlockBytes + i);
      }
      LOWBIT_UNROLL
      for (size_t r = 0; r < kR; ++r) {
        hn::Vec<DI> code = bytes[r];
        if (kBits != 8) {
          code = hn::ShiftRightSame(code, k * kBits);
          // The top field of a byte needs no mask.
          if (k != kPer - 1) code = hn::And(code, mask);
        }
        auto wv = hn::ConvertTo(d, code);
        if (kScale) wv = hn::Mul(wv, hn::Set(d, scale[r * groups + grp]));
        LOWBIT_UNROLL
        for (size_t t = 0; t < kT; ++t) {
          acc[r][t] = hn::MulAdd(wv, xv[t], acc[r][t]);
        }
      }
    }
  }
}

// What every quantized GEMV tile needs, made once per range of rows.
struct QuantGemv {
  const uint8_t* codes;
  size_t row_bytes;
  size_t cols;
  size_t groups;
  const uint32_t* seg_group;
  float offset;              // symmetric code offset (0: no correction)
  const float* x;            // [n][xstride], zero past cols
  size_t xstride;
  const float* xsum;         // [n][groups] group sums of x
  float* out;                // [n][rows]
  size_t rows;
  // Blocks per group when groups are whole blocks (or one group per row:
  // all blocks of the row); 0 when a block spans several groups.
  size_t group_blocks;
};

// Blocks [b0, b1) of rows r .. r + kR into acc; b1 may include the padded
// last block, whose codes are copied aside (8-bit rows are stored unpadded)
// and meet zeros in x.
template <int kBits, bool kAsym, size_t kR, size_t kT, bool kScale>
HWY_INLINE void GemvBlocks(const QuantGemv& q, const uint8_t* rows,
                           const float* x, size_t b0, size_t b1,
                           const float* HWY_RESTRICT scale,
                           hn::Vec<DF> (&acc)[kR][kT]) {
  constexpr int kPer = 8 / kBits;
  constexpr size_t kCodes = kBlockBytes * kPer;
  const size_t full = HWY_MIN(b1, q.cols / kCodes);
  // The tiles' rows are contiguous, so a task's rows are one stream of
  // bytes: prefetch it one tile ahead (1-6 KiB here), kR blocks' worth per
  // block read. Prefetching only the next tile's first lines, 64 bytes per
  // row per 4 blocks, left the loads waiting on DRAM: decoding ran at ~7 GB/s
  // on one core, ~60% faster like this. Further ahead (+1 to +8 KiB)
  // measured no better.
  const uint8_t* ahead = rows + kR * q.row_bytes;
  for (size_t b = b0; b < full; ++b) {
    LOWBIT_UNROLL
    for (size_t i = 0; i < kR * kBlockBytes; i += 64) {
      hwy::Prefetch(ahead + b * kR * kBlockBytes + i);
    }
    GemvBlock<kBits, kAsym, kR, kT, kScale>(
        rows + b * kBlockBytes, q.row_bytes, q.seg_group + b * kPer, scale,
        q.groups, x + b * kCodes, q.xstride, acc);
  }
  if (full < b1) {
    HWY_ALIGN uint8_t block[kR * kBlockBytes] = {};
    const size_t have = kBits == 8 ? q.cols - full * kCodes : kBlockBytes;
    for (size_t i = 0; i < kR; ++i) {
      std::memcpy(block + i * kBlockBytes,
                  rows + i * q.row_bytes + full * kBlockBytes, have);
    }
    GemvBlock<kBits, kAsym, kR, kT, kScale>(
        block, kBlockBytes, q.seg_group + full * kPer, scale, q.groups,
        x + full * kCodes, q.xstride, acc);
  }
}

// out[t, r .. r + kR) for tokens [t0, t0 + kT): scale[kR][groups] and
// zero[kR][groups] hold the rows' parameters.
template <int kBits, bool kAsym, size_t kR, size_t kT>
HWY_INLINE void QuantGemvTile(const QuantGemv& q, size_t r, size_t t0,
                              const float* HWY_RESTRICT scale,
                              const float* HWY_RESTRICT zero) {
  constexpr int kPer = 8 / kBits;
  constexpr size_t kCodes = kBlockBytes * kPer;
  const DF d;
  const size_t N = hn::Lanes(d);
  hn::Vec<DF> acc[kR][kT];
  LOWBIT_UNROLL
  for (size_t i = 0; i < kR; ++i) {
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) acc[i][t] = hn::Zero(d);
  }
  const uint8_t* rows = q.codes + r * q.row_bytes;
  const float* x = q.x + t0 * q.xstride;
  const size_t blocks = (q.cols + kCodes - 1) / kCodes;
  // Several groups per row: the scale multiply per vector of codes measured
  // ~20% faster than per-group sums with a second set of kR x kT
  // accumulators (int4 g32, 4096x4096 and 1536x576, AVX-512). One group per
  // row: sum code * x over the row, one multiply at the end.
  if (q.group_blocks == 0 || q.groups > 1) {
    GemvBlocks<kBits, kAsym, kR, kT, true>(q, rows, x, 0, blocks, scale, acc);
  } else {
    // Sum code * x over a group, then one multiply by its scale: a multiply
    // per group instead of one per vector of codes.
    for (size_t g = 0; g < q.groups; ++g) {
      hn::Vec<DF> part[kR][kT];
      LOWBIT_UNROLL
      for (size_t i = 0; i < kR; ++i) {
        LOWBIT_UNROLL
        for (size_t t = 0; t < kT; ++t) part[i][t] = hn::Zero(d);
      }
      const size_t b0 = g * q.group_blocks;
      const size_t b1 = g + 1 == q.groups ? blocks : b0 + q.group_blocks;
      GemvBlocks<kBits, kAsym, kR, kT, false>(q, rows, x, b0, b1, scale, part);
      LOWBIT_UNROLL
      for (size_t i = 0; i < kR; ++i) {
        const auto vs = hn::Set(d, scale[i * q.groups + g]);
        LOWBIT_UNROLL
        for (size_t t = 0; t < kT; ++t) {
          acc[i][t] = hn::MulAdd(vs, part[i][t], acc[i][t]);
        }
      }
    }
  }
  // Correction sum_g scale_g * zero_g * xsum_g, lanes over groups.
  const bool correct = kAsym || q.offset != 0.0f;
  LOWBIT_UNROLL
  for (size_t i = 0; i < kR; ++i) {
    const float* s = scale + i * q.groups;
    const float* z = zero + i * q.groups;
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) {
      auto total = acc[i][t];
      float tail = 0.0f;
      if (correct) {
        const float* xs = q.xsum + (t0 + t) * q.groups;
        auto corr = hn::Zero(d);
        size_t g = 0;
        for (; g + N <= q.groups; g += N) {
          auto sz = hn::LoadU(d, s + g);
          if (kAsym) sz = hn::Mul(sz, hn::LoadU(d, z + g));
          corr = hn::MulAdd(sz, hn::LoadU(d, xs + g), corr);
        }
        for (; g < q.groups; ++g) {
          tail += (kAsym ? s[g] * z[g] : s[g]) * xs[g];
        }
        if (!kAsym) {
          corr = hn::Mul(corr, hn::Set(d, q.offset));
          tail *= q.offset;
        }
        total = hn::Sub(total, corr);
      }
      q.out[(t0 + t) * q.rows + r + i] =
          hn::GetLane(hn::SumOfLanes(d, total)) - tail;
    }
  }
}

// Up to kGemvTokens tokens per pass over the weights: more would not fit
// the accumulators in registers (kGemvRows x tokens vectors).
constexpr size_t kGemvTokens = 4;

template <int kBits, bool kAsym, size_t kR>
HWY_INLINE void QuantGemvRowTile(const QuantGemv& q, size_t n, size_t r,
                                 const float* scale, const float* zero) {
  for (size_t t0 = 0; t0 < n; t0 += kGemvTokens) {
    switch (HWY_MIN(kGemvTokens, n - t0)) {
      case 1:
        QuantGemvTile<kBits, kAsym, kR, 1>(q, r, t0, scale, zero);
        break;
      case 2:
        QuantGemvTile<kBits, kAsym, kR, 2>(q, r, t0, scale, zero);
        break;
      case 3:
        QuantGemvTile<kBits, kAsym, kR, 3>(q, r, t0, scale, zero);
        break;
      default:
        QuantGemvTile<kBits, kAsym, kR, 4>(q, r, t0, scale, zero);
        break;
    }
  }
}

template <int kBits, bool kAsym>
void QuantGemvRowsT(const WeightView& w, const float* x, size_t xstride,
                    const float* xsum, size_t n, size_t r0, size_t r1,
                    float* out) {
  QuantGemv q;
  q.codes = static_cast<const uint8_t*>(w.data);
  q.row_bytes = RowBytes(w.cols, kBits);
  q.cols = w.cols;
  q.groups = GroupsPerRow(w.cols, w.params.group_size);
  // Per-thread tables: a decoded token runs about a thousand of these tasks.
  thread_local std::vector<uint32_t> seg_group;
  thread_local std::vector<float> scale, zero;
  SegmentGroupsInto(w.cols, w.cols / q.groups, kBits, &seg_group);
  q.seg_group = seg_group.data();
  q.offset = kAsym ? 0.0f : static_cast<float>(w.params.code_offset);
  q.x = x;
  q.xstride = xstride;
  q.xsum = xsum;
  q.out = out;
  q.rows = w.rows;
  const size_t g = w.cols / q.groups;
  constexpr size_t kCodes = kBlockBytes * 8 / kBits;
  q.group_blocks = q.groups == 1 ? (w.cols + kCodes - 1) / kCodes
                   : g % kCodes == 0 ? g / kCodes
                                     : 0;
  scale.resize(kGemvRows * q.groups);
  zero.resize(kGemvRows * q.groups);
  size_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) {
    ReadRowParams(w, q.groups, r, kGemvRows, scale.data(), zero.data());
    QuantGemvRowTile<kBits, kAsym, kGemvRows>(q, n, r, scale.data(),
                                              zero.data());
  }
  for (; r < r1; ++r) {
    ReadRowParams(w, q.groups, r, 1, scale.data(), zero.data());
    QuantGemvRowTile<kBits, kAsym, 1>(q, n, r, scale.data(), zero.data());
  }
}

// Float weights: kR rows of T (float32, float16 or bfloat16) promoted in
// registers, against kT inputs.
template <typename T, size_t kR, size_t kT>
HWY_INLINE void FloatGemvTile(const T* HWY_RESTRICT wr, size_t cols,
                              const float* HWY_RESTRICT x, size_t xstride,
                              float* HWY_RESTRICT out, size_t out_stride) {
  const DF d;
  const size_t N = hn::Lanes(d);
  hn::Vec<DF> acc[kR][kT];
  LOWBIT_UNROLL
  for (size_t i = 0; i < kR; ++i) {
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) acc[i][t] = hn::Zero(d);
  }
  // The rows as one stream of bytes, prefetched one tile ahead as in
  // GemvBlocks: kR vectors of weights read per step.
  const uint8_t* ahead = reinterpret_cast<const uint8_t*>(wr + kR * cols);
  constexpr size_t kLine = 64;
  const size_t step_bytes = kR * N * sizeof(T);
  size_t c = 0;
  for (; c + N <= cols; c += N) {
    for (size_t i = 0; i < step_bytes; i += kLine) {
      hwy::Prefetch(ahead + c * kR * sizeof(T) + i);
    }
    hn::Vec<DF> xv[kT];
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) xv[t] = hn::LoadU(d, x + t * xstride + c);
    LOWBIT_UNROLL
    for (size_t i = 0; i < kR; ++i) {
      const auto wv = LoadF32(d, wr + i * cols + c);
      LOWBIT_UNROLL
      for (size_t t = 0; t < kT; ++t) {
        acc[i][t] = hn::MulAdd(wv, xv[t], acc[i][t]);
      }
    }
  }
  LOWBIT_UNROLL
  for (size_t i = 0; i < kR; ++i) {
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) {
      float tail = 0.0f;
      for (size_t k = c; k < cols; ++k) {
        tail += ToF32(wr[i * cols + k]) * x[t * xstride + k];
      }
      out[t * out_stride + i] = hn::GetLane(hn::SumOfLanes(d, acc[i][t])) + tail;
    }
  }
}

template <typename T, size_t kR>
HWY_INLINE void FloatGemvRowTile(const T* w, size_t rows, size_t cols,
                                 const float* x, size_t xstride, size_t n,
                                 size_t r, float* out) {
  for (size_t t0 = 0; t0 < n; t0 += kGemvTokens) {
    const T* wr = w + r * cols;
    const float* xt = x + t0 * xstride;
    float* o = out + t0 * rows + r;
    switch (HWY_MIN(kGemvTokens, n - t0)) {
      case 1:
        FloatGemvTile<T, kR, 1>(wr, cols, xt, xstride, o, rows);
        break;
      case 2:
        FloatGemvTile<T, kR, 2>(wr, cols, xt, xstride, o, rows);
        break;
      case 3:
        FloatGemvTile<T, kR, 3>(wr, cols, xt, xstride, o, rows);
        break;
      default:
        FloatGemvTile<T, kR, 4>(wr, cols, xt, xstride, o, rows);
        break;
    }
  }
}

template <typename T>
void FloatGemvRowsT(const T* w, size_t rows, size_t cols, const float* x,
                    size_t xstride, size_t n, size_t r0, size_t r1,
                    float* out) {
  size_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) {
    FloatGemvRowTile<T, kGemvRows>(w, rows, cols, x, xstride, n, r, out);
  }
  for (; r < r1; ++r) {
    FloatGemvRowTile<T, 1>(w, rows, cols, x, xstride, n, r, out);
  }
}

// Two-plane widths (3, 5, 6 bits; quant_params.h): kR rows at a time are
// decoded as dequantize() does into a per-thread buffer and multiplied as
// float32 rows. The decode is a fifth to a third of the work; a fused kernel
// like the one-plane GEMV's is left for when these widths are measured to
// need it.
template <int kBits, size_t kR>
HWY_INLINE void SplitGemvRowTile(RowDecoder<kBits, true>& decoder,
                                 const WeightView& w, const float* x,
                                 size_t xstride, size_t n, size_t r,
                                 float* buf, float* out) {
  for (size_t i = 0; i < kR; ++i) decoder.Decode(r + i, buf + i * w.cols);
  for (size_t t0 = 0; t0 < n; t0 += kGemvTokens) {
    const float* xt = x + t0 * xstride;
    float* o = out + t0 * w.rows + r;
    switch (HWY_MIN(kGemvTokens, n - t0)) {
      case 1:
        FloatGemvTile<float, kR, 1>(buf, w.cols, xt, xstride, o, w.rows);
        break;
      case 2:
        FloatGemvTile<float, kR, 2>(buf, w.cols, xt, xstride, o, w.rows);
        break;
      case 3:
        FloatGemvTile<float, kR, 3>(buf, w.cols, xt, xstride, o, w.rows);
        break;
      default:
        FloatGemvTile<float, kR, 4>(buf, w.cols, xt, xstride, o, w.rows);
        break;
    }
  }
}

template <int kBits>
void SplitGemvRowsT(const WeightView& w, const float* x, size_t xstride,
                    size_t n, size_t r0, size_t r1, float* out) {
  RowDecoder<kBits, true> decoder(static_cast<const uint8_t*>(w.data),
                                  w.scales, w.zeros, w.cols, w.params);
  thread_local std::vector<float> buf;
  buf.resize(kGemvRows * w.cols);
  size_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) {
    SplitGemvRowTile<kBits, kGemvRows>(decoder, w, x, xstride, n, r,
                                       buf.data(), out);
  }
  for (; r < r1; ++r) {
    SplitGemvRowTile<kBits, 1>(decoder, w, x, xstride, n, r, buf.data(), out);
  }
}

// ---------------------------------------------------------------- GEMM

// Tokens per micro-kernel call: 2 x 6 accumulators plus two weight vectors
// and a broadcast fit the 16 vector registers of AVX2/SSE4.
constexpr size_t kGemmTokens = 6;

// Rows [r, r + valid) of W as float32, row-major [valid][cols] in buf: the
// same values dequantize() gives.
template <int kBits, bool kAsym>
class QuantRows {
 public:
  explicit QuantRows(const WeightView& w)
      : decoder_(static_cast<const uint8_t*>(w.data), w.scales, w.zeros,
                 w.cols, w.params) {}
  void operator()(size_t r, float* HWY_RESTRICT out) { decoder_.Decode(r, out); }

 private:
  RowDecoder<kBits, kAsym> decoder_;
};

template <typename T>
class FloatRows {
 public:
  explicit FloatRows(const WeightView& w)
      : w_(static_cast<const T*>(w.data)), cols_(w.cols) {}
  void operator()(size_t r, float* HWY_RESTRICT out) const {
    const DF d;
    const size_t N = hn::Lanes(d);
    const T* row = w_ + r * cols_;
    size_t c = 0;
    for (; c + N <= cols_; c += N) hn::StoreU(LoadF32(d, row + c), d, out + c);
    for (; c < cols_; ++c) out[c] = ToF32(row[c]);
  }

 private:
  const T* w_;
  size_t cols_;
};

// kT tokens against one panel: panel[c * 2N + i] is W[r + i, c]; outputs
// out[t * out_stride + i] for i < valid.
template <size_t kT>
HWY_INLINE void GemmTile(const float* HWY_RESTRICT panel, size_t cols,
                         const float* HWY_RESTRICT x, size_t xstride,
                         float* HWY_RESTRICT out, size_t out_stride,
                         size_t valid) {
  const DF d;
  const size_t N = hn::Lanes(d);
  hn::Vec<DF> acc0[kT], acc1[kT];
  LOWBIT_UNROLL
  for (size_t t = 0; t < kT; ++t) {
    acc0[t] = hn::Zero(d);
    acc1[t] = hn::Zero(d);
  }
  for (size_t c = 0; c < cols; ++c) {
    const auto w0 = hn::Load(d, panel + c * 2 * N);
    const auto w1 = hn::Load(d, panel + c * 2 * N + N);
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) {
      const auto xb = hn::Set(d, x[t * xstride + c]);
      acc0[t] = hn::MulAdd(w0, xb, acc0[t]);
      acc1[t] = hn::MulAdd(w1, xb, acc1[t]);
    }
  }
  if (valid == 2 * N) {
    LOWBIT_UNROLL
    for (size_t t = 0; t < kT; ++t) {
      hn::StoreU(acc0[t], d, out + t * out_stride);
      hn::StoreU(acc1[t], d, out + t * out_stride + N);
    }
    return;
  }
  HWY_ALIGN float lanes[2 * hn::MaxLanes(d)];
  LOWBIT_UNROLL
  for (size_t t = 0; t < kT; ++t) {
    hn::Store(acc0[t], d, lanes);
    hn::Store(acc1[t], d, lanes + N);
    std::memcpy(out + t * out_stride, lanes, valid * sizeof(float));
  }
}

// Rows [r0, r1) of out for all n tokens: each panel of 2N rows is made once
// and used by every token.
template <class Rows>
void GemmRowsT(Rows& source, size_t rows, size_t cols, const float* x,
               size_t n, size_t r0, size_t r1, float* out) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t kPanel = 2 * N;
  // cols comes from a weight that exists, so kPanel * cols cannot wrap; it
  // can still be more than malloc gives (ThreadPool rethrows the error).
  auto row_buf = hwy::AllocateAligned<float>(kPanel * cols);
  auto panel = hwy::AllocateAligned<float>(kPanel * cols);
  if (!row_buf || !panel) throw std::bad_alloc();
  for (size_t p0 = r0; p0 < r1; p0 += kPanel) {
    const size_t valid = HWY_MIN(kPanel, r1 - p0);
    for (size_t i = 0; i < valid; ++i) source(p0 + i, row_buf.get() + i * cols);
    if (valid < kPanel) {
      std::memset(row_buf.get() + valid * cols, 0,
                  (kPanel - valid) * cols * sizeof(float));
    }
    // Transpose to column-major (one aligned pair of vectors per column) in
    // blocks of 16 columns: each row is read a 64-byte line at a time and
    // the block's writes (2 KiB at most) stay in L1.
    constexpr size_t kColBlock = 16;
    for (size_t c0 = 0; c0 < cols; c0 += kColBlock) {
      const size_t c1 = HWY_MIN(cols, c0 + kColBlock);
      for (size_t i = 0; i < kPanel; ++i) {
        const float* src = row_buf.get() + i * cols;
        for (size_t c = c0; c < c1; ++c) panel[c * kPanel + i] = src[c];
      }
    }
    size_t t0 = 0;
    for (; t0 + kGemmTokens <= n; t0 += kGemmTokens) {
      GemmTile<kGemmTokens>(panel.get(), cols, x + t0 * cols, cols,
                            out + t0 * rows + p0, rows, valid);
    }
    const float* xt = x + t0 * cols;
    float* o = out + t0 * rows + p0;
    switch (n - t0) {
      case 0:
        break;
      case 1:
        GemmTile<1>(panel.get(), cols, xt, cols, o, rows, valid);
        break;
      case 2:
        GemmTile<2>(panel.get(), cols, xt, cols, o, rows, valid);
        break;
      case 3:
        GemmTile<3>(panel.get(), cols, xt, cols, o, rows, valid);
        break;
      case 4:
        GemmTile<4>(panel.get(), cols, xt, cols, o, rows, valid);
        break;
      default:
        GemmTile<5>(panel.get(), cols, xt, cols, o, rows, valid);
        break;
    }
  }
}

// ---------------------------------------------------------------- entries

// Calls visit(rows) with the row source for w's format.
template <class Visitor>
HWY_INLINE void VisitRows(const WeightView& w, const Visitor& visit) {
  switch (w.format) {
    case WeightFormat::kF32: {
      FloatRows<float> rows(w);
      return visit(rows);
    }
    case WeightFormat::kF16: {
      FloatRows<hwy::float16_t> rows(w);
      return visit(rows);
    }
    case WeightFormat::kBF16: {
      FloatRows<hwy::bfloat16_t> rows(w);
      return visit(rows);
    }
    case WeightFormat::kQuantized:
      return VisitLayout(w.params, [&](auto layout) {
        QuantRows<decltype(layout)::kBits, decltype(layout)::kAsym> rows(w);
        visit(rows);
      });
  }
}

// GEMV over rows [r0, r1): x is [n][xstride] with zeros past cols (xstride a
// multiple of every block's code count); xsum [n][groups] the group sums of
// x (quantized only).
void GemvRows(const WeightView& w, const float* x, size_t xstride,
              const float* xsum, size_t n, size_t r0, size_t r1, float* out) {
  switch (w.format) {
    case WeightFormat::kF32:
      return FloatGemvRowsT(static_cast<const float*>(w.data), w.rows, w.cols,
                            x, xstride, n, r0, r1, out);
    case WeightFormat::kF16:
      return FloatGemvRowsT(static_cast<const hwy::float16_t*>(w.data), w.rows,
                            w.cols, x, xstride, n, r0, r1, out);
    case WeightFormat::kBF16:
      return FloatGemvRowsT(static_cast<const hwy::bfloat16_t*>(w.data),
                            w.rows, w.cols, x, xstride, n, r0, r1, out);
    case WeightFormat::kQuantized:
      return VisitLayout(w.params, [&](auto layout) {
        constexpr int kBits = decltype(layout)::kBits;
        if constexpr (IsSplit(kBits)) {
          SplitGemvRowsT<kBits>(w, x, xstride, n, r0, r1, out);
        } else {
          QuantGemvRowsT<kBits, decltype(layout)::kAsym>(w, x, xstride, xsum,
                                                         n, r0, r1, out);
        }
      });
  }
}

// GEMM over rows [r0, r1); x is [n][cols].
void GemmRows(const WeightView& w, const float* x, size_t n, size_t r0,
              size_t r1, float* out) {
  VisitRows(w, [&](auto& rows) {
    GemmRowsT(rows, w.rows, w.cols, x, n, r0, r1, out);
  });
}

void RowOf(const WeightView& w, size_t r, float* out) {
  VisitRows(w, [&](auto& rows) { rows(r, out); });
}

// Sum of x[begin, end) (four vector accumulators): a pure read loop, the
// memory bandwidth reference of the benchmarks.
float SumRange(const float* x, size_t begin, size_t end) {
  const DF d;
  const size_t N = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  size_t i = begin;
  for (; i + 4 * N <= end; i += 4 * N) {
    a0 = hn::Add(a0, hn::LoadU(d, x + i));
    a1 = hn::Add(a1, hn::LoadU(d, x + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, x + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, x + i + 3 * N));
  }
  float sum = hn::GetLane(
      hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < end; ++i) sum += x[i];
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_MATMUL_MATMUL_INL_H_
