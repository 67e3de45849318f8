// Upcycling kernels: seeded Gaussian noise for expert copies and balanced
// k-means for splitting an FFN's neurons into experts. Both are
// deterministic: the same seed gives the same result on any thread count.
#ifndef LOWBIT_MOE_UPCYCLE_H_
#define LOWBIT_MOE_UPCYCLE_H_

#include <cstddef>
#include <cstdint>

namespace lowbit {

// x[i] += sigma * z_i, where z_i ~ N(0, 1) is a function of (seed, stream, i)
// only: SplitMix64 over the pair counter i / 2 gives two uniforms, and the
// Box-Muller transform gives z for the even (cosine) and odd (sine) element.
void AddGaussianNoise(float* x, size_t n, float sigma, uint64_t seed,
                      uint64_t stream);

// The standard normals AddGaussianNoise adds (sigma = 1), for tests.
void GaussianNoise(float* out, size_t n, uint64_t seed, uint64_t stream);

// Balanced spherical k-means on the rows of features [n, d] (each row is
// L2-normalised first): labels[i] in [0, k), exactly n / k rows per label.
// k must divide n. Assignment is greedy by regret (best minus second-best
// cosine), so rows with a clear favourite are placed first.
void BalancedKMeans(const float* features, size_t n, size_t d, size_t k,
                    size_t iters, uint64_t seed, int32_t* labels);

// Improves a balanced partition for top-k selection. energy [n, t] holds each
// of n neurons' output energy on t calibration tokens; a token selects the
// top_k clusters of largest total energy. Each round moves every neuron to
// the cluster whose selecting tokens carry most of its energy (balanced as
// in BalancedKMeans) until nothing moves or `iters` rounds have run. Starts
// from and writes `labels` (k clusters of n / k neurons).
void RefineForTopK(const float* energy, size_t n, size_t t, size_t k,
                   size_t top_k, size_t iters, int32_t* labels);

// SplitMix64 finaliser of x (Steele et al. 2014): a bijection on 64 bits.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Name of the SIMD target the kernels dispatch to now.
const char* UpcycleTarget();

}  // namespace lowbit

#endif  // LOWBIT_MOE_UPCYCLE_H_
