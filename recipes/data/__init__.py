"""Data: instruction records and token windows for recipes, the byte corpus of the benchmarks, the shipped tasks."""
