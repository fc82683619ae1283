"""Benchmarks that compare the unwrapped baseline with DropBP and its alternatives: throughput, memory, convergence,
the time-to-accuracy regime study, graph compiles, and results of several devices side by side."""
