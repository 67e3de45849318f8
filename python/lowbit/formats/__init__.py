"""Layer 4: files on disk. Safetensors read and written one tensor at a time, the
manifest and its JSON schemas, the NPZ layout, GGUF input, the stored layout of a quantized
weight, and the check of a converted model directory (``lowbit inspect``)."""
