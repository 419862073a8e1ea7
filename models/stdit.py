"""ST-DiT (Open-Sora v1 style): every block runs spatial self-attention (within each frame), then
temporal self-attention (across frames at each site), then an MLP; adaLN conditioning is one shared
projection of the timestep embedding plus a learned per-block table. Input/output (B, C, T, H, W);
3D patches (default 1x2x2), tokens time-major.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .cfg import ClassConditioned
from .layers import Attention, LabelEmbedder, Mlp, TimestepEmbedder, modulate, sincos_1d, sincos_2d


@dataclass
class STDiTConfig:
    input_size: tuple[int, int, int] = (8, 32, 32)   # latent (T, H, W)
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 768
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    num_classes: int = 0
    class_dropout: float = 0.1
    grad_checkpointing: bool = False

    def __post_init__(self):
        self.input_size, self.patch_size = tuple(self.input_size), tuple(self.patch_size)
        for n, p in zip(self.input_size, self.patch_size):
            if n % p:
                raise ValueError(f"latent size {self.input_size} is not divisible by patch {self.patch_size}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"], d["patch_size"] = list(self.input_size), list(self.patch_size)
        return d


PRESETS = {  # the seed's shapes, plus the class default
    "STDiT-6/768": dict(depth=6, hidden_size=768, num_heads=3),
    "STDiT-16/768": dict(depth=16, hidden_size=768, num_heads=12),
    "STDiT-XL/2": dict(depth=28, hidden_size=1152, num_heads=16),
}


class STBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(dim, heads)
        self.attn_t = Attention(dim, heads, zero_out=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        """x (B, T, S, D); t0 (B, 6, D) shared timestep modulation."""
        b = x.shape[0]
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.table[None] + t0)[:, :, None, None].unbind(1)
        h = modulate(self.norm1(x), shift1, scale1)
        h = rearrange(self.attn_s(rearrange(h, "b t s d -> (b t) s d")), "(b t) s d -> b t s d", b=b)
        x = x + gate1 * h
        h = rearrange(self.attn_t(rearrange(x, "b t s d -> (b s) t d")), "(b s) t d -> b t s d", b=b)
        x = x + gate1 * h
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class STDiT(ClassConditioned, nn.Module):
    def __init__(self, cfg: STDiTConfig):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_size
        self.patch = nn.Conv3d(cfg.in_channels, d, cfg.patch_size, cfg.patch_size)
        gt, gh, gw = (n // p for n, p in zip(cfg.input_size, cfg.patch_size))
        self.grid = (gt, gh, gw)
        self.register_buffer("pos_spatial", sincos_2d(d, gh, gw), persistent=False)
        self.register_buffer("pos_temporal", sincos_1d(d, torch.arange(gt)), persistent=False)
        self.t_embed = TimestepEmbedder(d)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.y_embed = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout) if cfg.num_classes else None
        self.blocks = nn.ModuleList(STBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.final = nn.Linear(d, cfg.out_channels * int(torch.tensor(cfg.patch_size).prod()))
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in (*self.t_embed.mlp,):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            nn.init.zeros_(blk.attn_t.proj.weight)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg, b = self.config, x.shape[0]
        if tuple(x.shape[2:]) != cfg.input_size:
            raise ValueError(f"input latent {tuple(x.shape[2:])} != model input_size {cfg.input_size}")
        h = rearrange(self.patch(x), "b d t gh gw -> b t (gh gw) d")
        h = h + self.pos_spatial.to(h.dtype) + self.pos_temporal[:, None].to(h.dtype)
        c = self.t_embed(t)
        c = self.condition(c, y)  # y=None on a class-conditional model: the null label
        t0 = self.t_block(c).view(b, 6, -1)
        for blk in self.blocks:
            h = checkpoint(blk, h, t0, use_reentrant=False) if cfg.grad_checkpointing and self.training else blk(h, t0)
        shift, scale = (self.final_table[None] + c[:, None])[:, :, None, None].unbind(1)
        h = self.final(modulate(self.final_norm(h), shift, scale))
        (pt, ph, pw), (_, gh, gw) = cfg.patch_size, self.grid
        return rearrange(h, "b t (gh gw) (pt ph pw c) -> b c (t pt) (gh ph) (gw pw)", gh=gh, gw=gw, pt=pt, ph=ph, pw=pw).float()
