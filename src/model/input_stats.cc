#include "model/input_stats.h"

#include "matmul/matmul.h"

namespace lowbit {
namespace {

// gram += X^T X for x [rows, cols]: the float32 GEMM with X^T [cols, rows]
// as both the weight and the input (out[i, j] = sum_t X[t, i] X[t, j]). The
// model passes at most one chunk of tokens (256) at a time, so each float32
// sum has few terms before it joins the double total.
void AddGram(const float* x, size_t rows, size_t cols,
             std::vector<double>* gram) {
  std::vector<float> xt(cols * rows);
  for (size_t t = 0; t < rows; ++t) {
    for (size_t j = 0; j < cols; ++j) xt[j * rows + t] = x[t * cols + j];
  }
  WeightView w;
  w.format = WeightFormat::kF32;
  w.data = xt.data();
  w.rows = cols;
  w.cols = rows;
  std::vector<float> product(cols * cols);
  MatMul(w, xt.data(), cols, product.data());
  for (size_t i = 0; i < cols * cols; ++i) (*gram)[i] += product[i];
}

}  // namespace

void InputStats::Add(const WeightKey& site, const float* x, size_t rows,
                     size_t cols) {
  InputSite& s = sites_[site];
  if (s.sum_sq.empty()) s.sum_sq.assign(cols, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    for (size_t j = 0; j < cols; ++j) {
      s.sum_sq[j] += static_cast<double>(row[j]) * row[j];
    }
  }
  if (gram_) {
    if (s.gram.empty()) s.gram.assign(cols * cols, 0.0);
    AddGram(x, rows, cols, &s.gram);
  }
  s.rows += rows;
}

}  // namespace lowbit
