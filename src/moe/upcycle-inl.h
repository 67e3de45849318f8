// SIMD bodies of the upcycling kernels, compiled once per Highway target by
// upcycle.cc.

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_MOE_UPCYCLE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_MOE_UPCYCLE_INL_H_
#undef LOWBIT_MOE_UPCYCLE_INL_H_
#else
#define LOWBIT_MOE_UPCYCLE_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "moe/upcycle.h"
#include "util/dot-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

// Pairs per block: the uniforms of one block live on the stack (2 KiB).
constexpr size_t kNoisePairs = 256;

// The two uniforms of pair p: u1 in (0, 1) (never 0, the log's argument),
// u2 in [0, 1); 24 bits each, the float32 mantissa.
HWY_INLINE void Uniforms(uint64_t key, uint64_t p, float* u1, float* u2) {
  const uint64_t bits = SplitMix64(key + p);
  constexpr float kInv24 = 1.0f / 16777216.0f;
  *u1 = (static_cast<float>(bits >> 40) + 0.5f) * kInv24;
  *u2 = static_cast<float>((bits >> 16) & 0xFFFFFF) * kInv24;
}

// Standard normals of pairs [p0, p1) into c (cosine branch) and s (sine).
HWY_INLINE void NormalPairs(uint64_t key, uint64_t p0, uint64_t p1, float* c,
                            float* s) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t m = static_cast<size_t>(p1 - p0);
  HWY_ALIGN float u1[kNoisePairs];
  HWY_ALIGN float u2[kNoisePairs];
  for (size_t j = 0; j < m; ++j) Uniforms(key, p0 + j, &u1[j], &u2[j]);
  // Pad the tail so that whole vectors can be processed.
  for (size_t j = m; j < (m + N - 1) / N * N; ++j) {
    u1[j] = 0.5f;
    u2[j] = 0.0f;
  }
  const auto two_pi = hn::Set(d, 6.283185307179586f);
  const auto minus_two = hn::Set(d, -2.0f);
  for (size_t j = 0; j < m; j += N) {
    const auto r =
        hn::Sqrt(hn::Mul(minus_two, hn::Log(d, hn::Load(d, u1 + j))));
    // Sin/Cos of Highway's contrib are accurate on [-39000, 39000]; the
    // angle is in [0, 2 pi).
    const auto a = hn::Mul(two_pi, hn::Load(d, u2 + j));
    hn::Store(hn::Mul(r, hn::Cos(d, a)), d, c + j);
    hn::Store(hn::Mul(r, hn::Sin(d, a)), d, s + j);
  }
}

// Noise for elements [begin, end) of x (begin even): x += sigma * z, or
// x = z when `replace`.
void NoiseRange(float* x, size_t begin, size_t end, float sigma,
                uint64_t key, bool replace) {
  HWY_ALIGN float c[kNoisePairs];
  HWY_ALIGN float s[kNoisePairs];
  for (size_t i = begin; i < end; i += 2 * kNoisePairs) {
    const size_t stop = std::min(end, i + 2 * kNoisePairs);
    const uint64_t p0 = i / 2;
    const uint64_t p1 = (stop + 1) / 2;
    NormalPairs(key, p0, p1, c, s);
    for (size_t k = i; k < stop; ++k) {
      const size_t j = k / 2 - p0;
      const float z = (k & 1) ? s[j] : c[j];
      x[k] = replace ? z : x[k] + sigma * z;
    }
  }
}

// sims[i * k + c] = <rows[i], centroids[c]> for rows [begin, end). The
// clusterings compare these, so they are the same on every target and thread
// count (see DotReproducible): a float32 Dot made the same model split
// differently on AVX2 and AVX-512 machines.
void SimilarityRows(const float* rows, const float* centroids, size_t begin,
                    size_t end, size_t d, size_t k, float* sims) {
  for (size_t i = begin; i < end; ++i) {
    for (size_t c = 0; c < k; ++c) {
      sims[i * k + c] = DotReproducible(rows + i * d, centroids + c * d, d);
    }
  }
}

int Target() { return HWY_TARGET; }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
