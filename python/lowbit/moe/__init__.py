"""Layer 8: Mixture-of-Experts upcycling of dense checkpoints (copy and split modes)."""
