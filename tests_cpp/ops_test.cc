// ops/ops.h and moe/upcycle.h on every SIMD target against their formulas
// evaluated in double: RMSNorm, gated activations, softmax, soft-capping,
// rotary embeddings, the KV cache and attention, seeded noise and balanced
// k-means.
#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moe/upcycle.h"
#include "test_util.h"
#include "util/targets.h"

namespace lowbit {
// In testing_util's namespace: its helpers need no using-declarations.
namespace testing_util {
namespace {

// Lengths around every vector width: a lone element, tails, long rows.
const size_t kLengths[] = {1, 3, 8, 17, 100, 1027};

// |got - want| within rel * |want| + abs, element by element.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want,
                 double rel, double abs) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], rel * std::fabs(want[i]) + abs)
        << "element " << i << " of " << got.size();
  }
}

class OpsTest : public testing_util::PerTarget {};
LOWBIT_INSTANTIATE_PER_TARGET(OpsTest);

TEST_P(OpsTest, RmsNormMatchesItsFormula) {
  for (const size_t dim : kLengths) {
    SCOPED_TRACE("dim=" + std::to_string(dim));
    const size_t rows = 3;
    std::vector<float> x = RandomFloats(rows * dim, 1, 2.0f);
    const std::vector<float> w = RandomFloats(dim, 2);
    const float eps = 1e-6f;
    std::vector<double> want(rows * dim);
    for (size_t r = 0; r < rows; ++r) {
      double ss = 0.0;
      for (size_t i = 0; i < dim; ++i) {
        ss += double{x[r * dim + i]} * x[r * dim + i];
      }
      const double inv = 1.0 / std::sqrt(ss / dim + eps);
      for (size_t i = 0; i < dim; ++i) {
        want[r * dim + i] = x[r * dim + i] * inv * w[i];
      }
    }
    std::vector<float> out(rows * dim);
    RmsNorm(x.data(), w.data(), rows, dim, eps, out.data());
    // A float32 sum of squares, a square root and two products.
    ExpectClose(out, want, 2e-6, 1e-7);
    // In place (out == x) gives the same values.
    RmsNorm(x.data(), w.data(), rows, dim, eps, x.data());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(SameBits(x[i], out[i]));
  }
}

TEST_P(OpsTest, GatedActivationsMatchTheirFormulas) {
  for (const size_t n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> gate = RandomFloats(n, 3, 4.0f);
    if (n > 2) {
      gate[0] = -90.0f;  // exp(90) overflows float32: silu must give -0
      gate[1] = 40.0f;
    }
    const std::vector<float> up = RandomFloats(n, 4);
    std::vector<double> silu(n), gelu(n);
    for (size_t i = 0; i < n; ++i) {
      const double g = gate[i];
      silu[i] = g / (1.0 + std::exp(-g)) * up[i];
      const double inner = std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g);
      gelu[i] = 0.5 * g * (1.0 + std::tanh(inner)) * up[i];
    }
    std::vector<float> out(n);
    // Highway's Exp and Tanh are within a few ulp of the exact values.
    GatedActivation(Activation::kSilu, gate.data(), up.data(), n, out.data());
    ExpectClose(out, silu, 1e-5, 1e-7);
    GatedActivation(Activation::kGeluTanh, gate.data(), up.data(), n,
                    out.data());
    // For negative g, 1 + tanh cancels in float32 (as in HF's float32
    // GELU): tanh's error of a few ulp near -1 (2^-24 each) remains,
    // times 0.5 |g up|.
    for (size_t i = 0; i < n; ++i) {
      const double cancellation =
          4 * std::ldexp(1.0, -24) * 0.5 * std::fabs(gate[i] * up[i]);
      const double bound = 1e-5 * std::fabs(gelu[i]) + cancellation + 1e-7;
      ASSERT_NEAR(out[i], gelu[i], bound) << "element " << i;
    }
  }
}

TEST_P(OpsTest, SoftmaxMatchesItsFormula) {
  for (const size_t n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> x = RandomFloats(n, 5, 5.0f);
    const double mx = *std::max_element(x.begin(), x.end());
    std::vector<double> want(n);
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) sum += want[i] = std::exp(x[i] - mx);
    for (double& v : want) v /= sum;
    Softmax(x.data(), n);
    ExpectClose(x, want, 1e-5, 1e-9);
  }
}

TEST_P(OpsTest, SoftCapMatchesItsFormula) {
  std::vector<float> y = RandomFloats(1027, 6, 60.0f);
  std::vector<double> want(y.size());
  for (size_t i = 0; i < y.size(); ++i) {
    want[i] = std::tanh(y[i] / 30.0) * 30.0;
  }
  SoftCap(y.data(), y.size(), 30.0f);
  ExpectClose(y, want, 1e-6, 1e-6);
}

// Scalar code, the same on every target: one run.
TEST(RopeTest, RotatesHalvesLikeHuggingFace) {
  const size_t heads = 3, head_dim = 12, half = head_dim / 2;
  std::vector<float> x = RandomFloats(heads * head_dim, 7);
  std::vector<float> inv_freq(half);
  for (size_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / head_dim));
  }
  const double position = 37;
  const float scaling = 1.25f;
  std::vector<double> want(x.size());
  for (size_t h = 0; h < heads; ++h) {
    for (size_t i = 0; i < half; ++i) {
      // The angle is a float32 product, as in HF.
      const double angle = static_cast<float>(position) * inv_freq[i];
      const double c = std::cos(angle) * scaling, s = std::sin(angle) * scaling;
      const double a = x[h * head_dim + i], b = x[h * head_dim + i + half];
      want[h * head_dim + i] = a * c - b * s;
      want[h * head_dim + i + half] = b * c + a * s;
    }
  }
  ApplyRope(x.data(), heads, head_dim, inv_freq.data(), position, scaling);
  ExpectClose(x, want, 1e-6, 1e-6);
}

// A KV cache of one layer in float32 or int8.
struct Cache {
  size_t kv_heads, context, head_dim;
  std::vector<float> k, v, k_scale, v_scale;
  std::vector<int8_t> k8, v8;
  KvLayerView view;

  Cache(size_t kv_heads_arg, size_t context_arg, size_t head_dim_arg,
        bool int8)
      : kv_heads(kv_heads_arg), context(context_arg), head_dim(head_dim_arg) {
    const size_t n = kv_heads * context * head_dim;
    view.context = context;
    view.head_dim = head_dim;
    if (int8) {
      k8.resize(n);
      v8.resize(n);
      k_scale.resize(kv_heads * context);
      v_scale.resize(kv_heads * context);
      view.k8 = k8.data();
      view.v8 = v8.data();
      view.k_scale = k_scale.data();
      view.v_scale = v_scale.data();
    } else {
      k.resize(n);
      v.resize(n);
      view.k = k.data();
      view.v = v.data();
    }
  }

  // What the cache holds for (kv head, position): the stored float32, or
  // the int8 codes times their scale.
  double Key(size_t h, size_t p, size_t i) const {
    const size_t slot = h * context + p;
    return view.int8() ? k8[slot * head_dim + i] * double{k_scale[slot]}
                       : k[slot * head_dim + i];
  }
  double Value(size_t h, size_t p, size_t i) const {
    const size_t slot = h * context + p;
    return view.int8() ? v8[slot * head_dim + i] * double{v_scale[slot]}
                       : v[slot * head_dim + i];
  }
};

// StoreKv's int8 form: scale = max|x| / 127, codes rounded half to even.
TEST(KvCacheTest, StoresInt8CodesOfTheMaxScale) {
  const size_t kv_heads = 2, head_dim = 20;
  Cache cache(kv_heads, 4, head_dim, true);
  const std::vector<float> k = RandomFloats(kv_heads * head_dim, 8);
  const std::vector<float> v = RandomFloats(kv_heads * head_dim, 9);
  StoreKv(cache.view, kv_heads, 2, k.data(), v.data());
  for (size_t h = 0; h < kv_heads; ++h) {
    float amax = 0.0f;
    for (size_t i = 0; i < head_dim; ++i) {
      amax = std::max(amax, std::fabs(k[h * head_dim + i]));
    }
    const size_t slot = h * cache.context + 2;
    const float scale = amax / 127.0f;
    EXPECT_EQ(cache.k_scale[slot], scale);
    for (size_t i = 0; i < head_dim; ++i) {
      EXPECT_EQ(cache.k8[slot * head_dim + i],
                std::nearbyint(k[h * head_dim + i] * (1.0f / scale)));
    }
  }
}

struct AttentionCase {
  bool int8;
  size_t window;
  float softcap;
};

TEST_P(OpsTest, AttentionMatchesScaledDotProductAttention) {
  // Grouped-query: 4 heads read 2 kv heads. head_dim 20: vector tails.
  const size_t heads = 4, kv_heads = 2, head_dim = 20, context = 16;
  const size_t tokens = 3, first = 5;
  for (const AttentionCase& ac :
       {AttentionCase{false, 0, 0.0f}, AttentionCase{false, 4, 0.0f},
        AttentionCase{true, 0, 0.0f}, AttentionCase{false, 0, 2.0f},
        AttentionCase{true, 3, 2.0f}}) {
    SCOPED_TRACE(std::string(ac.int8 ? "int8" : "f32") +
                 " window=" + std::to_string(ac.window) +
                 " softcap=" + std::to_string(ac.softcap));
    Cache cache(kv_heads, context, head_dim, ac.int8);
    for (size_t p = 0; p < first + tokens; ++p) {
      const std::vector<float> k = RandomFloats(kv_heads * head_dim, 100 + p);
      const std::vector<float> v = RandomFloats(kv_heads * head_dim, 200 + p);
      StoreKv(cache.view, kv_heads, p, k.data(), v.data());
    }
    const std::vector<float> q = RandomFloats(tokens * heads * head_dim, 10);
    std::vector<float> out(q.size());
    AttentionArgs a;
    a.q = q.data();
    a.out = out.data();
    a.kv = cache.view;
    a.tokens = tokens;
    a.heads = heads;
    a.kv_heads = kv_heads;
    a.first_position = first;
    a.window = ac.window;
    a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    a.softcap = ac.softcap;
    Attention(a);

    std::vector<double> want(q.size());
    for (size_t t = 0; t < tokens; ++t) {
      for (size_t h = 0; h < heads; ++h) {
        const size_t kvh = h / (heads / kv_heads);
        const size_t pos = first + t;
        const size_t lo =
            ac.window != 0 && pos + 1 > ac.window ? pos + 1 - ac.window : 0;
        const float* qv = q.data() + (t * heads + h) * head_dim;
        std::vector<double> w;
        for (size_t p = lo; p <= pos; ++p) {
          double s = 0.0;
          for (size_t i = 0; i < head_dim; ++i) {
            s += qv[i] * cache.Key(kvh, p, i);
          }
          s *= a.scale;
          if (ac.softcap != 0.0f) s = std::tanh(s / ac.softcap) * ac.softcap;
          w.push_back(s);
        }
        const double mx = *std::max_element(w.begin(), w.end());
        double sum = 0.0;
        for (double& s : w) sum += s = std::exp(s - mx);
        for (size_t i = 0; i < head_dim; ++i) {
          double acc = 0.0;
          for (size_t p = lo; p <= pos; ++p) {
            acc += w[p - lo] / sum * cache.Value(kvh, p, i);
          }
          want[(t * heads + h) * head_dim + i] = acc;
        }
      }
    }
    // Values are O(1): float32 dots, exp and weighted sums of a few terms.
    ExpectClose(out, want, 1e-5, 1e-5);
  }
}

// ---------------------------------------------------------------- upcycle

// The normals of moe/upcycle.h: SplitMix64 counters give two float32
// uniforms (as the kernels define them), Box-Muller then runs in double.
std::vector<double> NoiseRef(size_t n, uint64_t seed, uint64_t stream) {
  const uint64_t key = SplitMix64(SplitMix64(seed) ^ stream);
  std::vector<double> z(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t bits = SplitMix64(key + i / 2);
    constexpr float kInv24 = 1.0f / 16777216.0f;
    const float u1 = (static_cast<float>(bits >> 40) + 0.5f) * kInv24;
    const float u2 = static_cast<float>((bits >> 16) & 0xFFFFFF) * kInv24;
    const double r = std::sqrt(-2.0 * std::log(double{u1}));
    // The angle is a float32 product in the kernels too.
    const double angle = 6.283185307179586f * u2;
    z[i] = (i & 1) ? r * std::sin(angle) : r * std::cos(angle);
  }
  return z;
}

TEST_P(OpsTest, GaussianNoiseIsBoxMullerOfCounters) {
  // Odd, and past one 64 Ki task.
  const size_t n = (size_t{1} << 16) + 1001;
  std::vector<float> z(n);
  GaussianNoise(z.data(), n, 1234, 7);
  // Highway's Log, Sin and Cos: a few ulp on values up to ~5.6 (24-bit u1).
  ExpectClose(z, NoiseRef(n, 1234, 7), 1e-5, 2e-6);
  std::vector<float> x = RandomFloats(n, 12);
  std::vector<float> noisy = x;
  AddGaussianNoise(noisy.data(), n, 0.5f, 1234, 7);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(SameBits(noisy[i], x[i] + 0.5f * z[i])) << "element " << i;
  }
}

// Balanced on every target, and the same labels on every target: the
// clusterings decide how a model is split (see SimilarityRows).
TEST(UpcycleTest, BalancedKMeansIsBalancedAndTheSameOnEveryTarget) {
  const size_t n = 48, d = 24, k = 4;
  const std::vector<float> features = RandomFloats(n * d, 13);
  std::vector<std::vector<int32_t>> per_target;
  for (const std::string& target : AvailableTargets()) {
    ForceTarget(target);
    std::vector<int32_t> labels(n, -1);
    BalancedKMeans(features.data(), n, d, k, 10, 99, labels.data());
    std::vector<size_t> count(k);
    for (const int32_t l : labels) {
      ASSERT_GE(l, 0);
      ASSERT_LT(l, static_cast<int32_t>(k));
      ++count[l];
    }
    for (const size_t c : count) EXPECT_EQ(c, n / k) << target;
    std::vector<float> energy = RandomFloats(n * 16, 14);
    for (float& e : energy) e = e * e;
    RefineForTopK(energy.data(), n, 16, k, 2, 5, labels.data());
    std::fill(count.begin(), count.end(), 0);
    for (const int32_t l : labels) ++count[l];
    for (const size_t c : count) EXPECT_EQ(c, n / k) << target;
    per_target.push_back(labels);
  }
  ForceTarget("");
  for (size_t i = 1; i < per_target.size(); ++i) {
    EXPECT_EQ(per_target[i], per_target[0]) << AvailableTargets()[i];
  }
}

}  // namespace
}  // namespace testing_util
}  // namespace lowbit
