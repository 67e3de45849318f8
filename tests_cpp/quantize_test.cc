// quant/quantize.h on every SIMD target against scalar references written
// here: rtn codes and stored parameters bit for bit, the mse and hqq searches
// by the error they reach, dequantize and the reconstruction error against a
// scalar decode, and the float casts against exact rounding in double.
#include "quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/aligned_allocator.h"
#include "quant/quant_params.h"
#include "test_util.h"
#include "util/errors.h"

namespace lowbit {
// In testing_util's namespace: its helpers need no using-declarations.
namespace testing_util {
namespace {

// ---------------------------------------------------------------- reference

struct GroupParams {
  float scale = 0.0f;
  float inv = 0.0f;
  float zero = 0.0f;
  bool finite() const { return std::isfinite(scale) && std::isfinite(zero); }
};

float StoreRef(const QuantParams& p, float v) {
  return p.f16_params ? static_cast<float>(RoundToF16Ref(v)) : v;
}

float InverseRef(float scale) { return scale == 0.0f ? 0.0f : 1.0f / scale; }

// The rtn formulas of quant_params.h for one group, with the mse search's
// clip ratio.
GroupParams RtnRef(const QuantParams& p, const float* x, size_t len,
                   float ratio) {
  float mn = x[0], mx = x[0], amax = 0.0f;
  double abs_sum = 0.0;
  for (size_t i = 0; i < len; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
    amax = std::max(amax, std::fabs(x[i]));
    abs_sum += std::fabs(static_cast<double>(x[i]));
  }
  GroupParams q;
  switch (p.rule) {
    case ScaleRule::kAbsMax:
      q.scale = StoreRef(p, (amax * ratio) / p.scale_divisor);
      break;
    case ScaleRule::kSignedMax: {
      const float extreme = -mn > mx ? mn : mx;
      q.scale = StoreRef(p, (extreme * ratio) / p.scale_divisor);
      break;
    }
    case ScaleRule::kMeanAbs: {
      const float mean = static_cast<float>(abs_sum / static_cast<double>(len));
      q.scale = StoreRef(p, mean * ratio);
      break;
    }
    case ScaleRule::kMinMax: {
      mn *= ratio;
      mx *= ratio;
      if (mx == mn) {
        q.scale = StoreRef(p, std::fabs(mx));
        q.inv = InverseRef(q.scale);
        q.zero = mx > 0.0f ? -1.0f : (mx < 0.0f ? 1.0f : 0.0f);
        return q;
      }
      q.scale = StoreRef(p, (mx - mn) / static_cast<float>(p.qmax));
      q.inv = InverseRef(q.scale);
      q.zero = StoreRef(p, -mn * q.inv);
      return q;
    }
  }
  q.inv = InverseRef(q.scale);
  return q;
}

// q before the code offset: round half to even of the clamped value.
float CodeRef(const QuantParams& p, float x, const GroupParams& q) {
  float t = x * q.inv;
  if (p.asymmetric()) t += q.zero;
  return std::nearbyint(std::min(std::max(t, static_cast<float>(p.qmin)),
                                 static_cast<float>(p.qmax)));
}

// Squared error of a group, in double: the measure the searches are judged
// by here.
double SseRef(const QuantParams& p, const float* x, size_t len,
              const GroupParams& q) {
  const float zero = p.asymmetric() ? q.zero : 0.0f;
  double sse = 0.0;
  for (size_t i = 0; i < len; ++i) {
    const float rec = (CodeRef(p, x[i], q) - zero) * q.scale;
    const double diff = static_cast<double>(x[i]) - rec;
    sse += diff * diff;
  }
  return sse;
}

// The mse grid: ratio 1, then MseRatio(p, step); the least error wins.
std::vector<GroupParams> MseCandidates(const QuantParams& p, const float* x,
                                       size_t len) {
  std::vector<GroupParams> out{RtnRef(p, x, len, 1.0f)};
  for (int step = 1; step < MseSteps(p); ++step) {
    const GroupParams q = RtnRef(p, x, len, MseRatio(p, step));
    if (q.finite()) out.push_back(q);
  }
  return out;
}

// HQQ as documented in search_hqq-inl.h, in scalar float32 with std::pow
// where the kernels use Highway's Exp and Log.
GroupParams HqqRef(const QuantParams& p, const float* x, size_t len) {
  GroupParams best = RtnRef(p, x, len, 1.0f);
  const float mn = *std::min_element(x, x + len);
  const float mx = *std::max_element(x, x + len);
  if (best.scale == 0.0f || mn == mx) return best;
  auto sse_f = [&](const GroupParams& q) {
    float sse = 0.0f;
    for (size_t i = 0; i < len; ++i) {
      const float diff = x[i] - (CodeRef(p, x[i], q) - q.zero) * q.scale;
      sse += diff * diff;
    }
    return sse;
  };
  float best_sse = sse_f(best);
  float beta = kHqqBeta;
  for (int it = 0; it < kHqqIters; ++it) {
    float sum = 0.0f;
    for (size_t i = 0; i < len; ++i) {
      const float code = CodeRef(p, x[i], best);
      const float resid = x[i] - (code - best.zero) * best.scale;
      const float mag = std::max(std::fabs(resid), 1e-30f);
      const float thresh = std::pow(mag, kHqqLpNorm - 1.0f) * (1.0f / beta);
      const float e =
          std::copysign(std::max(std::fabs(resid) - thresh, 0.0f), resid);
      sum += code - (x[i] - e) * best.inv;
    }
    GroupParams cand = best;
    cand.zero = StoreRef(p, sum / static_cast<float>(len));
    beta *= kHqqKappa;
    if (!std::isfinite(cand.zero)) break;
    const float sse = sse_f(cand);
    if (!(sse < best_sse)) break;
    best = cand;
    best_sse = sse;
  }
  return best;
}

// The stored bytes of rtn quantization of x [rows, cols]. The last block of
// a row is padded with zeros, quantized with the last group's parameters.
Quantized QuantizeRef(const std::vector<float>& x, size_t rows, size_t cols,
                      const QuantParams& p) {
  Quantized q = Allocate(rows, cols, p);
  const size_t g = q.group_size();
  const size_t groups = q.groups();
  const bool packed = p.bits != 8;
  // Codes past cols, up to the last block of the coarsest plane, are zeros
  // quantized with the last group's parameters.
  const int lo = p.bits == 3 ? 2 : p.bits == 5 || p.bits == 6 ? 4 : p.bits;
  const int hi = p.bits - lo;
  const size_t per_block =
      packed ? kBlockBytes * 8 / (hi != 0 ? hi : p.bits) : kBlockBytes;
  const size_t padded = packed ? (cols + per_block - 1) / per_block * per_block
                               : cols;
  const size_t per_lo = kBlockBytes * 8 / lo;
  const size_t lo_bytes = (cols + per_lo - 1) / per_lo * kBlockBytes;
  const size_t lo_codes = lo_bytes / kBlockBytes * per_lo;
  // Sets code `code` of `bits` bits at position c of a plane.
  auto put = [](uint8_t* plane, int bits, size_t c, int code) {
    const size_t per = kBlockBytes * 8 / bits;
    const size_t pos = c % per;
    plane[c / per * kBlockBytes + pos % kBlockBytes] |=
        static_cast<uint8_t>(code << (pos / kBlockBytes * bits));
  };
  for (size_t r = 0; r < rows; ++r) {
    std::vector<GroupParams> gp(groups);
    for (size_t gi = 0; gi < groups; ++gi) {
      gp[gi] = RtnRef(p, x.data() + r * cols + gi * g, g, 1.0f);
      const size_t i = r * groups + gi;
      if (p.f16_params) {
        const uint16_t s = ExactF16Bits(gp[gi].scale);
        const uint16_t z = ExactF16Bits(gp[gi].zero);
        std::memcpy(q.scales.data() + 2 * i, &s, 2);
        if (p.asymmetric()) std::memcpy(q.zeros.data() + 2 * i, &z, 2);
      } else {
        std::memcpy(q.scales.data() + 4 * i, &gp[gi].scale, 4);
        if (p.asymmetric()) {
          std::memcpy(q.zeros.data() + 4 * i, &gp[gi].zero, 4);
        }
      }
    }
    uint8_t* row = q.codes.data() + r * q.row_bytes();
    for (size_t c = 0; c < padded; ++c) {
      const float v = c < cols ? x[r * cols + c] : 0.0f;
      const GroupParams& gq = gp[std::min(c / g, groups - 1)];
      int code = static_cast<int>(CodeRef(p, v, gq));
      if (!p.asymmetric()) code += p.code_offset;
      if (!packed) {
        row[c] = static_cast<uint8_t>(code);
      } else if (hi == 0) {
        put(row, p.bits, c, code);
      } else {
        if (c < lo_codes) put(row, lo, c, code & ((1 << lo) - 1));
        put(row + lo_bytes, hi, c, code >> lo);
      }
    }
  }
  return q;
}

// ---------------------------------------------------------------- inputs

// A matrix of `dtype` and the float32 values it holds. Row 1 starts with a
// constant group and row 2 with a zero group: the edge cases of the scale
// rules (a zero scale, minmax's exact constant).
struct Input {
  DType dtype;
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

Input MakeInput(size_t rows, size_t cols, DType dtype, uint32_t seed) {
  std::vector<float> x = RandomFloats(rows * cols, seed);
  for (size_t r = 0; r < rows; ++r) {
    // Rows of different magnitude, as in real weights.
    for (size_t c = 0; c < cols; ++c) x[r * cols + c] *= 0.02f * (r + 1);
  }
  if (rows > 2 && cols >= 32) {
    for (size_t c = 0; c < 32; ++c) {
      x[cols + c] = 0.25f;
      x[2 * cols + c] = 0.0f;
    }
  }
  Input in;
  in.dtype = dtype;
  in.values = x;
  if (dtype == DType::kF32) {
    in.bytes.resize(x.size() * 4);
    std::memcpy(in.bytes.data(), x.data(), in.bytes.size());
    return in;
  }
  in.bytes.resize(x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    const bool half = dtype == DType::kF16;
    const uint16_t bits = half ? ExactF16Bits(RoundToF16Ref(x[i]))
                               : ExactBF16Bits(RoundToBF16Ref(x[i]));
    std::memcpy(in.bytes.data() + 2 * i, &bits, 2);
    in.values[i] = half ? F16BitsToFloat(bits) : BF16BitsToFloat(bits);
  }
  return in;
}

Quantized QuantizeKernel(const Input& in, size_t rows, size_t cols,
                         const QuantParams& p) {
  Quantized q = Allocate(rows, cols, p);
  ErrorSink errors;
  QuantizeMatrix(in.bytes.data(), in.dtype, rows, cols, p, q.codes.data(),
                 q.scales_data(), q.zeros_data(), &errors);
  EXPECT_EQ(errors.kind(), ErrorKind::kNone);
  return q;
}

// The stored scales (or zero points) of q as floats, row-major.
std::vector<float> ParamValues(const Quantized& q, bool zeros) {
  std::vector<float> out;
  for (size_t r = 0; r < q.rows; ++r) {
    for (size_t g = 0; g < q.groups(); ++g) {
      out.push_back(zeros ? q.zero(r, g) : q.scale(r, g));
    }
  }
  return out;
}

struct Case {
  const Scheme* scheme;
  size_t cols;
  size_t group_size;
  DType dtype;
  std::string Name() const {
    static const char* const kTypes[] = {"f32", "f16", "bf16"};
    return std::string(scheme->name) + " cols=" + std::to_string(cols) +
           " group=" + std::to_string(group_size) + " " +
           kTypes[static_cast<int>(dtype)];
  }
};

// Every scheme on rows that end in a partial block (160 = 1.25 blocks at 1
// bit, 2.5 at 2 bits; 48 everywhere but 8 and 4 bits) and on whole blocks,
// per row and in groups, from each input type.
std::vector<Case> Cases() {
  std::vector<Case> out;
  for (const Scheme& s : Schemes()) {
    for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      out.push_back({&s, 160, 0, dtype});
      out.push_back({&s, 160, 32, dtype});
      out.push_back({&s, 48, 16, dtype});
      out.push_back({&s, 256, 0, dtype});
    }
  }
  return out;
}

constexpr size_t kRows = 5;

// ---------------------------------------------------------------- tests

class QuantizeTest : public testing_util::PerTarget {};
LOWBIT_INSTANTIATE_PER_TARGET(QuantizeTest);

TEST_P(QuantizeTest, DispatchesToTheForcedTarget) {
  EXPECT_EQ(DispatchedTarget(), GetParam());
}

// Quantizes the input of every case that `applies` with `method` (one seed
// a case, counted from `seed`) and calls check(c, p, in, q).
template <typename Applies, typename Check>
void ForEachQuantizedCase(Method method, uint32_t seed, Applies applies,
                          Check check) {
  for (const Case& c : Cases()) {
    if (!applies(c)) continue;
    SCOPED_TRACE(c.Name());
    const QuantParams p = ParamsOf(*c.scheme, c.group_size, method);
    const Input in = MakeInput(kRows, c.cols, c.dtype, seed++);
    Quantized q = QuantizeKernel(in, kRows, c.cols, p);
    check(c, p, in, q);
  }
}

bool AllCases(const Case&) { return true; }

TEST_P(QuantizeTest, RtnMatchesScalarQuantizeBitForBit) {
  ForEachQuantizedCase(
      Method::kRtn, 1, AllCases,
      [](const Case& c, const QuantParams& p, const Input& in,
         const Quantized& got) {
        const Quantized want = QuantizeRef(in.values, kRows, c.cols, p);
        EXPECT_EQ(got.codes, want.codes);
        // Parameters as values: the sign of a zero scale (an all-zero group)
        // is not the same on every target. Highway 1.0.3's emulated float16
        // demotion (SSSE3, SSE4, SCALAR) stores -0 as +0; x^ is 0 either way.
        EXPECT_EQ(ParamValues(got, false), ParamValues(want, false));
        EXPECT_EQ(ParamValues(got, true), ParamValues(want, true));
      });
}

TEST_P(QuantizeTest, DequantizeMatchesScalarDecodeBitForBit) {
  ForEachQuantizedCase(
      Method::kRtn, 100, AllCases,
      [](const Case& c, const QuantParams& p, const Input&,
         const Quantized& q) {
        std::vector<float> got(kRows * c.cols);
        DequantizeMatrix(q.codes.data(), q.scales.data(),
                         p.asymmetric() ? q.zeros.data() : nullptr, kRows,
                         c.cols, p, got.data());
        const std::vector<float> want = DecodeRef(q);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_TRUE(SameBits(got[i], want[i]))
              << "element " << i << ": " << got[i] << " vs " << want[i];
        }
      });
}

// Outputs of 32 MiB and more take the streaming-store path.
TEST_P(QuantizeTest, LargeDequantizeStreamsTheSameValues) {
  const size_t rows = 2048, cols = 4096;
  const QuantParams p = ParamsOf(SchemeNamed("int4"), 32, Method::kRtn);
  Quantized q = Allocate(rows, cols, p);
  std::mt19937 rng(5);
  for (uint8_t& b : q.codes) b = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < q.scales.size() / 2; ++i) {
    // Positive normal float16 scales in [2^-14, 2).
    const uint16_t bits = static_cast<uint16_t>(0x0400 + rng() % 0x3C00);
    std::memcpy(q.scales.data() + 2 * i, &bits, 2);
  }
  // Aligned so that the kernels may use streaming stores.
  auto out = hwy::AllocateAligned<float>(rows * cols);
  DequantizeMatrix(q.codes.data(), q.scales.data(), nullptr, rows, cols, p,
                   out.get());
  // Every 61st row and the last: rows of both threads' shares, at a
  // fraction of the scalar decode's cost (seconds under ASan).
  std::vector<size_t> checked;
  for (size_t r = 0; r < rows; r += 61) checked.push_back(r);
  checked.push_back(rows - 1);
  std::vector<float> want(cols);
  for (const size_t r : checked) {
    testing_util::DecodeRowRef(q, r, want.data());
    for (size_t c = 0; c < cols; ++c) {
      ASSERT_TRUE(SameBits(out[r * cols + c], want[c]))
          << "row " << r << " col " << c;
    }
  }
}

TEST_P(QuantizeTest, ReconstructionErrorMatchesScalarSums) {
  ForEachQuantizedCase(
      Method::kRtn, 200, AllCases,
      [](const Case& c, const QuantParams& p, const Input& in, Quantized& q) {
        std::vector<double> signal(kRows), noise(kRows);
        ReconstructionError(in.bytes.data(), in.dtype, q.codes.data(),
                            q.scales_data(), q.zeros_data(), kRows, c.cols, p,
                            signal.data(), noise.data());
        const std::vector<float> rec = DecodeRef(q);
        for (size_t r = 0; r < kRows; ++r) {
          double sig = 0.0, err = 0.0;
          for (size_t i = r * c.cols; i < (r + 1) * c.cols; ++i) {
            const double v = in.values[i];
            sig += v * v;
            err += (v - rec[i]) * (v - rec[i]);
          }
          // The kernels sum float32 lanes: a relative error of a few 1e-7.
          EXPECT_NEAR(signal[r], sig, 1e-5 * sig) << "row " << r;
          EXPECT_NEAR(noise[r], err, 1e-5 * err + 1e-30) << "row " << r;
        }
      });
}

// Quantizes every float32 case that `applies` with `method`, then calls
// check(p, x, g, q, r, gi) for each group: its input x[0, g) and where it
// landed (row r, group gi of q).
template <typename Applies, typename Check>
void ForEachSearchedGroup(Method method, uint32_t seed, Applies applies,
                          Check check) {
  ForEachQuantizedCase(
      method, seed,
      [&](const Case& c) { return c.dtype == DType::kF32 && applies(c); },
      [&](const Case& c, const QuantParams& p, const Input& in,
          const Quantized& q) {
        const size_t g = q.group_size();
        for (size_t r = 0; r < kRows; ++r) {
          for (size_t gi = 0; gi < q.groups(); ++gi) {
            SCOPED_TRACE("row " + std::to_string(r) + " group " +
                         std::to_string(gi));
            check(p, in.values.data() + r * c.cols + gi * g, g, q, r, gi);
          }
        }
      });
}

// mse: the chosen parameters are one of the grid's candidates, with the
// least error up to float32 summation (the kernels compare float32 sums).
TEST_P(QuantizeTest, MseFindsTheLeastErrorOnTheGrid) {
  ForEachSearchedGroup(
      Method::kMse, 300, AllCases,
      [](const QuantParams& p, const float* x, size_t g, const Quantized& q,
         size_t r, size_t gi) {
        double least = std::numeric_limits<double>::infinity();
        bool on_grid = false;
        const float scale = q.scale(r, gi);
        const float zero = p.asymmetric() ? q.zero(r, gi) : 0.0f;
        for (const GroupParams& cand : MseCandidates(p, x, g)) {
          least = std::min(least, SseRef(p, x, g, cand));
          // Equal values: a zero group's scale is -0 or +0 by target.
          on_grid |= cand.scale == scale && cand.zero == zero;
        }
        EXPECT_TRUE(on_grid);
        const GroupParams chosen{scale, InverseRef(scale), zero};
        EXPECT_LE(SseRef(p, x, g, chosen), least * (1 + 1e-4) + 1e-30);
      });
}

// hqq keeps the min/max scale, is never worse than rtn, and ends within 1%
// of the scalar iteration (Highway's Exp/Log and std::pow differ in the last
// bits, which can stop the iteration a step apart).
TEST_P(QuantizeTest, HqqImprovesOnRtnLikeTheScalarIteration) {
  ForEachSearchedGroup(
      Method::kHqq, 400,
      [](const Case& c) { return c.scheme->rule == ScaleRule::kMinMax; },
      [](const QuantParams& p, const float* x, size_t g, const Quantized& q,
         size_t r, size_t gi) {
        const GroupParams rtn = RtnRef(p, x, g, 1.0f);
        const GroupParams hqq = HqqRef(p, x, g);
        const GroupParams got{q.scale(r, gi), InverseRef(q.scale(r, gi)),
                              q.zero(r, gi)};
        EXPECT_EQ(got.scale, rtn.scale);
        const double sse = SseRef(p, x, g, got);
        EXPECT_LE(sse, SseRef(p, x, g, rtn) * (1 + 1e-5) + 1e-30);
        EXPECT_LE(sse, SseRef(p, x, g, hqq) * 1.01 + 1e-30);
      });
}

TEST_P(QuantizeTest, ReportsTheFirstNonFiniteElement) {
  const QuantParams p = ParamsOf(SchemeNamed("uint4"), 32, Method::kRtn);
  const size_t rows = 6, cols = 64;
  Input in = MakeInput(rows, cols, DType::kF32, 7);
  float* x = reinterpret_cast<float*>(in.bytes.data());
  x[4 * cols + 1] = std::numeric_limits<float>::infinity();
  x[2 * cols + 37] = std::numeric_limits<float>::quiet_NaN();
  Quantized q = Allocate(rows, cols, p);
  ErrorSink errors;
  QuantizeMatrix(x, DType::kF32, rows, cols, p, q.codes.data(),
                 q.scales_data(), q.zeros_data(), &errors);
  EXPECT_EQ(errors.kind(), ErrorKind::kNonFinite);
  EXPECT_EQ(errors.row(), 2u);
  EXPECT_EQ(errors.col(), 37u);
}

TEST_P(QuantizeTest, ReportsAGroupScaleBeyondFloat16) {
  const QuantParams p = ParamsOf(SchemeNamed("int8"), 16, Method::kRtn);
  const size_t rows = 3, cols = 64;
  Input in = MakeInput(rows, cols, DType::kF32, 8);
  float* x = reinterpret_cast<float*>(in.bytes.data());
  // 127 * 65520 rounds the scale to float16 infinity.
  x[1 * cols + 40] = 127.0f * 65520.0f;
  Quantized q = Allocate(rows, cols, p);
  ErrorSink errors;
  QuantizeMatrix(x, DType::kF32, rows, cols, p, q.codes.data(),
                 q.scales_data(), q.zeros_data(), &errors);
  EXPECT_EQ(errors.kind(), ErrorKind::kScaleOverflow);
  EXPECT_EQ(errors.row(), 1u);
  EXPECT_EQ(errors.col(), 32u);  // the start of the group
}

// Importances of 1 are the unweighted search bit for bit; importances that
// are zero on half of each group leave that half out of the error the search
// minimises, so on the other half the weighted mse result is never worse
// than the unweighted one (both pick from the same clip ratios) and the
// weighted hqq result never worse than rtn (where both iterations start).
// GPTQ with U = I spreads no error (every U[c][j > c] is 0) and divides by
// 1: it is rtn on each group, so its bytes are the scalar quantize's.
TEST_P(QuantizeTest, GptqWithoutErrorFeedbackIsRtn) {
  ForEachQuantizedCase(
      Method::kRtn, 300, [](const Case& c) { return c.dtype == DType::kF32; },
      [](const Case& c, const QuantParams& p, const Input& in,
         const Quantized& rtn) {
        std::vector<float> u(c.cols * c.cols, 0.0f);
        for (size_t i = 0; i < c.cols; ++i) u[i * c.cols + i] = 1.0f;
        std::vector<float> w = in.values;
        Quantized got = Allocate(kRows, c.cols, p);
        ErrorSink errors;
        GptqMatrix(w.data(), u.data(), kRows, c.cols, p, got.codes.data(),
                   got.scales_data(), got.zeros_data(), &errors);
        EXPECT_EQ(errors.kind(), ErrorKind::kNone);
        EXPECT_EQ(got.codes, rtn.codes);
        EXPECT_EQ(ParamValues(got, false), ParamValues(rtn, false));
        EXPECT_EQ(ParamValues(got, true), ParamValues(rtn, true));
      });
}

// With feedback: the first column of each row is rounded as it is; its
// error e = x - x^ (U[0][0] = 1) is taken off the second column times
// U[0][1] before that column is rounded. One group per row, int8 per row.
TEST_P(QuantizeTest, GptqSpreadsAColumnsErrorToTheNext) {
  const size_t cols = 32;
  const QuantParams p = ParamsOf(SchemeNamed("int8"), 0, Method::kRtn);
  std::vector<float> x(kRows * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.37f * std::sin(0.7f * i + 1);
  std::vector<float> u(cols * cols, 0.0f);
  for (size_t i = 0; i < cols; ++i) u[i * cols + i] = 1.0f;
  u[1] = 0.5f;  // U[0][1]
  std::vector<float> w = x;
  Quantized got = Allocate(kRows, cols, p);
  ErrorSink errors;
  GptqMatrix(w.data(), u.data(), kRows, cols, p, got.codes.data(),
             got.scales_data(), got.zeros_data(), &errors);
  ASSERT_EQ(errors.kind(), ErrorKind::kNone);
  for (size_t r = 0; r < kRows; ++r) {
    const float* row = x.data() + r * cols;
    const GroupParams g = RtnRef(p, row, cols, 1.0f);
    auto round = [&](float v) {
      return std::nearbyint(std::fmin(std::fmax(v * g.inv, -127.0f), 127.0f));
    };
    const float first = round(row[0]) * g.scale;
    const float second_in = row[1] - 0.5f * (row[0] - first);  // 0.5: exact
    const float second = round(second_in) * g.scale;
    EXPECT_EQ(w[r * cols], first);
    EXPECT_EQ(w[r * cols + 1], second);
    // The reconstruction is what the stored codes decode to.
    const int8_t* codes = reinterpret_cast<const int8_t*>(got.codes.data());
    EXPECT_EQ(codes[r * cols + 1] * got.scale(r, 0), second);
  }
}

TEST_P(QuantizeTest, WeightedSearchesWeighTheirColumns) {
  const size_t rows = 24, cols = 128, g = 32;
  Input in = MakeInput(rows, cols, DType::kF32, 9);
  const float* x = reinterpret_cast<const float*>(in.bytes.data());
  std::vector<float> ones(cols, 1.0f), half(cols, 0.0f);
  for (size_t j = 0; j < cols; ++j) half[j] = (j % g) < g / 2 ? 1.0f : 0.0f;
  for (const Scheme& s : Schemes()) {
    for (Method m : {Method::kMse, Method::kHqq}) {
      if (m == Method::kHqq && s.rule != ScaleRule::kMinMax) continue;
      SCOPED_TRACE(std::string(s.name) + (m == Method::kHqq ? " hqq" : " mse"));
      const QuantParams p = ParamsOf(s, g, m);
      auto run = [&](const float* w) {
        Quantized q = Allocate(rows, cols, p);
        ErrorSink errors;
        QuantizeMatrix(x, DType::kF32, rows, cols, p, q.codes.data(),
                       q.scales_data(), q.zeros_data(), &errors, w);
        EXPECT_EQ(errors.kind(), ErrorKind::kNone);
        return q;
      };
      const Quantized plain = run(nullptr);
      const Quantized unit = run(ones.data());
      EXPECT_EQ(unit.codes, plain.codes);
      EXPECT_EQ(unit.scales, plain.scales);
      EXPECT_EQ(unit.zeros, plain.zeros);
      const Quantized weighted = run(half.data());
      Quantized rtn = Allocate(rows, cols, p);
      {
        ErrorSink errors;
        const QuantParams rp = ParamsOf(s, g, Method::kRtn);
        QuantizeMatrix(x, DType::kF32, rows, cols, rp, rtn.codes.data(),
                       rtn.scales_data(), rtn.zeros_data(), &errors);
      }
      auto half_sse = [&](const Quantized& q) {
        double sse = 0;
        for (size_t r = 0; r < rows; ++r) {
          for (size_t c = 0; c < cols; ++c) {
            if (half[c] == 0.0f) continue;
            const float rec = q.scale(r, c / g) *
                              (static_cast<float>(StoredCode(q, r, c)) -
                               q.zero(r, c / g));
            const double d = x[r * cols + c] - rec;
            sse += d * d;
          }
        }
        return sse;
      };
      const Quantized& start = m == Method::kMse ? plain : rtn;
      EXPECT_LE(half_sse(weighted), half_sse(start) * (1 + 1e-5));
    }
  }
}

// ---------------------------------------------------------------- casts

// Inputs that reach every rounding case: ties at float16 and bfloat16
// precision, subnormals of both, the float16 overflow boundary, signed
// zeros, on either side of a vector chunk (4096 elements).
std::vector<float> CastInputs() {
  std::vector<float> v = RandomFloats(9000, 11, 100.0f);
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f + 1.0f / 2048,  // float16 tie, to even
                            1.0f + 3.0f / 2048,  // float16 tie, up
                            1.0f + 1.0f / 256,   // bfloat16 tie
                            5.9604645e-08f,      // float16's smallest
                            2.9802322e-08f,      // half of it: to zero
                            8.9406967e-08f,      // 1.5 steps: to 2
                            1e-40f,              // float32 subnormal
                            65504.0f,
                            65519.99f,  // rounds to 65504
                            -65519.0f,
                            3.3895e38f,  // below bfloat16 overflow
                            1e-5f,
                            -1e-6f};
  for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); ++i) {
    v[i * 613] = specials[i];
  }
  return v;
}

double RoundRef(DType t, double v) {
  return t == DType::kF16    ? RoundToF16Ref(v)
         : t == DType::kBF16 ? RoundToBF16Ref(v)
                             : v;
}

// The input bytes of `values` in `type` (values representable in it).
std::vector<uint8_t> Encode(DType type, const std::vector<float>& values) {
  if (type == DType::kF32) {
    std::vector<uint8_t> out(values.size() * 4);
    std::memcpy(out.data(), values.data(), out.size());
    return out;
  }
  std::vector<uint8_t> out(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t bits = type == DType::kF16 ? ExactF16Bits(values[i])
                                              : ExactBF16Bits(values[i]);
    std::memcpy(out.data() + 2 * i, &bits, 2);
  }
  return out;
}

class CastTest : public testing_util::PerTarget {};
LOWBIT_INSTANTIATE_PER_TARGET(CastTest);

TEST_P(CastTest, RoundsToNearestEvenLikeExactArithmetic) {
  const DType types[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (const DType from : types) {
    for (const DType to : types) {
      SCOPED_TRACE(std::to_string(static_cast<int>(from)) + " -> " +
                   std::to_string(static_cast<int>(to)));
      std::vector<float> values = CastInputs();
      // Inputs are exact in `from`; values beyond float16's range are
      // clamped so that no cast overflows here. From float32 the clamp is
      // the largest value that rounds to 65504; bfloat16 rounds it to 65536,
      // beyond float16.
      const float limit = from == DType::kF32 ? 65519.99f : 65000.0f;
      for (float& v : values) {
        if (to == DType::kF16 || from == DType::kF16) {
          v = std::max(-limit, std::min(limit, v));
        }
        v = static_cast<float>(RoundRef(from, v));
      }
      const std::vector<uint8_t> in = Encode(from, values);
      const size_t out_size = to == DType::kF32 ? 4 : 2;
      std::vector<uint8_t> out(values.size() * out_size);
      ErrorSink errors;
      CastArray(in.data(), from, values.size(), out.data(), to, &errors);
      ASSERT_EQ(errors.kind(), ErrorKind::kNone);
      std::vector<float> rounded(values.size());
      for (size_t i = 0; i < values.size(); ++i) {
        rounded[i] = static_cast<float>(RoundRef(to, values[i]));
      }
      EXPECT_EQ(out, Encode(to, rounded));
    }
  }
}

// The error CastArray reports for float32 `v` cast to `to`: its kind and the
// index it names.
std::pair<ErrorKind, size_t> CastError(const std::vector<float>& v, DType to) {
  std::vector<uint8_t> out(v.size() * sizeof(float));
  ErrorSink errors;
  CastArray(v.data(), DType::kF32, v.size(), out.data(), to, &errors);
  return {errors.kind(), errors.col()};
}

TEST_P(CastTest, ReportsNonFiniteAndOverflowAtTheirIndex) {
  const std::vector<float> values = CastInputs();
  std::vector<float> v = values;
  v[5000] = std::numeric_limits<float>::quiet_NaN();
  v[7000] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(CastError(v, DType::kF32),
            std::make_pair(ErrorKind::kNonFinite, size_t{5000}));

  v = values;
  for (float& x : v) x = std::max(-60000.0f, std::min(60000.0f, x));
  v[4100] = 65520.0f;  // the smallest value that rounds to float16 inf
  EXPECT_EQ(CastError(v, DType::kF16),
            std::make_pair(ErrorKind::kCastOverflow, size_t{4100}));

  v = values;
  v[123] = std::numeric_limits<float>::max();  // rounds to bfloat16 inf
  EXPECT_EQ(CastError(v, DType::kBF16),
            std::make_pair(ErrorKind::kCastOverflow, size_t{123}));
}

}  // namespace
}  // namespace testing_util
}  // namespace lowbit
