// What a quantization scheme is, in the numbers the kernels need.
//
// The scheme table itself lives in python/lowbit/schemes.py (one place); it
// hands these numbers to the core. Terms: a row of `cols` weights is cut into
// groups of `group_size` contiguous weights sharing one scale (and zero point).
// Codes are packed into 16-byte blocks: the code at position k*16 + j of a
// block sits in byte j, bits [k*bits, (k+1)*bits). One shift and one AND then
// give 16 contiguous codes, whatever the vector width.
#ifndef LOWBIT_QUANT_QUANT_PARAMS_H_
#define LOWBIT_QUANT_QUANT_PARAMS_H_

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "util/checked.h"

namespace lowbit {

// How the round-to-nearest (rtn) scale is found from a group.
enum class ScaleRule : int32_t {
  kAbsMax = 0,   // symmetric: scale = max|x| / scale_divisor
  kMeanAbs = 1,  // symmetric: scale = mean|x| (ternary, BitNet b1.58)
  kMinMax = 2,   // asymmetric: scale = (max - min) / qmax, zero = -min/scale
  // symmetric: scale = e / scale_divisor, where e is the group's value of
  // largest magnitude, sign kept (the larger of max and -min; max on a tie)
  // and scale_divisor = qmin: e lands exactly on qmin, so all 2^bits levels
  // are used, as llama.cpp's Q4_0 does (int4).
  kSignedMax = 3,
};

enum class Method : int32_t {
  kRtn = 0,  // the formulas above
  kMse = 1,  // search of clip ratios minimising the squared error
  kHqq = 2,  // half-quadratic optimisation of the zero point (asymmetric)
};

// Element types the kernels read directly.
enum class DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct QuantParams {
  int32_t bits = 8;           // width of one stored code: 1 to 6, or 8
  int32_t qmin = -127;        // code range before the offset
  int32_t qmax = 127;
  int32_t code_offset = 0;    // stored code = q + code_offset (symmetric)
  bool is_signed = true;      // 8-bit codes stored as int8 rather than uint8
  ScaleRule rule = ScaleRule::kAbsMax;
  float scale_divisor = 127;  // for kAbsMax and kSignedMax
  Method method = Method::kRtn;
  size_t group_size = 0;      // 0: one group per row
  bool f16_params = false;    // scales and zero points rounded to float16
  bool stream_output = false;  // dequantize: non-temporal stores (big outputs)

  bool asymmetric() const { return rule == ScaleRule::kMinMax; }
};

// Bytes of one stored block of packed codes.
inline constexpr size_t kBlockBytes = 16;

// Widths that 8 does not divide are stored as two planes, each in the block
// layout of its own width: the code's low bits in a plane of LowPlaneBits,
// the rest in a plane of HighPlaneBits (3 = 2 + 1, 5 = 4 + 1, 6 = 4 + 2), a
// row's low plane first. A segment of 16 codes is then one shift and one AND
// in each plane, as for every other width (llama.cpp's Q5 and Q6 types keep
// their high bits apart from the 4-bit nibbles too).
constexpr int LowPlaneBits(int bits) {
  return bits == 3 ? 2 : (bits == 5 || bits == 6) ? 4 : bits;
}
constexpr int HighPlaneBits(int bits) { return bits - LowPlaneBits(bits); }
constexpr bool IsSplit(int bits) { return HighPlaneBits(bits) != 0; }

// Codes per block of a plane of `bits` (1, 2, 4 or 8) bits.
inline size_t CodesPerBlock(int bits) { return kBlockBytes * 8 / bits; }

// Stored bytes of `cols` codes in one plane: whole blocks, the last one
// padded (8-bit rows are not padded).
inline size_t PlaneBytes(size_t cols, int bits) {
  if (bits == 8) return cols;
  const size_t per_block = CodesPerBlock(bits);
  return (cols + per_block - 1) / per_block * kBlockBytes;
}

// Stored bytes per row.
inline size_t RowBytes(size_t cols, int bits) {
  if (!IsSplit(bits)) return PlaneBytes(cols, bits);
  return PlaneBytes(cols, LowPlaneBits(bits)) +
         PlaneBytes(cols, HighPlaneBits(bits));
}

// Codes a row is padded to: whole blocks of each plane (the coarser plane's
// blocks for two planes); the padding holds quantized zeros.
inline size_t PaddedCodes(size_t cols, int bits) {
  if (bits == 8) return cols;
  const size_t per_block = CodesPerBlock(IsSplit(bits) ? HighPlaneBits(bits)
                                                        : bits);
  return (cols + per_block - 1) / per_block * per_block;
}

// RowBytes for sizes from outside: std::invalid_argument for bits other than
// 1 to 6 and 8, SizeOverflow when rounding cols up to whole blocks overflows.
inline size_t CheckedRowBytes(size_t cols, int bits) {
  if (bits < 1 || bits > 8 || bits == 7) {
    throw std::invalid_argument("bits: must be 1 to 6 or 8, got " +
                                std::to_string(bits));
  }
  if (bits != 8) CheckedAdd(cols, CodesPerBlock(1) - 1, "cols: row bytes");
  return RowBytes(cols, bits);
}

inline size_t GroupsPerRow(size_t cols, size_t group_size) {
  return group_size == 0 ? 1 : cols / group_size;
}

// Clip ratios tried by Method::kMse, in order; the first best one wins.
inline float MseRatio(const QuantParams& p, int step) {
  // Ternary's scale is a mean, so its search brackets 1 on both sides.
  if (p.rule == ScaleRule::kMeanAbs) {
    return static_cast<float>(0.5 + 0.05 * step);
  }
  return static_cast<float>(1.0 - 0.025 * step);
}
inline int MseSteps(const QuantParams& p) {
  return p.rule == ScaleRule::kMeanAbs ? 21 : 20;
}

// HQQ's published defaults (Badri & Shaji, 2023): lp-norm 0.7, beta 10,
// kappa 1.01, 20 iterations.
inline constexpr float kHqqLpNorm = 0.7f;
inline constexpr float kHqqBeta = 10.0f;
inline constexpr float kHqqKappa = 1.01f;
inline constexpr int kHqqIters = 20;

}  // namespace lowbit

#endif  // LOWBIT_QUANT_QUANT_PARAMS_H_
