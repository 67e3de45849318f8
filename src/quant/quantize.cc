// Dispatch and threading for the quantize kernels: the row drivers in
// rows-inl.h (on stats-inl.h, the search_*-inl.h parameter searches and
// encode-inl.h) and the float casts in cast-inl.h.
#include "quant/quantize.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quant/quantize.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "quant/cast-inl.h"
#include "quant/gptq-inl.h"
#include "quant/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// The target this copy of the kernels was compiled for: tells tests which
// one dynamic dispatch picked.
int64_t KernelTarget() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>

#include "util/thread_pool.h"

namespace lowbit {

HWY_EXPORT(QuantizeRows);
HWY_EXPORT(DequantizeRows);
HWY_EXPORT(CastRange);
HWY_EXPORT(KernelTarget);
HWY_EXPORT(ErrorRows);
HWY_EXPORT(GptqRows);

namespace {

// Rows per task: about 64 Ki elements, so that tasks are large next to the
// pool's hand-off cost (microseconds) and small next to the matrix.
size_t RowGrain(size_t cols) {
  return std::max<size_t>(1, (size_t{1} << 16) / std::max<size_t>(1, cols));
}

// Outputs at least this large (bytes) are written with non-temporal stores:
// well past the last-level cache, they would only evict useful data.
constexpr size_t kStreamBytes = size_t{32} << 20;

}  // namespace

void QuantizeMatrix(const void* x, DType dtype, size_t rows, size_t cols,
                    const QuantParams& p, uint8_t* codes, void* scales,
                    void* zeros, ErrorSink* errors, const float* importance) {
  ThreadPool::Global().ParallelFor(
      rows, RowGrain(cols), [&](size_t begin, size_t end) {
        HWY_DYNAMIC_DISPATCH(QuantizeRows)(x, dtype, begin, end, cols, p,
                                           importance, codes, scales, zeros,
                                           errors);
      });
}

// GPTQ's rows per task: the rows of a tile share each read of a row of U
// (cols floats) in the updates past a block; 16 rows make those reads a
// sixteenth of the arithmetic's memory traffic.
constexpr size_t kGptqTileRows = 16;
// Columns per lazy batch (GPTQ's default block): a block's part of U (128 x
// 128 floats, 64 KiB) stays in cache while its columns are quantized.
constexpr size_t kGptqBlock = 128;

void GptqMatrix(float* w, const float* u, size_t rows, size_t cols,
                const QuantParams& p, uint8_t* codes, void* scales, void* zeros,
                ErrorSink* errors, const float* importance) {
  // Blocks hold whole groups, so a group's parameters are found on weights
  // that every earlier column's error has already reached.
  const size_t g = p.group_size == 0 ? cols : p.group_size;
  const size_t block = g < cols ? g * std::max<size_t>(1, kGptqBlock / g)
                                : kGptqBlock;
  ThreadPool::Global().ParallelFor(
      rows, kGptqTileRows, [&](size_t begin, size_t end) {
        HWY_DYNAMIC_DISPATCH(GptqRows)(w, u, begin, end, cols, p, importance,
                                       block, codes, scales, zeros, errors);
      });
}

void DequantizeMatrix(const uint8_t* codes, const void* scales,
                      const void* zeros, size_t rows, size_t cols,
                      const QuantParams& p, float* out) {
  QuantParams params = p;
  params.stream_output = rows * cols * sizeof(float) >= kStreamBytes;
  ThreadPool::Global().ParallelFor(
      rows, RowGrain(cols), [&](size_t begin, size_t end) {
        HWY_DYNAMIC_DISPATCH(DequantizeRows)(codes, scales, zeros, begin, end,
                                             cols, params, out);
      });
}

void ReconstructionError(const void* x, DType dtype, const uint8_t* codes,
                         const void* scales, const void* zeros, size_t rows,
                         size_t cols, const QuantParams& p, double* signal,
                         double* noise) {
  ThreadPool::Global().ParallelFor(
      rows, RowGrain(cols), [&](size_t begin, size_t end) {
        HWY_DYNAMIC_DISPATCH(ErrorRows)(x, dtype, codes, scales, zeros, begin,
                                        end, cols, p, signal, noise);
      });
}

void CastArray(const void* in, DType in_type, size_t n, void* out,
               DType out_type, ErrorSink* errors) {
  ThreadPool::Global().ParallelFor(
      n, size_t{1} << 18, [&](size_t begin, size_t end) {
        HWY_DYNAMIC_DISPATCH(CastRange)(in, in_type, begin, end, out, out_type,
                                        errors);
      });
}

std::string DispatchedTarget() {
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(KernelTarget)());
}

}  // namespace lowbit
#endif  // HWY_ONCE
