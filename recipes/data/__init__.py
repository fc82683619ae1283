"""Data: instruction records and token windows for recipes, tokenizers, the byte corpus of the benchmarks, the
shipped tasks."""
