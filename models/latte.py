"""Latte: a video DiT that alternates spatial blocks (attention within a frame) and temporal blocks
(attention across frames at each patch), with adaLN-Zero conditioning on the diffusion timestep and an
optional class / digit-label input (classifier-free guidance via a null label).

Input and output (B, C, T, H, W) latents; output channels 2C with learn_sigma (epsilon, variance).
Presets as DiT: Latte-{XL,L,B,S}/{2,4,8} and Latte-T/2.
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
class LatteConfig:
    input_size: int = 32          # latent H = W
    num_frames: int = 16          # latent frames
    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    num_classes: int = 0          # 0: unconditional; 10: digit labels (multi-hot) with CFG dropout
    class_dropout: float = 0.1
    grad_checkpointing: bool = False

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {}
for _name, (_d, _h, _n) in {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}.items():
    for _p in (2, 4, 8):
        PRESETS[f"Latte-{_name}/{_p}"] = dict(depth=_d, hidden_size=_h, num_heads=_n, patch_size=_p)
PRESETS["Latte-T/2"] = dict(depth=2, hidden_size=384, num_heads=3, patch_size=2)


def make_config(name: str, **overrides) -> LatteConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown Latte preset {name!r}; valid: {', '.join(PRESETS)}")
    return LatteConfig(**{**PRESETS[name], **overrides})


class Block(nn.Module):
    """adaLN-Zero transformer block; `temporal` decides which axis attention runs over."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, T, S, D); c (B, D)."""
        b, t, s, _ = x.shape
        mods = self.ada(c)[:, None, None].chunk(6, dim=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = modulate(self.norm1(x), shift1, scale1)
        if self.temporal:
            h = rearrange(self.attn(rearrange(h, "b t s d -> (b s) t d")), "(b s) t d -> b t s d", b=b)
        else:
            h = rearrange(self.attn(rearrange(h, "b t s d -> (b t) s d")), "(b t) s d -> b t s d", b=b)
        x = x + gate1 * h
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Latte(ClassConditioned, nn.Module):
    def __init__(self, cfg: LatteConfig):
        super().__init__()
        self.config = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        if cfg.input_size % p:
            raise ValueError(f"latent size {cfg.input_size} is not divisible by patch size {p}")
        self.patch = nn.Conv2d(cfg.in_channels, d, p, p)
        g = cfg.input_size // p
        self.register_buffer("pos_spatial", sincos_2d(d, g, g), persistent=False)
        self.register_buffer("pos_temporal", sincos_1d(d, torch.arange(cfg.num_frames)), persistent=False)
        self.t_embed = TimestepEmbedder(d)
        self.y_embed = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout) if cfg.num_classes else None
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, temporal=i % 2 == 1) for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, p * p * cfg.out_channels)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in (*self.t_embed.mlp,):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias) if m.bias is not None else None
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[1].weight)
            nn.init.zeros_(blk.ada[1].bias)
        for m in (self.final_ada[1], self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        w = self.patch.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        b, _, f, hgt, wid = x.shape
        if f > cfg.num_frames:
            raise ValueError(f"{f} latent frames > the model's num_frames {cfg.num_frames}")
        h = self.patch(rearrange(x, "b c t h w -> (b t) c h w"))
        gh, gw = h.shape[-2:]
        h = rearrange(h, "(b t) d gh gw -> b t (gh gw) d", b=b) + self.pos_spatial.to(h.dtype)
        c = self.t_embed(t)
        c = self.condition(c, y)  # y=None on a class-conditional model: the null label
        for i, blk in enumerate(self.blocks):
            if i == 1:  # temporal position embedding, once, before the first temporal block
                h = h + self.pos_temporal[:f, None].to(h.dtype)
            h = checkpoint(blk, h, c, use_reentrant=False) if cfg.grad_checkpointing and self.training else blk(h, c)
        shift, scale = self.final_ada(c)[:, None, None].chunk(2, dim=-1)
        h = self.final(modulate(self.final_norm(h), shift, scale))
        p = cfg.patch_size
        return rearrange(h, "b t (gh gw) (p1 p2 c) -> b c t (gh p1) (gw p2)", gh=gh, gw=gw, p1=p, p2=p)
