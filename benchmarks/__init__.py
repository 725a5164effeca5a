"""Speed, memory and load measurements: run them from the repository root, ``python -m benchmarks.NAME``."""
