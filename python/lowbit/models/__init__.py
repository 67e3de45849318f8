"""Layer 2: what a model family is. The family registry (one module per architecture
lowbit supports, with its traits), the tensor vocabulary (each checkpoint tensor's
role and its slot in the core), config.json read once into a typed config, rotary
frequencies, and the tokenizer of a model directory."""
