// GPTQ (Frantar et al., 2022): a row's weights are quantized one column at a
// time, and each column's rounding error is spread over the columns not yet
// quantized so that the layer's output on the calibration inputs changes
// least. With H = X^T X (X: the layer's inputs) and U the upper Cholesky
// factor of H^-1 (H^-1 = U^T U), quantizing column c of a row w leaves the
// error e = (w_c - w^_c) / U[c][c], and w_j -= e U[c][j] for every j > c is
// the optimal update of the rest. Rows are independent, so threads take
// tiles of rows; within a tile, columns go in blocks whose updates past the
// block are applied once per block ("lazy batch" updates), so each row of U
// past the block is read once per tile and block rather than once per column.
//
// A group's scale and zero point are found when its first column comes up,
// by the scheme's own search (rtn, mse or hqq, weighted by E[x^2] when given)
// on the group's weights as the earlier columns' errors have left them. The
// rows then hold the reconstruction w^ = scale (q - zero), which is encoded
// with those parameters: re-encoding w^ gives q back exactly (the error of
// (q - zero) * scale / scale is far below half a step for any zero point a
// float16 can hold).

// Per-target include guard: this file is included once for each target.
#if defined(LOWBIT_QUANT_GPTQ_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_QUANT_GPTQ_INL_H_
#undef LOWBIT_QUANT_GPTQ_INL_H_
#else
#define LOWBIT_QUANT_GPTQ_INL_H_
#endif

#include <cmath>
#include <cstdint>
#include <vector>

#include "hwy/highway.h"
#include "quant/decode-inl.h"
#include "quant/encode-inl.h"
#include "quant/params-inl.h"
#include "quant/quant_params.h"
#include "quant/rows-inl.h"
#include "quant/stats-inl.h"
#include "util/errors.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// y[0, n) -= a * x[0, n).
HWY_INLINE void SubScaled(float a, const float* HWY_RESTRICT x,
                          float* HWY_RESTRICT y, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const auto va = hn::Set(d, a);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::NegMulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d,
               y + i);
  }
  for (; i < n; ++i) y[i] -= a * x[i];
}

// Rows [r0, r1) of w (float32, rows x cols, overwritten with their
// reconstruction) through GPTQ with u (cols x cols, upper triangular, row
// major), then encoded into codes/scales/zeros as QuantizeRows stores them.
// block: columns per lazy batch, a multiple of the group size (or any size
// when a group is the whole row).
template <int kBits, bool kAsym>
void GptqRowsT(float* HWY_RESTRICT w, const float* HWY_RESTRICT u, size_t r0,
               size_t r1, size_t cols, const QuantParams& p,
               const float* importance, size_t block,
               uint8_t* HWY_RESTRICT codes, void* HWY_RESTRICT scales,
               void* HWY_RESTRICT zeros, ErrorSink* errors) {
  const size_t g = p.group_size == 0 ? cols : p.group_size;
  const size_t groups = cols / g;
  const size_t rows = r1 - r0;
  const float lo = static_cast<float>(p.qmin);
  const float hi = static_cast<float>(p.qmax);
  std::vector<float> scale(rows * groups), inv(rows * groups),
      zero(rows * groups);
  std::vector<float> err(rows * block);
  // A row with NaN/Inf, or whose parameters overflow float16, is reported
  // and left out (the caller raises; nothing of it is used).
  std::vector<uint8_t> bad(rows, 0);
  for (size_t i = 0; i < rows; ++i) {
    const float* row = w + (r0 + i) * cols;
    for (size_t j = 0; j < cols; ++j) {
      if (!std::isfinite(row[j])) {
        errors->Report(ErrorKind::kNonFinite, r0 + i, j);
        bad[i] = 1;
        break;
      }
    }
  }
  for (size_t i1 = 0; i1 < cols; i1 += block) {
    const size_t i2 = HWY_MIN(i1 + block, cols);
    for (size_t c = i1; c < i2; ++c) {
      const float* urow = u + c * cols;
      const float diag = urow[c];
      const size_t gi = c / g;
      for (size_t i = 0; i < rows; ++i) {
        if (bad[i]) continue;
        float* row = w + (r0 + i) * cols;
        const size_t at = i * groups + gi;  // this row's group parameters
        if (c % g == 0) {
          float mn = HUGE_VALF, mx = -HUGE_VALF;
          for (size_t j = c; j < c + g; ++j) {
            mn = std::fmin(mn, row[j]);
            mx = std::fmax(mx, row[j]);
          }
          const GroupStats st{mn, mx, std::fmax(-mn, mx)};
          const float* imp = importance == nullptr ? nullptr : importance + c;
          const GroupQ found = FindParams(p, row + c, g, st, imp);
          if (!IsFiniteQ(found)) {
            errors->Report(ErrorKind::kScaleOverflow, r0 + i, c);
            bad[i] = 1;
            continue;
          }
          scale[at] = found.scale;
          inv[at] = found.inv;
          zero[at] = found.zero;
        }
        const float x = row[c];
        float t = x * inv[at];
        if (kAsym) t += zero[at];
        // Symmetric schemes have zero 0 here (their offset is added when
        // the code is stored).
        const float x_hat = (RoundClamp(t, lo, hi) - zero[at]) * scale[at];
        row[c] = x_hat;
        const float e = (x - x_hat) / diag;
        err[i * block + (c - i1)] = e;
        SubScaled(e, urow + c + 1, row + c + 1, i2 - c - 1);
      }
    }
    if (i2 == cols) break;
    // The block's errors reach the columns past it: one row of U at a time,
    // shared by the tile's rows while it is in cache.
    for (size_t k = 0; k < i2 - i1; ++k) {
      const float* urow = u + (i1 + k) * cols + i2;
      for (size_t i = 0; i < rows; ++i) {
        if (bad[i]) continue;
        SubScaled(err[i * block + k], urow, w + (r0 + i) * cols + i2,
                  cols - i2);
      }
    }
  }
  const size_t row_bytes = RowBytes(cols, kBits);
  const std::vector<uint32_t> seg_group = SegmentGroups(cols, g, kBits);
  for (size_t i = 0; i < rows; ++i) {
    if (bad[i]) continue;
    const size_t r = r0 + i;
    WriteParams(p, &scale[i * groups], groups, scales, r * groups);
    if (zeros != nullptr) WriteParams(p, &zero[i * groups], groups, zeros, r * groups);
    EncodeRow<kBits, kAsym>(p, w + r * cols, cols, seg_group.data(),
                            &inv[i * groups], &zero[i * groups],
                            codes + r * row_bytes);
  }
}

void GptqRows(float* w, const float* u, size_t r0, size_t r1, size_t cols,
              const QuantParams& p, const float* importance, size_t block,
              uint8_t* codes, void* scales, void* zeros, ErrorSink* errors) {
  VisitLayout(p, [&](auto layout) {
    constexpr int kBits = decltype(layout)::kBits;
    constexpr bool kAsym = decltype(layout)::kAsym;
    GptqRowsT<kBits, kAsym>(w, u, r0, r1, cols, p, importance, block, codes,
                            scales, zeros, errors);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_QUANT_GPTQ_INL_H_
