// Linear layers on stored weights: y = x W^T for a weight matrix in any of
// lowbit's stored formats (float32, float16, bfloat16, or quantized codes),
// without ever materialising W in float32.
#ifndef LOWBIT_MATMUL_MATMUL_H_
#define LOWBIT_MATMUL_MATMUL_H_

#include <cstddef>
#include <cstdint>

#include "quant/quant_params.h"

namespace lowbit {

enum class WeightFormat : int32_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kQuantized = 3,
};

// A weight matrix [rows, cols] in HuggingFace's Linear layout, in memory that
// the caller keeps alive (usually a memory-mapped safetensors file).
struct WeightView {
  WeightFormat format = WeightFormat::kF32;
  // Floats [rows, cols], or packed codes [rows, RowBytes(cols, bits)].
  const void* data = nullptr;
  // Quantized only: [rows, GroupsPerRow] float16 bits (params.f16_params) or
  // float32; zeros null for symmetric schemes.
  const void* scales = nullptr;
  const void* zeros = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  QuantParams params;  // quantized only

  bool empty() const { return data == nullptr; }
};

// out[t, r] = sum_c x[t, c] * W[r, c] for t < n: x is float32 [n, cols], out
// float32 [n, rows], both row-major and contiguous. Threads split the rows of
// W; the summation order is fixed, so results do not depend on the thread
// count.
void MatMul(const WeightView& w, const float* x, size_t n, float* out);

// MatMul of several matrices with the same cols on the same x: outs[i] =
// x ws[i]^T. When decoding, their rows are shared out in one parallel loop
// (one barrier instead of one per matrix); results equal MatMul's.
void MatMulShared(const WeightView* const* ws, size_t count, const float* x,
                  size_t n, float* const* outs);

// Row r of W as float32 into out[0, cols): an embedding lookup.
void WeightRow(const WeightView& w, size_t r, float* out);

// Sum of x[0, n) on all threads: a plain read of memory, the bandwidth
// reference that benchmarks hold the GEMV kernels against. The result does
// not depend on the thread count.
double SumFloats(const float* x, size_t n);

}  // namespace lowbit

#endif  // LOWBIT_MATMUL_MATMUL_H_
