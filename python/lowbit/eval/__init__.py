"""Layer 7: how much quantization cost. The evaluation text and perplexity protocol,
error measures, tolerances, and ``lowbit validate`` against the PyTorch baseline."""
