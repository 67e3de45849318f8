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
#include <utility>
#include <vector>

#include "util/checked.h"
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

// GEMV rows per task: at least 32 Ki weights (32 KiB of int8 codes, about
// 1.5 us from DRAM) and a multiple of the 4-row tile, in a number of tasks
// that is a multiple of the thread count when there are several per thread,
// so that two threads end together. Pool threads spin briefly between loops,
// so handing them work costs about a microsecond while a forward pass runs.
size_t GemvGrain(size_t rows, size_t cols, size_t threads) {
  const size_t min_rows = std::max<size_t>(
      4, ((size_t{1} << 15) / std::max<size_t>(1, cols) + 3) / 4 * 4);
  size_t tasks = std::max<size_t>(1, rows / min_rows);
  if (tasks > threads) tasks = tasks / threads * threads;
  const size_t grain = (rows + tasks - 1) / tasks;
  return (grain + 3) / 4 * 4;
}

// Group sums of x [n][cols] for w's zero-point correction into xsum
// [n][groups], summed in double so that they are the float32 rounding of the
// exact sums.
void GroupSums(const WeightView& w, const float* x, size_t n,
               std::vector<float>* xsum) {
  const size_t cols = w.cols;
  const size_t groups = GroupsPerRow(cols, w.params.group_size);
  const size_t g = cols / groups;
  xsum->resize(CheckedMul(n, groups, "matmul workspace"));
  for (size_t t = 0; t < n; ++t) {
    for (size_t gi = 0; gi < groups; ++gi) {
      const float* xs = x + t * cols + gi * g;
      double s = 0.0;
      for (size_t c = 0; c < g; ++c) s += xs[c];
      (*xsum)[t * groups + gi] = static_cast<float>(s);
    }
  }
}

// GEMV of `count` matrices with the same columns on the same x, in one
// parallel loop: the tasks of all matrices are handed out together, so that
// small matrices (a layer's k and v) need no barrier of their own.
void GemvMany(const WeightView* const* ws, size_t count, const float* x,
              size_t n, float* const* outs) {
  const size_t cols = ws[0]->cols;
  const size_t xstride = (cols + kMaxBlockCodes - 1) / kMaxBlockCodes *
                         kMaxBlockCodes;
  // Per-thread buffers: a decoded token makes about 200 calls.
  thread_local std::vector<float> xpad;
  thread_local std::vector<std::vector<float>> xsum;
  // (matrix, first row) of each task, then an end marker per matrix.
  thread_local std::vector<std::pair<size_t, size_t>> tasks;
  xpad.assign(CheckedMul(n, xstride, "matmul workspace"), 0.0f);
  for (size_t t = 0; t < n; ++t) {
    std::memcpy(xpad.data() + t * xstride, x + t * cols, cols * sizeof(float));
  }
  if (xsum.size() < count) xsum.resize(count);
  ThreadPool& pool = ThreadPool::Global();
  const size_t threads = pool.NumThreads();
  tasks.clear();
  for (size_t m = 0; m < count; ++m) {
    const WeightView& w = *ws[m];
    if (w.format == WeightFormat::kQuantized) GroupSums(w, x, n, &xsum[m]);
    // One matrix alone: tasks in a multiple of the thread count. Several:
    // the dynamic hand-out balances them (1: no rounding).
    const size_t grain = GemvGrain(w.rows, cols, count == 1 ? threads : 1);
    for (size_t r = 0; r < w.rows; r += grain) tasks.emplace_back(m, r);
  }
  // The pool's threads have thread_local buffers of their own: hand them
  // this thread's by pointer.
  const std::vector<std::pair<size_t, size_t>>* task_list = &tasks;
  const float* xp = xpad.data();
  const std::vector<float>* sums = xsum.data();
  pool.ParallelFor(task_list->size(), 1, [&](size_t begin, size_t end) {
    const auto& list = *task_list;
    for (size_t i = begin; i < end; ++i) {
      const size_t m = list[i].first;
      const WeightView& w = *ws[m];
      const size_t r0 = list[i].second;
      const size_t r1 = i + 1 < list.size() && list[i + 1].first == m
                            ? list[i + 1].second
                            : w.rows;
      HWY_DYNAMIC_DISPATCH(GemvRows)(w, xp, xstride, sums[m].data(), n, r0,
                                     r1, outs[m]);
    }
  });
}

bool UseGemv(const WeightView& w, size_t n) {
  const size_t gemv_max = w.format == WeightFormat::kQuantized
                              ? kGemvMaxTokensQuantized
                              : kGemvMaxTokensFloat;
  return n <= gemv_max;
}

}  // namespace

void MatMul(const WeightView& w, const float* x, size_t n, float* out) {
  if (n == 0 || w.rows == 0) return;
  if (UseGemv(w, n)) {
    const WeightView* ws[1] = {&w};
    float* outs[1] = {out};
    GemvMany(ws, 1, x, n, outs);
    return;
  }
  ThreadPool::Global().ParallelFor(
      w.rows, kGemmGrain, [&](size_t r0, size_t r1) {
        HWY_DYNAMIC_DISPATCH(GemmRows)(w, x, n, r0, r1, out);
      });
}

void MatMulShared(const WeightView* const* ws, size_t count, const float* x,
                  size_t n, float* const* outs) {
  if (n == 0 || count == 0) return;
  for (size_t m = 0; m < count; ++m) {
    if (ws[m]->rows == 0 || ws[m]->cols != ws[0]->cols || !UseGemv(*ws[m], n)) {
      // Prefill (or unusual shapes): one loop per matrix.
      for (size_t i = 0; i < count; ++i) MatMul(*ws[i], x, n, outs[i]);
      return;
    }
  }
  GemvMany(ws, count, x, n, outs);
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
