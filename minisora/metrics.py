"""Reconstruction metrics on videos in [-1, 1], (B, C, T, H, W)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-video PSNR in dB for signals in [-1, 1] (peak-to-peak 2). Shape (B,)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-video SSIM (Gaussian window, per channel and frame, averaged), signals in [-1, 1]. Shape (B,).
    Always computed in fp32 (under bf16 autocast the variance terms cancel catastrophically)."""
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x, y, window, sigma)


def _ssim(x, y, window, sigma):
    b, c, t, h, w = x.shape
    x = x.float().transpose(1, 2).reshape(b * t, c, h, w)
    y = y.float().transpose(1, 2).reshape(b * t, c, h, w)
    window = min(window, h, w)
    g = torch.exp(-((torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(z):
        return F.conv2d(z, k, groups=c)

    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).view(b, t).mean(1)
