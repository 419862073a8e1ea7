"""Helpers for the bench/ scripts: timing, measured matmul peak, FLOP counting for MFU."""
from __future__ import annotations

import statistics
import time

import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn, iters: int = 3, warmup: int = 1) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matmul_peak(dtype=torch.float32, device=None) -> float:
    """Best FLOP/s of square matmuls (1024², 2048², 4096² on GPU; up to 2048² on CPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    best = 0.0
    for n in ((1024, 2048, 4096) if device == "cuda" else (1024, 2048)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n**3 / min(timeit(lambda: a @ b, iters=1) for _ in range(5)))  # best of 5: a peak
    return best


def train_flops(step_fn) -> float:
    """FLOPs of one call of step_fn (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step_fn()
    return float(fc.get_total_flops())
