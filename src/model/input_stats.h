// Calibration statistics: per input channel, the sum of squares of what each
// linear layer of the model reads, over the tokens run while collecting.
// E[x_j^2] = sum_sq[j] / rows weights column j of the layer's weight matrix:
// the expected squared error of an output from an error d in column j is
// E[x_j^2] d^2 (the diagonal of X^T X, as llama.cpp's importance matrix).
// GPTQ needs all of X^T X (the Hessian of the layer's squared output error):
// collected too when asked, per site, usually for one layer at a time (a
// 1536-wide input's is 18 MiB of doubles).
#ifndef LOWBIT_MODEL_INPUT_STATS_H_
#define LOWBIT_MODEL_INPUT_STATS_H_

#include <cstddef>
#include <map>
#include <vector>

#include "model/weight_key.h"

namespace lowbit {

// One input site: the tensors that read the same activations share it
// (q, k and v read the attention input, keyed by kQ; gate, up and the router
// read the FFN input, keyed by kGate; an expert's down projection is keyed
// by its own expert).
struct InputSite {
  std::vector<double> sum_sq;  // per column, double: sums over many tokens
  std::vector<double> gram;    // cols x cols, row-major, when collected
  size_t rows = 0;             // tokens (rows of x) accumulated
};

class InputStats {
 public:
  // gram: also accumulate X^T X per site.
  explicit InputStats(bool gram = false) : gram_(gram) {}

  // x: rows x cols float32, row-major.
  void Add(const WeightKey& site, const float* x, size_t rows, size_t cols);

  const std::map<WeightKey, InputSite>& sites() const { return sites_; }

 private:
  bool gram_;
  std::map<WeightKey, InputSite> sites_;
};

}  // namespace lowbit

#endif  // LOWBIT_MODEL_INPUT_STATS_H_
