"""Models: the one model builder (presets, local folders, the Hub, 4-bit; then LoRA)."""
