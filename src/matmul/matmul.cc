// Dispatch and threading for the linear-layer kernels in matmul-inl.h.
#include "matmul/matmul.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "matmul/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "matmul/matmul-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cstring>
#include <vector>

#include "util/thread_pool.h"

namespace lowbit {

HWY_EXPORT(GemvRows);
HWY_EXPORT(GemmRows);
HWY_EXPORT(RowOf);
HWY_EXPORT(SumRange);

namespace {

// Up to this many tokens the weights are streamed once per 4 tokens and
// decoded in registers (GEMV); beyond, panels are decoded and transposed
// once for all tokens (GEMM). Measured crossovers (4096x4096 and 576-wide,
// AVX-512, 1 thread): about 16 tokens for codes, 8 for floats, whose GEMV
// reads 4 bytes per weight on every pass.
constexpr size_t kGemvMaxTokensQuantized = 16;
constexpr size_t kGemvMaxTokensFloat = 8;

// GEMM rows per task: a multiple of every target's panel (2 vectors of
// float32, at most 32 rows), small enough to balance two threads on the
// 576-row matrices of a small model.
constexpr size_t kGemmGrain = 32;

// Codes per block at 1 bit, the longest block: padding x to a multiple of it
// lets every format read whole blocks of x.
constexpr size_t kMaxBlockCodes = 128;

// GEMV rows per task: at least 128 Ki weights (about 10 us of work), a
// multiple of the 4-row tile. Pool threads spin briefly between loops, so
// handing them work costs about a microsecond while a forward pass runs.
size_t GemvGrain(size_t cols) {
  const size_t rows = (size_t{1} << 17) / std::max<size_t>(1, cols);
  return std::max<size_t>(4, (rows + 3) / 4 * 4);
}

void Gemv(const WeightView& w, const float* x, size_t n, float* out) {
  const size_t cols = w.cols;
  const size_t xstride = (cols + kMaxBlockCodes - 1) / kMaxBlockCodes *
                         kMaxBlockCodes;
  std::vector<float> xpad(n * xstride, 0.0f);
  for (size_t t = 0; t < n; ++t) {
    std::memcpy(xpad.data() + t * xstride, x + t * cols, cols * sizeof(float));
  }
  // Group sums of x for the zero-point correction, summed in double so that
  // they are the float32 rounding of the exact sums.
  std::vector<float> xsum;
  if (w.format == WeightFormat::kQuantized) {
    const size_t groups = GroupsPerRow(cols, w.params.group_size);
    const size_t g = cols / groups;
    xsum.resize(n * groups);
    for (size_t t = 0; t < n; ++t) {
      for (size_t gi = 0; gi < groups; ++gi) {
        const float* xs = x + t * cols + gi * g;
        double s = 0.0;
        for (size_t c = 0; c < g; ++c) s += xs[c];
        xsum[t * groups + gi] = static_cast<float>(s);
      }
    }
  }
  ThreadPool::Global().ParallelFor(
      w.rows, GemvGrain(cols), [&](size_t r0, size_t r1) {
        HWY_DYNAMIC_DISPATCH(GemvRows)(w, xpad.data(), xstride, xsum.data(), n,
                                       r0, r1, out);
      });
}

}  // namespace

void MatMul(const WeightView& w, const float* x, size_t n, float* out) {
  if (n == 0 || w.rows == 0) return;
  const size_t gemv_max = w.format == WeightFormat::kQuantized
                              ? kGemvMaxTokensQuantized
                              : kGemvMaxTokensFloat;
  if (n <= gemv_max) {
    Gemv(w, x, n, out);
    return;
  }
  ThreadPool::Global().ParallelFor(
      w.rows, kGemmGrain, [&](size_t r0, size_t r1) {
        HWY_DYNAMIC_DISPATCH(GemmRows)(w, x, n, r0, r1, out);
      });
}

void WeightRow(const WeightView& w, size_t r, float* out) {
  HWY_DYNAMIC_DISPATCH(RowOf)(w, r, out);
}

double SumFloats(const float* x, size_t n) {
  // Fixed chunks, partial sums added in chunk order: the same result for any
  // thread count. 1 Mi floats (4 MiB) per chunk.
  constexpr size_t kChunk = size_t{1} << 20;
  std::vector<float> part((n + kChunk - 1) / kChunk);
  ThreadPool::Global().ParallelFor(n, kChunk, [&](size_t b, size_t e) {
    part[b / kChunk] = HWY_DYNAMIC_DISPATCH(SumRange)(x, b, e);
  });
  double sum = 0.0;
  for (float p : part) sum += p;
  return sum;
}

}  // namespace lowbit
#endif  // HWY_ONCE
