"""Layer 6: a checkpoint into a compact model directory (``lowbit convert``), and a
model directory back into a float checkpoint. Knows nothing of the runtime."""
