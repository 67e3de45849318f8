"""Layer 5: where checkpoints come from: the HuggingFace Hub (``lowbit download``) and
the embedded default model."""
