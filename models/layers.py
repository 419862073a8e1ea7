"""Small building blocks shared by the MiniSora models.

Video tensors are (B, C, T, H, W). Strides are given per axis as (t, h, w) tuples.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def group_count(channels: int, max_groups: int = 32, min_channels: int = 1) -> int:
    """Largest group count <= max_groups that divides `channels` and leaves >= min_channels per group."""
    g = max(1, min(max_groups, channels // max(1, min_channels)))
    while channels % g:
        g -= 1
    return g


class Normalize(nn.GroupNorm):
    """GroupNorm whose group count divides the channels, with >= `group_channels` channels per group.

    Why several channels per group: a group's statistics are taken over the whole clip, so a per-clip gain on a
    group is erased. With one channel per group (an instance norm) a feature that fires only for, say, red
    digits is rescaled to unit variance in every clip, red digit or not: the layer after it cannot tell colours
    apart (in a Flying-MNIST clip one or two flat-coloured digits fill a few % of the pixels). Channels in one
    group keep their ratios. group_channels=0 reproduces the old "up to 32 groups" layout (old checkpoints).

    per_frame=True normalises every frame on its own (statistics over C/g, H, W only),
    so no information leaks across time -- needed for causal models.
    """

    def __init__(self, channels: int, per_frame: bool = False, max_groups: int = 32, group_channels: int = 4):
        super().__init__(group_count(channels, max_groups, group_channels), channels, eps=1e-6)
        self.per_frame = per_frame

    def forward(self, x):
        if self.per_frame and x.dim() == 5:
            b = x.shape[0]
            y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
            return rearrange(y, "(b t) c h w -> b c t h w", b=b)
        return super().forward(x)


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


TEMPORAL_PADDINGS = ("zeros", "replicate")  # Conv3d(temporal_padding=...): how time is padded at a clip's ends


class Conv3d(nn.Conv3d):
    """Conv3d whose padding makes every output size exactly input_size / stride.

    Per axis the total padding is kernel - stride, split evenly (the extra pixel goes
    right). causal=True puts all temporal padding in the past, so output frame i
    only sees input frames <= i * stride_t + stride_t - 1.

    temporal_padding="replicate" pads time with copies of the first/last frame instead of zeros: a clip's
    edge frames then look like the inside of a still clip, so a tokenizer gives unchanged content the same
    code at the edges as inside (zeros make the first and last few latent frames differ from their
    neighbours even where nothing moved; see bench/bench_tokens.py, code persistence). Space keeps zeros.

    On CPU the temporal zero padding is applied with F.pad rather than by the convolution: oneDNN's bf16
    conv3d (PyTorch 2.14, AVX512-BF16 CPUs) returns a wrong weight gradient -- garbage, often NaN/1e36 --
    when the conv pads time and the clip is short (e.g. 2 latent frames with padding 1: every tiny-test VQ
    run had a chance of NaN weights after one step). bench/bench_conv3d_bf16.py: 54 of 1008 shapes wrong
    with the conv padding time, none with time padded beforehand (checked in tests/test_vqvae_models.py).
    """

    def __init__(self, cin, cout, kernel=3, stride=1, causal=False, temporal_padding="zeros"):
        if temporal_padding not in TEMPORAL_PADDINGS:
            raise ValueError(f"temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}")
        k, s = _triple(kernel), _triple(stride)
        pads = []  # (left, right) per axis t, h, w
        for i, (ki, si) in enumerate(zip(k, s)):
            total = ki - si
            left = total if (causal and i == 0) else total // 2
            pads.append((left, total - left))
        self.time_pad = pads[0] if temporal_padding == "replicate" and any(pads[0]) else None
        if self.time_pad:
            pads[0] = (0, 0)
        symmetric = all(l == r for l, r in pads)
        super().__init__(cin, cout, k, s, padding=tuple(l for l, _ in pads) if symmetric else 0)
        # F.pad wants the last axis first: (w_l, w_r, h_l, h_r, t_l, t_r)
        self.pad = None if symmetric else tuple(p for lr in reversed(pads) for p in lr)
        t_pad = self.padding[0]
        self.cpu_time_pad = (0, 0, 0, 0, t_pad, t_pad) if t_pad else None  # see the class docstring

    def forward(self, x):
        if self.time_pad is not None:
            (l, r), t = self.time_pad, x.shape[2]
            x = x[:, :, torch.arange(-l, t + r, device=x.device).clamp(0, t - 1)]
        if self.pad is not None:
            x = F.pad(x, self.pad)
        if self.cpu_time_pad is not None and x.device.type == "cpu":
            return F.conv3d(F.pad(x, self.cpu_time_pad), self.weight, self.bias, self.stride,
                            (0, *self.padding[1:]), self.dilation, self.groups)
        return super().forward(x)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv3d -> norm -> SiLU -> (dropout) -> conv3d, plus skip (1x1x1 conv if channels change)."""

    def __init__(self, cin: int, cout: int | None = None, dropout: float = 0.0, causal: bool = False,
                 group_channels: int = 4, temporal_padding: str = "zeros"):
        super().__init__()
        cout = cout or cin
        self.norm1 = Normalize(cin, per_frame=causal, group_channels=group_channels)
        self.conv1 = Conv3d(cin, cout, 3, causal=causal, temporal_padding=temporal_padding)
        self.norm2 = Normalize(cout, per_frame=causal, group_channels=group_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3d(cout, cout, 3, causal=causal, temporal_padding=temporal_padding)
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Space-to-depth by `stride` (t, h, w) (entries 1 or 2), then a 1x1x1 conv: patch merging.
    Exact (no padding) and ~27x cheaper than a strided 3x3x3 conv; the surrounding 3x3x3 convs provide the
    spatial mixing. Causal by construction (no flag needed): output frame k is made from input frames
    [k * stride_t, (k + 1) * stride_t) only."""

    def __init__(self, cin: int, cout: int | None = None, stride=(2, 2, 2)):
        super().__init__()
        self.stride = _triple(stride)
        self.conv = nn.Conv3d(cin * math.prod(self.stride), cout or cin, 1)

    def forward(self, x):
        t, h, w = self.stride
        return self.conv(rearrange(x, "b c (t t2) (h h2) (w w2) -> b (c t2 h2 w2) t h w", t2=t, h2=h, w2=w))


class Upsample3d(nn.Module):
    """1x1x1 conv to cout * prod(stride) channels, then depth-to-space by `stride` (sub-pixel upsampling):
    the mirror of Downsample3d, no checkerboard (every output voxel has its own weights). Causal by
    construction: output frames [k * stride_t, (k + 1) * stride_t) are made from input frame k only."""

    def __init__(self, cin: int, cout: int | None = None, stride=(2, 2, 2)):
        super().__init__()
        self.stride = _triple(stride)
        self.conv = nn.Conv3d(cin, (cout or cin) * math.prod(self.stride), 1)

    def forward(self, x):
        t, h, w = self.stride
        return rearrange(self.conv(x), "b (c t2 h2 w2) t h w -> b c (t t2) (h h2) (w w2)", t2=t, h2=h, w2=w)


def modulate(x, shift, scale):
    """adaLN modulation x * (1 + scale) + shift. x: (B, N, D); shift/scale: (B, D) or broadcastable to x."""
    if shift.dim() == x.dim() - 1:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of (possibly fractional) timesteps t: (B,) -> (B, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# ----------------------------------------------------------------------------- transformer blocks
class Attention(nn.Module):
    """Multi-head self-attention on (N, L, D) through F.scaled_dot_product_attention (flash / memory-
    efficient kernels on GPU). Optional causal mask and KV cache are handled by callers (models/gpt.py)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, zero_out: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if zero_out:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.num_heads)
        return self.proj(rearrange(attention(q, k, v), "n h l d -> n l (h d)"))


CPU_EXPLICIT_MAX_LEN = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal attention on (N, H, L, Dh): F.scaled_dot_product_attention (flash / memory-efficient kernels
    on GPU), except for bf16 on CPU with sequences up to CPU_EXPLICIT_MAX_LEN (temporal attention over a few
    latent frames, spatial attention over <= 16x16 patches): there the flash kernel is 1.7-6x slower than two
    matmuls and a softmax, forward + backward (in fp32 it is not). The L x L weights are small there; a bf16
    softmax accumulates in fp32 (bit-identical to an fp32 softmax rounded to bf16)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and max(q.shape[-2], k.shape[-2]) <= CPU_EXPLICIT_MAX_LEN:
        w = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return w.softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(dim * ratio)
        # exact (erf) GELU: 3x faster than the tanh approximation in bf16 on CPU, the same on GPU
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TimestepEmbedder(nn.Module):
    """Sinusoid of the (base-chain) timestep -> MLP -> (B, D)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> (B, D); index num_classes is the 'no label' token used for classifier-free guidance.
    Multi-hot labels (B, num_classes) are embedded as the mean of their classes."""

    def __init__(self, num_classes: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, y: torch.Tensor, train: bool) -> torch.Tensor:
        if y.dim() == 2:  # multi-hot
            emb = (y.float() @ self.table.weight[:-1]) / y.float().sum(1, keepdim=True).clamp_min(1)
            null = self.table.weight[-1].expand_as(emb)
            drop = torch.rand(len(y), device=y.device) < self.dropout if train else y.sum(1) == 0
            return torch.where(drop[:, None], null, emb)
        if train and self.dropout > 0:
            y = torch.where(torch.rand(len(y), device=y.device) < self.dropout, torch.full_like(y, self.num_classes), y)
        return self.table(y)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Fixed sin-cos embedding (len(positions), dim): [sin | cos] over geometric frequencies."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2D sin-cos embedding (h * w, dim), row-major: half the channels encode y, half x."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, ys.flatten()), sincos_1d(dim // 2, xs.flatten())], dim=1)


class GridPositions(nn.Module):
    """Learned absolute positions of a flattened (t, h, w) code grid, factorised into three tables, for
    sequences [BOS, c_0, c_1, ...]: position 0 (BOS) gets none, position i >= 1 that of code i - 1. Used by the
    next-token models (a token keeps its (t, h, w) wherever a training or generation window starts)."""

    def __init__(self, grid, dim: int):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.t, self.h, self.w = (nn.Embedding(n, dim) for n in self.grid)

    @staticmethod
    def index(start, length: int, device) -> torch.Tensor:
        """Sequence positions of `length` tokens starting at `start` (int or (B,) tensor), or `start` itself
        when it already is a (B, L) tensor of explicit positions."""
        start = torch.as_tensor(start, device=device)
        return start if start.dim() == 2 else start.view(-1, 1) + torch.arange(length, device=device)[None]

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        _, h, w = self.grid
        j = (pos - 1).clamp(min=0)
        e = self.t(j // (h * w)) + self.h((j // w) % h) + self.w(j % w)
        return e * (pos > 0).unsqueeze(-1)
