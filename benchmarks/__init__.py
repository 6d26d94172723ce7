"""Benchmarks: `python -m benchmarks.run` (throughput, side by side with PyTorch)."""
