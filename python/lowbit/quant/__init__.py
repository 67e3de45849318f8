"""Layer 3: quantization. The scheme table, element types, the NumPy reference (the
spec the C++ kernels are tested against), ``quantize`` on the kernels, and recipes (which
scheme each tensor gets)."""
