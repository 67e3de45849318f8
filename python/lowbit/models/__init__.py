"""Layer 2: what a model family is. The family registry (names, roles and traits of
every architecture lowbit supports), config.json read once into a typed config, rotary
frequencies, and the tokenizer of a model directory."""
