"""Layer 6: running a converted model on the C++ core: loading, the forward pass,
generation, sampling and ``lowbit bench``. Knows nothing of conversion."""
