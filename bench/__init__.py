"""nnspec benchmark suite: hand-written NumPy and PyTorch baselines, and the harness."""
