// Placeholder bodies for matmul.h: quantized weights through
// QuantizedMatmul, float weights through a plain loop. To be replaced by the
// fused SIMD kernels.
#include "matmul/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "quant/quantize.h"
#include "util/float16.h"
#include "util/thread_pool.h"

namespace lowbit {
namespace {

float FloatAt(const WeightView& w, size_t i) {
  switch (w.format) {
    case WeightFormat::kF16:
      return F32FromF16Bits(static_cast<const uint16_t*>(w.data)[i]);
    case WeightFormat::kBF16:
      return F32FromBF16Bits(static_cast<const uint16_t*>(w.data)[i]);
    default:
      return static_cast<const float*>(w.data)[i];
  }
}

}  // namespace

void MatMul(const WeightView& w, const float* x, size_t n, float* out) {
  if (w.format == WeightFormat::kQuantized) {
    QuantizedMatmul(x, n, static_cast<const uint8_t*>(w.data), w.scales,
                    w.zeros, w.rows, w.cols, w.params, out);
    return;
  }
  const size_t grain = std::max<size_t>(1, (size_t{1} << 16) / w.cols);
  ThreadPool::Global().ParallelFor(w.rows, grain, [&](size_t r0, size_t r1) {
    std::vector<float> row(w.cols);
    for (size_t r = r0; r < r1; ++r) {
      WeightRow(w, r, row.data());
      for (size_t t = 0; t < n; ++t) {
        const float* xt = x + t * w.cols;
        float sum = 0.0f;
        for (size_t c = 0; c < w.cols; ++c) sum += row[c] * xt[c];
        out[t * w.rows + r] = sum;
      }
    }
  });
}

void WeightRow(const WeightView& w, size_t r, float* out) {
  if (w.format == WeightFormat::kQuantized) {
    const size_t groups = GroupsPerRow(w.cols, w.params.group_size);
    const size_t param_bytes = w.params.f16_params ? 2 : 4;
    const auto* codes = static_cast<const uint8_t*>(w.data) +
                        r * RowBytes(w.cols, w.params.bits);
    const auto* scales =
        static_cast<const uint8_t*>(w.scales) + r * groups * param_bytes;
    const auto* zeros =
        w.zeros == nullptr
            ? nullptr
            : static_cast<const uint8_t*>(w.zeros) + r * groups * param_bytes;
    DequantizeMatrix(codes, scales, zeros, 1, w.cols, w.params, out);
    return;
  }
  for (size_t c = 0; c < w.cols; ++c) out[c] = FloatAt(w, r * w.cols + c);
}

}  // namespace lowbit
