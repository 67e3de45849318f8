"""Layer 1, used by every other: errors and their wording, confined paths, checksums,
strict JSON, and output directories written atomically. Imports nothing of lowbit."""
