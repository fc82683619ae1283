"""dropbp recipes: the application layer (model presets, data, the training loop, publishing results, the CLI)."""
