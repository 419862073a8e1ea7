"""MiniSora shared library: video IO, datasets, stage files, checkpoints, model references.

Top-level scripts (generate_flying_mnist.py, train_vqvae.py, ...) are thin wrappers around
this package and `models/`. Tensor convention everywhere: videos are float (B, C, T, H, W),
RGB, in [-1, 1]; uint8 (T, H, W, C) only at the file boundary.
"""
