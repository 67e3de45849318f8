// Dispatch and threading for the kernels in upcycle-inl.h.
#include "moe/upcycle.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "moe/upcycle.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "moe/upcycle-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "hwy/targets.h"
#include "util/thread_pool.h"

namespace lowbit {

HWY_EXPORT(NoiseRange);
HWY_EXPORT(SimilarityRows);
HWY_EXPORT(Target);

namespace {

// Elements per noise task: 64 Ki (even, so tasks start on a pair), large
// next to the pool's hand-off cost of microseconds.
constexpr size_t kNoiseGrain = size_t{1} << 16;

// The counter key of one (seed, stream): streams (one per tensor and
// expert) get unrelated sequences.
uint64_t NoiseKey(uint64_t seed, uint64_t stream) {
  return SplitMix64(SplitMix64(seed) ^ stream);
}

void Noise(float* x, size_t n, float sigma, uint64_t seed, uint64_t stream,
           bool replace) {
  const uint64_t key = NoiseKey(seed, stream);
  const size_t tasks = (n + kNoiseGrain - 1) / kNoiseGrain;
  ThreadPool::Global().ParallelFor(tasks, 1, [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      HWY_DYNAMIC_DISPATCH(NoiseRange)(x, t * kNoiseGrain,
                                       std::min(n, (t + 1) * kNoiseGrain),
                                       sigma, key, replace);
    }
  });
}

void Normalize(float* row, size_t d) {
  double ss = 0.0;
  for (size_t j = 0; j < d; ++j) ss += double{row[j]} * row[j];
  // An all-zero row (a neuron that never fired) stays zero: it has no
  // preference and is placed last, wherever room is left.
  if (ss > 0.0) {
    const float inv = static_cast<float>(1.0 / std::sqrt(ss));
    for (size_t j = 0; j < d; ++j) row[j] *= inv;
  }
}

void Similarities(const float* rows, const float* centroids, size_t n,
                  size_t d, size_t k, std::vector<float>* sims) {
  // Rows per task: about 1 Mi multiply-adds.
  const size_t grain = std::max<size_t>(1, (size_t{1} << 20) / (d * k + 1));
  ThreadPool::Global().ParallelFor(n, grain, [&](size_t begin, size_t end) {
    HWY_DYNAMIC_DISPATCH(SimilarityRows)(rows, centroids, begin, end, d, k,
                                         sims->data());
  });
}

// Greedy capacity-constrained assignment: rows in order of regret (how much
// they lose if not given their favourite), each to its most similar cluster
// that still has room. Ties are broken by index, so the result is
// deterministic.
void Assign(const std::vector<float>& sims, size_t n, size_t k,
            int32_t* labels) {
  std::vector<float> regret(n);
  for (size_t i = 0; i < n; ++i) {
    float best = -INFINITY, second = -INFINITY;
    for (size_t c = 0; c < k; ++c) {
      const float s = sims[i * k + c];
      if (s > best) {
        second = best;
        best = s;
      } else if (s > second) {
        second = s;
      }
    }
    regret[i] = k > 1 ? best - second : 0.0f;
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return regret[a] > regret[b]; });
  std::vector<size_t> room(k, n / k);
  for (size_t i : order) {
    int32_t pick = -1;
    for (size_t c = 0; c < k; ++c) {
      if (room[c] == 0) continue;
      if (pick < 0 || sims[i * k + c] > sims[i * k + pick]) {
        pick = static_cast<int32_t>(c);
      }
    }
    labels[i] = pick;
    --room[pick];
  }
}

}  // namespace

void AddGaussianNoise(float* x, size_t n, float sigma, uint64_t seed,
                      uint64_t stream) {
  Noise(x, n, sigma, seed, stream, false);
}

void GaussianNoise(float* out, size_t n, uint64_t seed, uint64_t stream) {
  Noise(out, n, 1.0f, seed, stream, true);
}

void BalancedKMeans(const float* features, size_t n, size_t d, size_t k,
                    size_t iters, uint64_t seed, int32_t* labels) {
  if (k == 0 || n % k != 0) {
    throw std::invalid_argument("k must divide the number of rows");
  }
  std::vector<float> rows(features, features + n * d);
  for (size_t i = 0; i < n; ++i) Normalize(rows.data() + i * d, d);
  // Initial centroids by farthest-point traversal from a seeded first row:
  // each next centroid is the row least similar to all chosen ones.
  std::vector<float> centroids(k * d);
  std::vector<float> closest(n, -INFINITY);
  size_t pick = SplitMix64(seed) % n;
  for (size_t c = 0; c < k; ++c) {
    std::copy_n(rows.data() + pick * d, d, centroids.data() + c * d);
    std::vector<float> sims(n);
    ThreadPool::Global().ParallelFor(n, 256, [&](size_t b, size_t e) {
      HWY_DYNAMIC_DISPATCH(SimilarityRows)(rows.data(),
                                           centroids.data() + c * d, b, e, d,
                                           1, sims.data());
    });
    size_t next = 0;
    for (size_t i = 0; i < n; ++i) {
      closest[i] = std::max(closest[i], sims[i]);
      if (closest[i] < closest[next]) next = i;
    }
    pick = next;
  }
  std::vector<float> sims(n * k);
  std::vector<int32_t> previous(n, -1);
  for (size_t it = 0; it < std::max<size_t>(iters, 1); ++it) {
    Similarities(rows.data(), centroids.data(), n, d, k, &sims);
    Assign(sims, n, k, labels);
    if (std::equal(labels, labels + n, previous.begin())) break;
    std::copy_n(labels, n, previous.begin());
    std::fill(centroids.begin(), centroids.end(), 0.0f);
    for (size_t i = 0; i < n; ++i) {
      float* dst = centroids.data() + labels[i] * d;
      const float* src = rows.data() + i * d;
      for (size_t j = 0; j < d; ++j) dst[j] += src[j];
    }
    for (size_t c = 0; c < k; ++c) Normalize(centroids.data() + c * d, d);
  }
}

void RefineForTopK(const float* energy, size_t n, size_t t, size_t k,
                   size_t top_k, size_t iters, int32_t* labels) {
  if (k == 0 || n % k != 0 || top_k == 0 || top_k > k) {
    throw std::invalid_argument("bad cluster or top-k count");
  }
  // selected[e * t + token] is 1 where cluster e is among the token's top_k.
  std::vector<float> selected(k * t);
  std::vector<float> sims(n * k);
  std::vector<int32_t> previous(labels, labels + n);
  // Tokens per task: a slice of every neuron's row, read contiguously.
  constexpr size_t kTokenGrain = 512;
  for (size_t it = 0; it < iters; ++it) {
    std::fill(selected.begin(), selected.end(), 0.0f);
    ThreadPool::Global().ParallelFor(t, kTokenGrain, [&](size_t b, size_t e) {
      // cluster[c * len + i]: cluster c's energy on token b + i.
      const size_t len = e - b;
      std::vector<float> cluster(k * len, 0.0f);
      for (size_t j = 0; j < n; ++j) {
        float* dst = cluster.data() + labels[j] * len;
        const float* src = energy + j * t + b;
        for (size_t i = 0; i < len; ++i) dst[i] += src[i];
      }
      std::vector<size_t> order(k);
      for (size_t i = 0; i < len; ++i) {
        std::iota(order.begin(), order.end(), size_t{0});
        // Ties to the lower index, as torch.topk picks equal logits.
        std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
          return cluster[x * len + i] > cluster[y * len + i];
        });
        for (size_t r = 0; r < top_k; ++r) {
          selected[order[r] * t + b + i] = 1.0f;
        }
      }
    });
    // sims[j, e]: neuron j's energy on the tokens that select cluster e.
    Similarities(energy, selected.data(), n, t, k, &sims);
    Assign(sims, n, k, labels);
    if (std::equal(labels, labels + n, previous.begin())) break;
    std::copy_n(labels, n, previous.begin());
  }
}

const char* UpcycleTarget() {
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(Target)());
}

}  // namespace lowbit
#endif  // HWY_ONCE
