"""Benchmarks that compare the unwrapped baseline with DropBP: throughput, memory and convergence."""
