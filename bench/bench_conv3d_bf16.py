"""Checks the CPU bf16 conv3d weight gradient against fp32 over a grid of shapes, two ways: the convolution
padding time itself (nn.Conv3d) and time padded beforehand with F.pad (what models.layers.Conv3d does on
CPU). On PyTorch 2.14 / oneDNN with AVX512-BF16 the first is wrong for short clips (e.g. 2 frames, padding
1): relative errors of 1 to 1e36, NaN at times; the second matches fp32 everywhere.

    python bench/bench_conv3d_bf16.py        # ~2 min on 2 cores; prints the bad shapes of each way
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def weight_grad_error(x, weight, t_pad: tuple[int, int], stride: int, pad_first: bool) -> float:
    """max |grad_bf16 - grad_fp32| / max |grad_fp32| of the weight gradient of one 3x3x3 conv."""
    def conv(inp, w):
        if pad_first:
            return F.conv3d(F.pad(inp, (0, 0, 0, 0) + t_pad), w, None, (stride, 1, 1), (0, 1, 1))
        return F.conv3d(inp, w, None, (stride, 1, 1), (t_pad[0], 1, 1))

    w16, w32 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x, w16)
    g = torch.randn(y.shape)
    y.backward(g.to(y.dtype))
    conv(x.float().contiguous(), w32).backward(g)
    return float((w16.grad - w32.grad).abs().max() / w32.grad.abs().max())


def main():
    torch.manual_seed(0)
    grid = itertools.product([1, 2, 4], [8, 32, 128], [1, 2, 3, 4, 6, 8, 16], [4, 8, 16, 32], [False, True], [1, 2])
    bad, n = {False: [], True: []}, 0
    for b, c, t, s, channels_last, stride in grid:
        n += 1
        x = torch.randn(b, c, t, s, s)
        if channels_last:
            x = x.to(memory_format=torch.channels_last_3d)
        w = torch.randn(c, c, 3, 3, 3) * 0.1
        for pad_first in (False, True):
            err = max(weight_grad_error(x, w, (1, 1), stride, pad_first) for _ in range(2))
            if not err < 0.05:
                bad[pad_first].append((b, c, t, s, channels_last, stride, f"{err:.3g}"))
    for pad_first, rows in bad.items():
        how = "time padded by F.pad first" if pad_first else "conv pads time itself"
        print(f"{how}: {len(rows)} of {n} shapes with a wrong bf16 weight gradient (rel. error >= 0.05)")
        for r in rows[:12]:
            print("   (B, C, T, H=W, channels_last, stride_t, error) =", r)


if __name__ == "__main__":
    main()
