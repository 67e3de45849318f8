// Shared pieces of the C++ tests: a fixture that runs each test once per
// compiled SIMD target, seeded inputs, and scalar references that every
// kernel is held against (float16/bfloat16 rounding, the stored code layout).
#ifndef LOWBIT_TESTS_CPP_TEST_UTIL_H_
#define LOWBIT_TESTS_CPP_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "quant/quant_params.h"
#include "util/float16.h"
#include "util/targets.h"

namespace lowbit {
namespace testing_util {

// Runs its tests once for each target of AvailableTargets(): compiled into
// lowbit_core and supported by this CPU. ForceTarget is the switch Python's
// LOWBIT_TARGET uses, so the tests run the kernels exactly as users can.
class PerTarget : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ForceTarget(GetParam()); }
  void TearDown() override { ForceTarget(""); }
};

// Test names read ..._AVX2, ..._SCALAR.
inline std::string TargetParamName(
    const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

#define LOWBIT_INSTANTIATE_PER_TARGET(suite)                                 \
  INSTANTIATE_TEST_SUITE_P(Targets, suite,                                   \
                           ::testing::ValuesIn(::lowbit::AvailableTargets()), \
                           ::lowbit::testing_util::TargetParamName)

// Normal floats with a per-call spread of magnitudes, from a fixed seed:
// each test sees the same numbers on every run and target.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed,
                                       float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// ---------------------------------------------------------------- floats

// The float nearest to `x` with `mantissa_bits` explicit mantissa bits and
// the smallest normal exponent `min_exp` (values below it are subnormal with
// a fixed step), ties to even. Computed in double on the exact value: an
// independent check of the bit-twiddling conversions in util/float16.h and
// the kernels. Does not handle overflow (the caller checks the range).
inline double RoundToFormat(double x, int mantissa_bits, int min_exp) {
  if (x == 0.0 || !std::isfinite(x)) return x;
  int e;
  std::frexp(x, &e);  // |x| = m * 2^e, m in [0.5, 1)
  const int exp = std::max(e - 1, min_exp);
  const double step = std::ldexp(1.0, exp - mantissa_bits);
  // x / step and the product are exact: step is a power of two and the
  // quotient fits in a double's 53 bits.
  return std::nearbyint(x / step) * step;
}

// float16: 10 mantissa bits, normals from 2^-14; largest finite 65504.
inline double RoundToF16Ref(double x) { return RoundToFormat(x, 10, -14); }
// bfloat16: float32's exponent range, 7 mantissa bits.
inline double RoundToBF16Ref(double x) { return RoundToFormat(x, 7, -126); }

// Bits of a value that float16 represents exactly.
inline uint16_t ExactF16Bits(double v) {
  return BitCast<uint16_t>(static_cast<_Float16>(v));
}

inline float F16BitsToFloat(uint16_t bits) {
  return static_cast<float>(BitCast<_Float16>(bits));
}

// bfloat16 is float32's top half: no rounding to check here, so these share
// the core's bit casts.
inline uint16_t ExactBF16Bits(double v) {
  return static_cast<uint16_t>(BitsOf(static_cast<float>(v)) >> 16);
}

inline float BF16BitsToFloat(uint16_t bits) {
  return FloatOf(static_cast<uint32_t>(bits) << 16);
}

// ---------------------------------------------------------------- schemes

// The integer schemes of python/lowbit/schemes.py, as the core sees them.
struct Scheme {
  const char* name;
  int bits;
  ScaleRule rule;
  int qmin;
  int qmax;
  int code_offset;
  float scale_divisor;
};

inline const std::vector<Scheme>& Schemes() {
  static const std::vector<Scheme> schemes = {
      {"int8", 8, ScaleRule::kAbsMax, -127, 127, 0, 127.0f},
      {"int4", 4, ScaleRule::kSignedMax, -8, 7, 8, -8.0f},
      {"uint8", 8, ScaleRule::kMinMax, 0, 255, 0, 1.0f},
      {"uint6", 6, ScaleRule::kMinMax, 0, 63, 0, 1.0f},
      {"uint5", 5, ScaleRule::kMinMax, 0, 31, 0, 1.0f},
      {"uint4", 4, ScaleRule::kMinMax, 0, 15, 0, 1.0f},
      {"uint3", 3, ScaleRule::kMinMax, 0, 7, 0, 1.0f},
      {"uint2", 2, ScaleRule::kMinMax, 0, 3, 0, 1.0f},
      {"uint1", 1, ScaleRule::kMinMax, 0, 1, 0, 1.0f},
      {"ternary", 2, ScaleRule::kMeanAbs, -1, 1, 1, 1.0f},
  };
  return schemes;
}

// The scheme called `name` (a test's typo fails loudly).
inline const Scheme& SchemeNamed(const std::string& name) {
  for (const Scheme& s : Schemes()) {
    if (name == s.name) return s;
  }
  ADD_FAILURE() << "no scheme " << name;
  return Schemes().front();
}

// What Python's core_params passes: float16 group parameters when grouped.
inline QuantParams ParamsOf(const Scheme& s, size_t group_size,
                            Method method) {
  QuantParams p;
  p.bits = s.bits;
  p.qmin = s.qmin;
  p.qmax = s.qmax;
  p.code_offset = s.code_offset;
  p.rule = s.rule;
  p.scale_divisor = s.scale_divisor;
  p.method = method;
  p.group_size = group_size;
  p.f16_params = group_size != 0;
  return p;
}

// One quantized matrix as QuantizeMatrix writes it.
struct Quantized {
  size_t rows = 0;
  size_t cols = 0;
  QuantParams p;
  std::vector<uint8_t> codes;
  // Stored parameters: float16 bits (p.f16_params) or float32 bytes.
  std::vector<uint8_t> scales;
  std::vector<uint8_t> zeros;

  size_t groups() const { return GroupsPerRow(cols, p.group_size); }
  size_t group_size() const { return cols / groups(); }
  size_t row_bytes() const { return RowBytes(cols, p.bits); }

  // Stored parameter i (row-major [rows, groups]) as a float.
  static float Param(const std::vector<uint8_t>& v, bool f16, size_t i) {
    if (f16) {
      uint16_t bits;
      std::memcpy(&bits, v.data() + 2 * i, sizeof(bits));
      return F16BitsToFloat(bits);
    }
    float f;
    std::memcpy(&f, v.data() + 4 * i, sizeof(f));
    return f;
  }
  float scale(size_t r, size_t g) const {
    return Param(scales, p.f16_params, r * groups() + g);
  }
  // The zero point, or the code offset of symmetric schemes.
  float zero(size_t r, size_t g) const {
    if (!p.asymmetric()) return static_cast<float>(p.code_offset);
    return Param(zeros, p.f16_params, r * groups() + g);
  }
  void* scales_data() { return scales.data(); }
  void* zeros_data() { return p.asymmetric() ? zeros.data() : nullptr; }
};

inline Quantized Allocate(size_t rows, size_t cols, const QuantParams& p) {
  Quantized q;
  q.rows = rows;
  q.cols = cols;
  q.p = p;
  q.codes.assign(rows * RowBytes(cols, p.bits), 0);
  const size_t param_bytes =
      rows * GroupsPerRow(cols, p.group_size) * (p.f16_params ? 2 : 4);
  q.scales.assign(param_bytes, 0);
  if (p.asymmetric()) q.zeros.assign(param_bytes, 0);
  return q;
}

// Code c of a plane of `bits` (1, 2, 4) bits starting at `plane`: the code
// at position k * 16 + j of a 16-byte block sits in byte j, bits
// [k * bits, (k + 1) * bits).
inline int PlaneCode(const uint8_t* plane, int bits, size_t c) {
  const size_t per_block = kBlockBytes * 8 / bits;
  const size_t pos = c % per_block;
  const uint8_t byte = plane[c / per_block * kBlockBytes + pos % kBlockBytes];
  const int shift = static_cast<int>(pos / kBlockBytes) * bits;
  return (byte >> shift) & ((1 << bits) - 1);
}

// The stored code of column c of row r, read from the documented layout
// (quant_params.h): one plane; or, for 3, 5 and 6 bits, the low plane's
// code plus the high plane's shifted past it. 8-bit symmetric codes are int8.
inline int StoredCode(const Quantized& q, size_t r, size_t c) {
  const uint8_t* row = q.codes.data() + r * q.row_bytes();
  const int bits = q.p.bits;
  if (bits == 8) {
    return q.p.asymmetric() ? row[c] : static_cast<int8_t>(row[c]);
  }
  const int lo = bits == 3 ? 2 : bits == 5 || bits == 6 ? 4 : bits;
  if (lo == bits) return PlaneCode(row, bits, c);
  const size_t per_lo = kBlockBytes * 8 / lo;
  const size_t lo_bytes = (q.cols + per_lo - 1) / per_lo * kBlockBytes;
  return PlaneCode(row, lo, c) | PlaneCode(row + lo_bytes, bits - lo, c) << lo;
}

// Scalar decode of row r into out[0, cols): x^ = scale * (code - zero), in
// the same float32 operations as the kernels, so the results agree bit for
// bit.
inline void DecodeRowRef(const Quantized& q, size_t r, float* out) {
  const size_t g = q.group_size();
  for (size_t c = 0; c < q.cols; ++c) {
    const float code = static_cast<float>(StoredCode(q, r, c));
    out[c] = (code - q.zero(r, c / g)) * q.scale(r, c / g);
  }
}

inline std::vector<float> DecodeRef(const Quantized& q) {
  std::vector<float> out(q.rows * q.cols);
  for (size_t r = 0; r < q.rows; ++r) DecodeRowRef(q, r, &out[r * q.cols]);
  return out;
}

// Bitwise float equality (NaN payloads and the sign of zero included).
inline bool SameBits(float a, float b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

}  // namespace testing_util
}  // namespace lowbit

#endif  // LOWBIT_TESTS_CPP_TEST_UTIL_H_
