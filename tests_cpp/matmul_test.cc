// matmul/matmul.h on every SIMD target: products with stored weights of
// every format against a scalar double dot of the scalar-decoded weights,
// on both the GEMV (few tokens) and GEMM (many tokens) paths.
#include "matmul/matmul.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "quant/quantize.h"
#include "test_util.h"
#include "util/errors.h"
#include "util/thread_pool.h"

namespace lowbit {
// In testing_util's namespace: its helpers need no using-declarations.
namespace testing_util {
namespace {

// A weight matrix in one format, with the float32 values it stands for and,
// per element, the magnitude its product terms can reach (|w|, or for codes
// |scale| (|code| + |zero|): the zero point is applied through a separate
// sum). Rounding of a float32 dot is bounded relative to the sum of those.
struct Weight {
  std::string name;
  WeightView view;
  std::vector<uint8_t> data;
  Quantized q;
  std::vector<float> values;
  std::vector<float> magnitude;
};

// 37 rows: not a multiple of the 4-row GEMV tile nor of a GEMM panel. 160
// columns: a partial block at 1 and 2 bits, 5 groups of 32.
constexpr size_t kRows = 37;
constexpr size_t kCols = 160;

std::vector<Weight> Weights() {
  const std::vector<float> x = RandomFloats(kRows * kCols, 21, 0.05f);
  std::vector<Weight> out;
  for (const WeightFormat f :
       {WeightFormat::kF32, WeightFormat::kF16, WeightFormat::kBF16}) {
    Weight w;
    w.name = f == WeightFormat::kF32   ? "f32"
             : f == WeightFormat::kF16 ? "f16"
                                       : "bf16";
    w.values = x;
    if (f == WeightFormat::kF32) {
      w.data.resize(x.size() * 4);
      std::memcpy(w.data.data(), x.data(), w.data.size());
    } else {
      w.data.resize(x.size() * 2);
      for (size_t i = 0; i < x.size(); ++i) {
        const double v = f == WeightFormat::kF16 ? RoundToF16Ref(x[i])
                                                 : RoundToBF16Ref(x[i]);
        const uint16_t bits =
            f == WeightFormat::kF16 ? ExactF16Bits(v) : ExactBF16Bits(v);
        std::memcpy(w.data.data() + 2 * i, &bits, 2);
        w.values[i] = static_cast<float>(v);
      }
    }
    w.magnitude.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      w.magnitude[i] = std::fabs(w.values[i]);
    }
    out.push_back(std::move(w));
  }
  for (const auto& s : Schemes()) {
    for (const size_t group : {size_t{0}, size_t{32}}) {
      Weight w;
      w.name = std::string(s.name) + " group=" + std::to_string(group);
      const QuantParams p = ParamsOf(s, group, Method::kRtn);
      w.q = Allocate(kRows, kCols, p);
      ErrorSink errors;
      QuantizeMatrix(x.data(), DType::kF32, kRows, kCols, p,
                     w.q.codes.data(), w.q.scales_data(), w.q.zeros_data(),
                     &errors);
      EXPECT_EQ(errors.kind(), ErrorKind::kNone);
      w.values = DecodeRef(w.q);
      w.magnitude.resize(x.size());
      const size_t g = w.q.group_size();
      for (size_t r = 0; r < kRows; ++r) {
        for (size_t c = 0; c < kCols; ++c) {
          const float code =
              static_cast<float>(testing_util::StoredCode(w.q, r, c));
          w.magnitude[r * kCols + c] =
              std::fabs(w.q.scale(r, c / g)) *
              (std::fabs(code) + std::fabs(w.q.zero(r, c / g)));
        }
      }
      out.push_back(std::move(w));
    }
  }
  // The views point into the vectors' final storage.
  for (size_t i = 0; i < out.size(); ++i) {
    Weight& w = out[i];
    WeightView& v = w.view;
    v.rows = kRows;
    v.cols = kCols;
    if (i < 3) {
      v.format = static_cast<WeightFormat>(i);
      v.data = w.data.data();
    } else {
      v.format = WeightFormat::kQuantized;
      v.data = w.q.codes.data();
      v.scales = w.q.scales.data();
      v.zeros = w.q.p.asymmetric() ? w.q.zeros.data() : nullptr;
      v.params = w.q.p;
    }
  }
  return out;
}

class MatMulTest : public testing_util::PerTarget {};
LOWBIT_INSTANTIATE_PER_TARGET(MatMulTest);

// 1 and 3 tokens: GEMV; 20: GEMM for every format (past 16 and 8 tokens).
TEST_P(MatMulTest, MatchesScalarDotOfDecodedWeights) {
  for (const Weight& w : Weights()) {
    for (const size_t n : {size_t{1}, size_t{3}, size_t{20}}) {
      SCOPED_TRACE(w.name + " tokens=" + std::to_string(n));
      const std::vector<float> x = RandomFloats(n * kCols, 31 + n);
      std::vector<float> out(n * kRows);
      MatMul(w.view, x.data(), n, out.data());
      for (size_t t = 0; t < n; ++t) {
        for (size_t r = 0; r < kRows; ++r) {
          double dot = 0.0, mag = 0.0;
          for (size_t c = 0; c < kCols; ++c) {
            dot += static_cast<double>(x[t * kCols + c]) *
                   w.values[r * kCols + c];
            mag += std::fabs(x[t * kCols + c]) * w.magnitude[r * kCols + c];
          }
          // The worst-case rounding of a float32 sum of kCols terms:
          // kCols units of 2^-24 relative to the sum of magnitudes.
          ASSERT_NEAR(out[t * kRows + r], dot,
                      kCols * std::ldexp(1.0, -24) * mag + 1e-30)
              << "token " << t << " row " << r;
        }
      }
    }
  }
}

TEST_P(MatMulTest, ResultsDoNotDependOnTheThreadCount) {
  ThreadPool& pool = ThreadPool::Global();
  const size_t threads = pool.NumThreads();
  for (const Weight& w : Weights()) {
    for (const size_t n : {size_t{1}, size_t{20}}) {
      SCOPED_TRACE(w.name + " tokens=" + std::to_string(n));
      const std::vector<float> x = RandomFloats(n * kCols, 41);
      std::vector<float> one(n * kRows), many(n * kRows);
      pool.SetNumThreads(1);
      MatMul(w.view, x.data(), n, one.data());
      pool.SetNumThreads(pool.MaxThreads());
      MatMul(w.view, x.data(), n, many.data());
      for (size_t i = 0; i < one.size(); ++i) {
        ASSERT_TRUE(SameBits(one[i], many[i])) << "output " << i;
      }
    }
  }
  pool.SetNumThreads(threads);
}

TEST_P(MatMulTest, SharedEqualsSeparateProducts) {
  const std::vector<Weight> weights = Weights();
  std::vector<const WeightView*> views;
  for (const Weight& w : weights) views.push_back(&w.view);
  for (const size_t n : {size_t{2}, size_t{20}}) {
    const std::vector<float> x = RandomFloats(n * kCols, 51);
    std::vector<std::vector<float>> shared(views.size(),
                                           std::vector<float>(n * kRows));
    std::vector<float*> outs;
    for (auto& o : shared) outs.push_back(o.data());
    MatMulShared(views.data(), views.size(), x.data(), n, outs.data());
    for (size_t m = 0; m < views.size(); ++m) {
      std::vector<float> alone(n * kRows);
      MatMul(*views[m], x.data(), n, alone.data());
      for (size_t i = 0; i < alone.size(); ++i) {
        ASSERT_TRUE(SameBits(alone[i], shared[m][i]))
            << weights[m].name << " tokens=" << n << " output " << i;
      }
    }
  }
}

TEST_P(MatMulTest, WeightRowIsTheDecodedRow) {
  for (const Weight& w : Weights()) {
    SCOPED_TRACE(w.name);
    std::vector<float> row(kCols);
    for (const size_t r : {size_t{0}, size_t{17}, kRows - 1}) {
      WeightRow(w.view, r, row.data());
      for (size_t c = 0; c < kCols; ++c) {
        ASSERT_TRUE(SameBits(row[c], w.values[r * kCols + c]))
            << "row " << r << " col " << c;
      }
    }
  }
}

TEST_P(MatMulTest, SumFloatsMatchesADoubleSum) {
  // Past one 1 Mi chunk, with a ragged end.
  const std::vector<float> x = RandomFloats((size_t{1} << 20) + 1234, 61);
  double sum = 0.0, mag = 0.0;
  for (const float v : x) {
    sum += v;
    mag += std::fabs(v);
  }
  EXPECT_NEAR(SumFloats(x.data(), x.size()), sum, 1e-6 * mag);
}

}  // namespace
}  // namespace testing_util
}  // namespace lowbit
