// Quantize and dequantize whole matrices, split by rows over the thread pool
// and dispatched to the best SIMD target of the machine.
#ifndef LOWBIT_QUANT_QUANTIZE_H_
#define LOWBIT_QUANT_QUANTIZE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "quant/quant_params.h"
#include "util/errors.h"

namespace lowbit {

// x: rows x cols elements of `dtype`, row-major and contiguous.
// codes: rows x RowBytes(cols, p.bits) bytes.
// scales, zeros: rows x GroupsPerRow(cols, p.group_size) stored values:
// float16 bits (uint16) when p.f16_params, float32 otherwise. zeros may be
// null for symmetric schemes. importance: null, or cols non-negative floats
// (E[x_j^2] of the layer's input channel j from calibration) that weight the
// squared error the mse and hqq searches minimise; rtn ignores it. Stops a
// row at its first bad element and reports it to `errors`.
void QuantizeMatrix(const void* x, DType dtype, size_t rows, size_t cols,
                    const QuantParams& p, uint8_t* codes, void* scales,
                    void* zeros, ErrorSink* errors,
                    const float* importance = nullptr);

// GPTQ (quant/gptq-inl.h): w (rows x cols float32, overwritten with the
// reconstruction) is quantized column by column, each column's rounding error
// spread over the columns after it through u, the upper Cholesky factor of
// the inverse of the (damped) Hessian X^T X of the layer's inputs: cols x cols
// float32, row-major, with a positive diagonal. codes, scales, zeros and
// importance as for QuantizeMatrix; the codes equal what QuantizeMatrix
// would store for the reconstruction with these parameters.
void GptqMatrix(float* w, const float* u, size_t rows, size_t cols,
                const QuantParams& p, uint8_t* codes, void* scales, void* zeros,
                ErrorSink* errors, const float* importance = nullptr);

// The inverse: out is rows x cols float32.
void DequantizeMatrix(const uint8_t* codes, const void* scales,
                      const void* zeros, size_t rows, size_t cols,
                      const QuantParams& p, float* out);

// Per row r of x: signal[r] = sum x^2 and noise[r] = sum (x - x^)^2, where
// x^ is the reconstruction from codes/scales/zeros (laid out as above).
void ReconstructionError(const void* x, DType dtype, const uint8_t* codes,
                         const void* scales, const void* zeros, size_t rows,
                         size_t cols, const QuantParams& p, double* signal,
                         double* noise);

// Converts n elements between float32, float16 and bfloat16, rounding to
// nearest even. Reports NaN/Inf inputs and values that overflow the output.
void CastArray(const void* in, DType in_type, size_t n, void* out,
               DType out_type, ErrorSink* errors);

// Name of the SIMD target that dynamic dispatch runs these kernels on.
std::string DispatchedTarget();

}  // namespace lowbit

#endif  // LOWBIT_QUANT_QUANTIZE_H_
