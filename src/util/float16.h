// Scalar float16 / bfloat16 conversions with round-to-nearest-even.
//
// Highway 1.0.3 emulates DemoteTo(float16) by truncation on targets without
// F16C (SSSE3, SSE4, SCALAR), and NumPy / ml_dtypes round to nearest even.
// Group scales must match the NumPy reference bit for bit on every target, so
// the rounding is done here, once, in plain integer arithmetic.
#ifndef LOWBIT_UTIL_FLOAT16_H_
#define LOWBIT_UTIL_FLOAT16_H_

#include <cstdint>
#include <cstring>

namespace lowbit {

// The bits of `from` read as a `To` of the same size (std::bit_cast is C++20).
template <typename To, typename From>
inline To BitCast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "BitCast needs types of one size");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

inline uint32_t BitsOf(float f) { return BitCast<uint32_t>(f); }

inline float FloatOf(uint32_t u) { return BitCast<float>(u); }

// IEEE binary16 bits nearest to `f` (ties to even); overflow gives +-inf.
inline uint16_t F16BitsFromF32(float f) {
  const uint32_t u = BitsOf(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477FF000u) {  // rounds to >= 65520: overflow
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (abs < 0x38800000u) {  // below 2^-14: subnormal half or zero
    // Scale so that the half's subnormal step (2^-24) becomes 1, then round
    // with the FPU (round-to-nearest-even is the default mode).
    const float scaled = FloatOf(abs) * 16777216.0f;  // * 2^24, exact
    const uint32_t m = static_cast<uint32_t>(__builtin_nearbyintf(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  // Normal: rebias exponent (127 -> 15) and round 23 -> 10 mantissa bits.
  const uint32_t rebased = abs - ((127u - 15u) << 23);
  const uint32_t round_bit = 1u << 12;
  const uint32_t sticky = (rebased & (round_bit - 1)) != 0;
  const uint32_t lsb = (rebased >> 13) & 1u;
  uint32_t half = rebased >> 13;
  if ((rebased & round_bit) && (sticky || lsb)) ++half;
  return static_cast<uint16_t>(sign | half);
}

inline float F32FromF16Bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return FloatOf(BitsOf(v) | sign);
  }
  if (exp == 31) return FloatOf(sign | 0x7F800000u | (mant << 13));
  return FloatOf(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Rounds `f` to the nearest float16 value and returns it as a float.
inline float RoundToF16(float f) { return F32FromF16Bits(F16BitsFromF32(f)); }

// bfloat16 bits nearest to a finite `f` (ties to even).
inline uint16_t BF16BitsFromF32(float f) {
  const uint32_t u = BitsOf(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // keep nan a nan
  }
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float F32FromBF16Bits(uint16_t b) {
  return FloatOf(static_cast<uint32_t>(b) << 16);
}

}  // namespace lowbit

#endif  // LOWBIT_UTIL_FLOAT16_H_
