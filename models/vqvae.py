"""Video autoencoders: plain AE, KL-VAE, VQ-VAE and KL+VQ, selected by `VAEConfig`.

    x (B, 3, T, H, W) in [-1, 1]  --encoder-->  z (B, E, T/ts, H/ss, W/ss)  --decoder-->  recon
    VQ models also give int64 tokens (B, T/ts, H/ss, W/ss) in [0, n_codes).

Per-frame tokenizers with `motion_radius` R > 0 code frames after the first as cell motion tokens
(models/motion.py; `encode_tokens` / `decode_codes` hand over to it).

The encoder is a stack of levels; each level has `num_res_blocks` ResBlock3d's and then
(except the last) a stride-2 downsample along the axes whose stride is not yet reached.
The decoder mirrors it with sub-pixel (depth-to-space) upsampling.
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .layers import TEMPORAL_PADDINGS, Conv3d, Downsample3d, Normalize, ResBlock3d, Upsample3d


# ---------------------------------------------------------------------------- config
@dataclass
class VAEConfig:
    variant: str = "custom"
    spatial_stride: int = 4
    temporal_stride: int = 4
    embedding_dim: int = 4            # latent channels E
    n_codes: int = 2048               # codebook size K (VQ only; FSQ: the product of fsq_levels)
    quantize: bool = False
    quantizer: str = "vq"             # with quantize: "vq" (EMA codebook) or "fsq" (finite scalar quantization)
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ: levels per latent channel (embedding_dim = len(levels))
    kl: bool = False
    channels: tuple[int, ...] = (32, 64, 128)  # encoder width per level; len-1 >= log2(max stride)
    num_res_blocks: int = 1
    res_blocks: tuple[int, ...] | None = None  # per-level override of num_res_blocks
    causal: bool = False              # causal in time (past-only padding, per-frame norms)
    temporal_padding: str = "zeros"   # "replicate": edge frames padded with copies (codes persist at clip edges)
    group_channels: int = 4           # >= this many channels per GroupNorm group (0: old layout, up to 32 groups)
    dropout: float = 0.0
    kl_weight: float = 1e-3           # weight of kl_loss (mean per latent element) in the total loss
    l1_weight: float = 0.0            # extra L1 reconstruction term (sharper digits, faster early training)
    chroma_weight: float = 0.0        # extra MSE on chroma (each channel minus the pixel's channel mean), see loss
    commitment_cost: float = 0.25
    ema_decay: float = 0.99
    low_utilization_cost: float = 0.0
    in_channels: int = 3
    motion_radius: int = 0            # > 0: frames after the first are cell motion tokens (models/motion.py)

    @property
    def n_tokens(self) -> int:
        """Size of the token vocabulary: the codes, then the motion tokens (motion_radius > 0)."""
        return self.n_codes + ((2 * self.motion_radius + 1) ** 2 if self.motion_radius else 0)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.fsq_levels = tuple(int(n) for n in self.fsq_levels)
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.temporal_padding not in TEMPORAL_PADDINGS:
            raise ValueError(f"temporal_padding must be one of {TEMPORAL_PADDINGS}, got {self.temporal_padding!r}")
        if self.quantizer == "fsq":
            if self.embedding_dim != len(self.fsq_levels) or min(self.fsq_levels) < 2:
                raise ValueError(f"FSQ quantizes each latent channel to its own levels: embedding_dim "
                                 f"{self.embedding_dim} must equal len(fsq_levels {list(self.fsq_levels)}), all >= 2")
            self.quantize, self.n_codes = True, math.prod(self.fsq_levels)
        if self.motion_radius < 0:
            raise ValueError(f"motion_radius must be >= 0, got {self.motion_radius}")
        if self.motion_radius and not (self.quantize and self.temporal_stride == 1):
            raise ValueError(f"motion tokens need a per-frame quantizing tokenizer (temporal_stride 1, VQ/FSQ); got "
                             f"temporal_stride {self.temporal_stride}, quantize {self.quantize}")
        if self.res_blocks is not None:
            self.res_blocks = tuple(int(n) for n in self.res_blocks)
            if len(self.res_blocks) != len(self.channels):
                raise ValueError(f"res_blocks={self.res_blocks} needs one entry per level of channels={self.channels}")
        for name in ("spatial_stride", "temporal_stride"):
            s = getattr(self, name)
            if s < 1 or s & (s - 1):
                raise ValueError(f"{name}={s} must be a power of two")
        need = int(math.log2(max(self.spatial_stride, self.temporal_stride)))
        if len(self.channels) < need + 1:
            raise ValueError(f"strides s{self.spatial_stride} t{self.temporal_stride} need >= {need + 1} "
                             f"levels but channels={self.channels}")

    def blocks_at(self, level: int) -> int:
        return self.res_blocks[level] if self.res_blocks is not None else self.num_res_blocks

    def level_strides(self) -> list[tuple[int, int, int]]:
        """(t, h, w) downsampling stride applied at the end of each level but the last."""
        out, t, s = [], self.temporal_stride, self.spatial_stride
        for _ in range(len(self.channels) - 1):
            st, ss = (2 if t > 1 else 1), (2 if s > 1 else 1)
            out.append((st, ss, ss))
            t, s = t // st, s // ss
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["fsq_levels"] = list(self.channels), list(self.fsq_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"motion_blank"}
        if unknown:
            raise ValueError(f"unknown VAEConfig keys: {sorted(unknown)}")
        d = {"group_channels": 0, **d}  # configs saved before group_channels existed used up to 32 groups
        if d.pop("motion_blank", False):
            raise ValueError("this tokenizer uses the blank motion token, an experiment removed after commit 92eadaa")
        return cls(**d)


def _p(ss, ts, channels, quantize=False, kl=False, num_res_blocks=1, res_blocks=None, **kw):
    return dict(spatial_stride=ss, temporal_stride=ts, channels=channels, quantize=quantize, kl=kl,
                num_res_blocks=num_res_blocks, res_blocks=res_blocks, **kw)


# Upstream names keep their strides and quantize/KL flags. Widths: plain ~16-64, "_a"/"_b" ~32-128
# (32 at full resolution, where 3D convs cost most), "_l" are larger GPU models.
# "_tanh" upstream meant a tanh output; our decoder outputs linearly (MSE vs [-1, 1] targets).
# Upstream-width presets ("_a", "_b", "s8_b") keep upstream's cost: ~16 channels at half resolution
# (stem/head only) and 32-48 at the latent resolution, with patch-merging resampling -- an s4t4 step on
# 2x32x256² takes ~0.46x upstream's time on a 2-core CPU. "_m" are mid-size (CPU-small quality runs),
# "_l" larger GPU models. "_tanh" upstream meant a tanh output; our decoders output linearly.
_UP_A = dict(channels=(16, 32, 32), res_blocks=(0, 1, 0))
_UP_B = dict(channels=(16, 48, 48), res_blocks=(0, 1, 0))
_MID = dict(channels=(32, 96, 128), res_blocks=(1, 2, 1))
PRESETS: dict[str, dict] = {
    "encode111111_decode111111": _p(1, 1, (32,)),
    "encode133111_decode111111": _p(1, 1, (32,)),
    "encode133122_decode144122": _p(2, 1, (16, 32), res_blocks=(0, 1)),
    "encode133122_decode144122_tanh": _p(2, 1, (16, 32), res_blocks=(0, 1)),
    "encode133122_decode144122_tanh_vq": _p(2, 1, (16, 32), res_blocks=(0, 1), quantize=True),
    "encode333222_decode444222_tanh": _p(2, 2, (16, 32), res_blocks=(0, 1)),
    "encode_decode_spatial4x": _p(4, 1, **_UP_A),
    "encode_decode_spatial4x_a": _p(4, 1, **_UP_A),
    "vae_spatial4x_a": _p(4, 1, **_UP_A, kl=True),
    "encode_decode_spatial4x_a_vq": _p(4, 1, **_UP_A, quantize=True),
    "vae_spatial4x_a_vq": _p(4, 1, **_UP_A, quantize=True, kl=True),
    "s4t4": _p(4, 4, **_UP_A),
    "s4t4_a": _p(4, 4, **_UP_A),
    "s4t4_b": _p(4, 4, **_UP_B),
    "s4t4_c": _p(4, 4, (16, 48, 48), res_blocks=(0, 2, 0)),
    "s4t4_b_vq": _p(4, 4, **_UP_B, quantize=True),
    "vae_s4t4_b": _p(4, 4, **_UP_B, kl=True),
    "vae_s4t4_b_vq": _p(4, 4, **_UP_B, quantize=True, kl=True),
    "encode_decode_spatial8x_a": _p(8, 1, (16, 32, 48, 48), res_blocks=(0, 1, 1, 0)),
    # Upstream called s8_b a VQ-VAE but never quantized; here it does (s4 t4, tokens for the GPT).
    "s8_b": _p(4, 4, **_UP_B, quantize=True),
    "s8t8_a": _p(8, 8, (16, 32, 48, 48), res_blocks=(0, 1, 1, 0)),
    "s8t8_b": _p(8, 8, (16, 48, 96, 96), res_blocks=(0, 1, 1, 0)),
    "vae_s8t8_b": _p(8, 8, (16, 48, 96, 96), res_blocks=(0, 1, 1, 0), kl=True),
    "s8t8_b_vq": _p(8, 8, (16, 48, 96, 96), res_blocks=(0, 1, 1, 0), quantize=True),
    "encode_decode_spatial16x_a": _p(16, 1, (16, 32, 64, 64, 64), res_blocks=(0, 1, 1, 1, 0)),
    "s16t16_a": _p(16, 16, (16, 32, 64, 64, 64), res_blocks=(0, 1, 1, 1, 0)),
    "causal_s8t4": _p(8, 4, (32, 64, 128, 128), quantize=True, causal=True),
    # mid-size (CPU-small quality runs)
    "s4t4_m": _p(4, 4, **_MID),
    "s4t4_m_vq": _p(4, 4, **_MID, quantize=True),
    # one latent frame per frame; warm-starts from vae_s4t4_m. Replicate padding: codes persist at the clip's
    # edges (docs/tokenizer.md "Codes that persist": 45% -> 72% of unchanged cells keep their code, same PSNR)
    "s4t1_m_vq": _p(4, 1, **_MID, quantize=True, temporal_padding="replicate"),
    "vae_s4t4_m": _p(4, 4, **_MID, kl=True),
    "vae_s4t2_m": _p(4, 2, **_MID, kl=True),
    "vae_s4t1_m": _p(4, 1, (32, 64, 64), res_blocks=(1, 1, 1), kl=True),
    # larger GPU presets
    "s4t4_l": _p(4, 4, (64, 128, 256), num_res_blocks=2),
    "s4t4_l_vq": _p(4, 4, (64, 128, 256), quantize=True, num_res_blocks=2),
    "vae_s4t4_l": _p(4, 4, (64, 128, 256), kl=True, num_res_blocks=2),
}


def make_config(variant: str, **overrides) -> VAEConfig:
    if variant not in PRESETS:
        raise ValueError(f"unknown VAE variant {variant!r}; valid: {', '.join(PRESETS)}")
    return VAEConfig(variant=variant, **{**PRESETS[variant], **overrides})


# ---------------------------------------------------------------------------- quantizer
def _ddp() -> bool:
    return dist.is_available() and dist.is_initialized()


def _sample_rows(z: torch.Tensor, n: int, noise: float = 0.01) -> torch.Tensor:
    """n random rows of z (N, E) plus noise * std(z) Gaussian noise, so no two picks are equal."""
    idx = torch.randperm(len(z), device=z.device)[:n] if len(z) >= n else torch.randint(len(z), (n,), device=z.device)
    rows = z[idx].float()
    return rows + noise * z.float().std().clamp_min(1e-6) * torch.randn_like(rows)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with an EMA codebook (VQ-VAE-2 style).

    * Codebook (K, E) is a buffer, updated by exponential moving averages of the per-code
      assignment counts and vector sums (Laplace-smoothed counts); in DDP the batch statistics
      are all-reduced so every rank holds the same codebook.
    * The first training batch initialises the codebook with random encoder outputs (+ tiny noise).
    * Loss is only the commitment term beta * MSE(z, sg[q]); gradients pass straight through.
    * low_utilization_cost = lam > 0: every code additionally counts as if its nearest encoder
      output in the batch had been assigned to it with weight lam. This is folded into the EMA
      statistics, so a used code (count >> lam) barely moves while an unused code drifts to the
      data it is closest to instead of staying dead.
    * merge_near_duplicates(d) switches off every code within distance d of a more used one (buffer
      `active`): encoding then picks the nearest active code. Dead-code re-seeding fills the codebook with
      near-copies of common latents (mostly plain black), so one content gets several codes and a code
      seldom survives from one frame to the next even where nothing moved; merging them makes codes persist
      at almost no reconstruction cost (bench/bench_tokens.py --merge). Re-seeded codes are active again.
    """

    def __init__(self, n_codes: int, dim: int, commitment_cost: float = 0.25, ema_decay: float = 0.99,
                 low_utilization_cost: float = 0.0, eps: float = 1e-5, chunk_elems: int | None = None):
        super().__init__()
        self.n_codes, self.dim = n_codes, dim
        self.commitment_cost, self.ema_decay = commitment_cost, ema_decay
        self.low_utilization_cost, self.eps, self.chunk_elems = low_utilization_cost, eps, chunk_elems
        self.register_buffer("codebook", torch.randn(n_codes, dim))
        self.register_buffer("cluster_size", torch.ones(n_codes))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("active", torch.ones(n_codes, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "active", torch.ones(self.n_codes, dtype=torch.bool))  # older checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- nearest code search ------------------------------------------------------
    @torch.no_grad()
    def nearest(self, flat: torch.Tensor, per_code: bool = False):
        """flat (N, E) -> code index per row (N,); with per_code also the nearest row per code (K,).

        Squared distances ||z||^2 - 2 z.C^T + ||C||^2 in float32, in chunks of ~chunk_elems entries
        (the N x K matrix is never materialised whole).
        """
        with torch.autocast(flat.device.type, enabled=False):
            flat, cb = flat.float(), self.codebook.float()
            c2 = (cb * cb).sum(1).masked_fill(~self.active, float("inf"))  # switched-off codes are never picked
            idx = torch.empty(len(flat), dtype=torch.long, device=flat.device)
            best_d = torch.full((self.n_codes,), float("inf"), device=flat.device)
            best_i = torch.zeros(self.n_codes, dtype=torch.long, device=flat.device)
            # CPU: ~1 MB chunks stay in cache (2.3x faster than 128 MB ones); GPU: few large launches
            chunk = self.chunk_elems or (2 ** 28 if flat.is_cuda else 2 ** 18)
            step = max(1, chunk // self.n_codes)
            for s in range(0, len(flat), step):
                f = flat[s:s + step]
                d = torch.addmm(c2, f, cb.t(), alpha=-2.0)  # ||C||^2 - 2 z.C: one fused pass (||z||^2 is per-row constant)
                idx[s:s + step] = d.argmin(1)
                if per_code:
                    d += (f * f).sum(1, keepdim=True)
                    m, j = d.min(0)
                    better = m < best_d
                    best_d, best_i = torch.where(better, m, best_d), torch.where(better, j + s, best_i)
        return (idx, best_i) if per_code else idx

    def vectors_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, E, t, h, w) -> int64 (B, t, h, w)."""
        b, _, t, h, w = z.shape
        return self.nearest(rearrange(z, "b e t h w -> (b t h w) e")).view(b, t, h, w)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 (B, t, h, w) -> codebook vectors (B, E, t, h, w)."""
        return rearrange(F.embedding(codes, self.codebook), "b t h w e -> b e t h w")

    # -- codebook maintenance -----------------------------------------------------
    @torch.no_grad()
    def merge_near_duplicates(self, d: float, usage: torch.Tensor | None = None) -> int:
        """Switch off every code closer than d to a more used active code (greedy in order of usage, default the
        EMA assignment counts). Returns the number of codes left active."""
        usage = self.cluster_size if usage is None else usage.to(self.codebook.device).float()
        dist_ = torch.cdist(self.codebook.float(), self.codebook.float())
        keep = torch.zeros_like(self.active)
        for c in torch.argsort(usage.masked_fill(~self.active, -1.0), descending=True).tolist():
            if self.active[c] and not (dist_[c][keep] < d).any():
                keep[c] = True
        self.active.copy_(keep)
        return int(keep.sum())

    @torch.no_grad()
    def _init_codebook(self, flat):
        self.codebook.copy_(_sample_rows(flat, self.n_codes))
        if _ddp():
            dist.broadcast(self.codebook, 0)
        self.embed_sum.copy_(self.codebook)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat, idx, nearest_row):
        counts = torch.bincount(idx, minlength=self.n_codes).float()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat.float())
        if self.low_utilization_cost > 0:
            counts += self.low_utilization_cost
            sums += self.low_utilization_cost * flat[nearest_row].float()
        if _ddp():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        d = self.ema_decay
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def reinit_dead_codes(self, z_samples: torch.Tensor, usage_counts: torch.Tensor, noise: float = 0.01) -> int:
        """Replace codes with usage_counts == 0 by random encoder outputs + noise * std noise.

        z_samples: (N, E) or (B, E, t, h, w) encoder outputs; usage_counts: (K,) e.g. summed
        `counts` over an epoch. In DDP all-reduce the counts first and call this on every rank
        (rank 0's replacements are broadcast). Returns the number of codes replaced.
        """
        if z_samples.dim() == 5:
            z_samples = rearrange(z_samples, "b e t h w -> (b t h w) e")
        dead = (usage_counts.to(self.codebook.device) == 0)
        n = int(dead.sum())
        if n:
            new = _sample_rows(z_samples.to(self.codebook.device), n, noise)
            if _ddp():
                dist.broadcast(new, 0)
            self.codebook[dead] = new
            self.embed_sum[dead] = new
            self.cluster_size[dead] = 1.0
            self.active[dead] = True
        return n

    # -- forward ------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> dict:
        """z (B, E, t, h, w) -> dict(quantized (straight-through), codes, loss, perplexity, counts)."""
        b, _, t, h, w = z.shape
        flat = rearrange(z, "b e t h w -> (b t h w) e")
        if self.training and not bool(self.initialized):
            self._init_codebook(flat.detach().float())
        update = self.training and self.ema_decay < 1
        per_code = update and self.low_utilization_cost > 0
        res = self.nearest(flat.detach(), per_code=per_code)
        idx, nearest_row = res if per_code else (res, None)
        q = self.codebook[idx]  # codebook rows, taken before the EMA step
        if update:
            self._ema_update(flat.detach(), idx, nearest_row)
        loss = self.commitment_cost * F.mse_loss(flat.float(), q)
        quantized = flat + (q.to(flat.dtype) - flat).detach()
        counts = torch.bincount(idx, minlength=self.n_codes).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        return dict(quantized=rearrange(quantized, "(b t h w) e -> b e t h w", b=b, t=t, h=h, w=w),
                    codes=idx.view(b, t, h, w), loss=loss, perplexity=perplexity, counts=counts)


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantization (FSQ, Mentzer et al. 2023): latent channel i is squashed by a tanh into a
    range that rounds to exactly levels[i] integers, and rounded (straight-through gradient); a code is the
    mixed-radix number of the channels' values, prod(levels) codes in all. There is no codebook to learn, so
    no code can die: no commitment loss, EMA or re-seeding (only a range term, see forward). Quantized vectors
    lie in [-1, 1] per channel."""

    def __init__(self, levels: tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        self.levels, self.n_codes, self.dim = tuple(levels), math.prod(levels), len(levels)
        L = torch.tensor(levels, dtype=torch.float32)
        half = (L - 1) * (1 - eps) / 2
        offset = (L % 2 == 0).float() * 0.5  # even counts: an asymmetric range, e.g. 8 -> {-4, ..., 3}
        self.register_buffer("half_range", half, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half), persistent=False)
        self.register_buffer("radius", torch.floor(L / 2), persistent=False)
        self.register_buffer("basis", torch.tensor([math.prod(levels[:i]) for i in range(len(levels))]),
                             persistent=False)
        self.register_buffer("count", L.long(), persistent=False)

    def _round(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> integers in [-radius, count - 1 - radius] (straight-through)."""
        bounded = torch.tanh(z.float() + self.shift) * self.half_range - self.offset
        return bounded + (bounded.round() - bounded).detach()

    def _codes(self, q: torch.Tensor) -> torch.Tensor:
        return ((q.detach() + self.radius).long() * self.basis).sum(-1)

    def vectors_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous (B, E, t, h, w) -> int64 (B, t, h, w)."""
        return self._codes(self._round(z.movedim(1, -1)))

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 (B, t, h, w) -> quantized vectors (B, E, t, h, w) in [-1, 1]."""
        digits = (codes.unsqueeze(-1) // self.basis) % self.count
        return ((digits - self.radius) / self.radius).movedim(-1, 1)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, E): every code's vector (what a stage mapping tokens through the codebook reads)."""
        return self.codes_to_vectors(torch.arange(self.n_codes, device=self.basis.device).view(1, 1, 1, -1))[0, :, 0, 0].t()

    def reinit_dead_codes(self, z_samples, usage_counts, noise: float = 0.01) -> int:
        return 0  # nothing to re-seed: every code is a fixed point of the grid

    def forward(self, z: torch.Tensor) -> dict:
        """z (B, E, t, h, w) -> dict(quantized (straight-through), codes, loss, perplexity, counts).

        loss keeps the pre-activations where the tanh still has a gradient (|z| <= 3, tanh 0.995): without it
        Adam, which normalises even a vanishing gradient to a full step, drove every channel of a demo
        tokenizer to |z| ~ 8 within 128 steps -- one code for every position (0.1% usage, PSNR 21.8)."""
        q = self._round(z.movedim(1, -1))
        codes = self._codes(q)
        counts = torch.bincount(codes.flatten(), minlength=self.n_codes).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        loss = F.relu(z.float().abs() - 3.0).pow(2).mean()
        return dict(quantized=(q / self.radius).movedim(-1, 1).to(z.dtype), codes=codes, loss=loss,
                    perplexity=perplexity, counts=counts)


# ---------------------------------------------------------------------------- encoder / decoder
def _nontrivial(strides):
    return [st for st in strides if st != (1, 1, 1)]


class Encoder(nn.Module):
    """Pixels -> latent. The first stride is taken by a space-to-depth stem (pixel blocks folded into
    channels, then a conv at reduced resolution), so no 3D conv runs at full resolution: at
    32x256² those dominate the cost of a video VAE."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, c, tp = cfg.channels, cfg.causal, cfg.temporal_padding
        strides = _nontrivial(cfg.level_strides())
        self.stem = strides[0] if strides else (1, 1, 1)
        self.conv_in = Conv3d(cfg.in_channels * math.prod(self.stem), ch[0], 3, causal=c, temporal_padding=tp)
        blocks, prev = [], ch[0]
        for i, width in enumerate(ch):
            for _ in range(cfg.blocks_at(i)):
                blocks.append(ResBlock3d(prev, width, cfg.dropout, causal=c, group_channels=cfg.group_channels,
                                         temporal_padding=tp))
                prev = width
            if i + 1 < len(strides):
                blocks.append(Downsample3d(prev, prev, strides[i + 1]))  # causal by construction
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = Normalize(prev, per_frame=c, group_channels=cfg.group_channels)
        out = cfg.embedding_dim * (2 if cfg.kl else 1)
        self.conv_out = Conv3d(prev, out, 3, causal=c, temporal_padding=tp)

    def forward(self, x):
        t, h, w = self.stem
        x = rearrange(x, "b c (t t2) (h h2) (w w2) -> b (c t2 h2 w2) t h w", t2=t, h2=h, w2=w)
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Decoder(nn.Module):
    """Latent -> pixels, mirroring the encoder; the last stride is a sub-pixel (depth-to-space) head."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, c, tp = cfg.channels, cfg.causal, cfg.temporal_padding
        strides = _nontrivial(cfg.level_strides())
        self.head = strides[0] if strides else (1, 1, 1)
        prev = ch[-1]
        self.conv_in = Conv3d(cfg.embedding_dim, prev, 3, causal=c, temporal_padding=tp)
        blocks = []
        for i in reversed(range(len(ch))):
            for _ in range(cfg.blocks_at(i)):
                blocks.append(ResBlock3d(prev, ch[i], cfg.dropout, causal=c, group_channels=cfg.group_channels,
                                         temporal_padding=tp))
                prev = ch[i]
            if 0 < i < len(strides):
                blocks.append(Upsample3d(prev, ch[i - 1], strides[i]))  # causal by construction
                prev = ch[i - 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = Normalize(prev, per_frame=c, group_channels=cfg.group_channels)
        self.conv_out = Conv3d(prev, cfg.in_channels * math.prod(self.head), 3, causal=c, temporal_padding=tp)

    def forward(self, z):
        t, h, w = self.head
        x = self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(z)))))
        return rearrange(x, "b (c t2 h2 w2) t h w -> b c (t t2) (h h2) (w w2)", t2=t, h2=h, w2=w)


def _unfold_time(src: torch.Tensor, shape, axis: int, block) -> torch.Tensor:
    """A space-to-depth layer's weight that folded k frames into its channels ((c t2 h2 w2) order, t2 = k) ->
    the same layer folding one frame (t2 = 1): input channels summed over the k frames (a still clip gives
    the same output), output channels averaged. Returned unchanged where the shapes say it is not that case."""
    t, h, w = block
    if t != 1 or src.dim() <= axis or src.shape[axis] % shape[axis] or shape[axis] % (h * w):
        return src
    k = src.shape[axis] // shape[axis]
    x = src.movedim(axis, 0)
    x = x.reshape(shape[axis] // (h * w), k, h * w, *x.shape[1:])
    x = x.sum(1) if axis == 1 else x.mean(1)
    return x.reshape(shape[axis], *x.shape[2:]).movedim(0, axis)


# ---------------------------------------------------------------------------- model
def chroma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) -> each channel minus the per-pixel mean over channels (0 for grey pixels)."""
    return x - x.mean(1, keepdim=True)


class VideoVAE(nn.Module):
    """Video autoencoder; `config.kl` adds a Gaussian posterior, `config.quantize` a VQ bottleneck
    (both: the posterior sample is quantized and the KL keeps the latent scale bounded)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = None
        if config.quantize and config.quantizer == "fsq":
            self.quantizer = FiniteScalarQuantizer(config.fsq_levels)
        elif config.quantize:
            self.quantizer = VectorQuantizer(config.n_codes, config.embedding_dim, config.commitment_cost,
                                             config.ema_decay, config.low_utilization_cost)

    @property
    def strides(self) -> tuple[int, int, int]:
        c = self.config
        return c.temporal_stride, c.spatial_stride, c.spatial_stride

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int, int]:
        """(E, t, h, w) of the latent of a (T, H, W) clip; ValueError if not divisible by the strides."""
        st, ss, _ = self.strides
        if T % st or H % ss or W % ss:
            raise ValueError(f"video size (T={T}, H={H}, W={W}) must be divisible by temporal stride {st} "
                             f"and spatial stride {ss} (variant {self.config.variant})")
        return self.config.embedding_dim, T // st, H // ss, W // ss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _posterior(self, x):
        self.latent_shape(*x.shape[2:])
        h = self.encoder(x)
        if not self.config.kl:
            return h, None, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> dict:
        """dict(z, [mean, logvar] for KL, [codes, quantized] for VQ). z is the mean for KL, pre-quant for VQ."""
        z, mean, logvar = self._posterior(x)
        out = dict(z=z)
        if self.config.kl:
            out.update(mean=mean, logvar=logvar)
        if self.quantizer is not None:
            codes = self.quantizer.vectors_to_codes(z)
            out.update(codes=codes, quantized=self.quantizer.codes_to_vectors(codes))
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous latent (B, E, t, h, w) -> video. VQ models: pass quantized vectors."""
        return self.decoder(z)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Tokens (B, t, h, w) -> video (motion tokenizers: models.motion.decode)."""
        if self.config.motion_radius:
            from .motion import decode
            return decode(self, codes)
        return self.decoder(self.quantizer.codes_to_vectors(codes))

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) -> tokens (B, t, h, w): the codes (motion tokenizers: models.motion.encode)."""
        if self.config.motion_radius:
            from .motion import encode
            return encode(self, x)
        return self.encode(x)["codes"]

    @torch.no_grad()
    def load_autoencoder(self, state: dict) -> None:
        """Warm start: copy another autoencoder's encoder and decoder (a VideoVAE state_dict) into this one.

        Every encoder/decoder tensor must find its match (same name and shape), except that a KL encoder's
        output conv (mean and log-variance channels) gives a non-KL encoder its mean half: a trained KL-VAE
        starts a VQ/FSQ tokenizer that encodes to the KL-VAE's posterior mean. A source with more temporal
        stride (same widths) starts a model that folds no time into channels where the source did (e.g. s4t4 ->
        s4t1, one latent frame per frame): the space-to-depth layers are collapsed over their frame pairs
        (inputs summed, outputs averaged), exact for a clip that holds still. The quantizer is not touched
        (a VQ codebook seeds itself from the first batch). ValueError, copying nothing, if anything is missing.
        """
        own = {k: v for k, v in self.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        folds = self._folded_layers()
        take, bad = {}, []
        for name, dst in own.items():
            src = state.get(name)
            if src is not None and name.startswith("encoder.conv_out.") and src.shape[0] == 2 * dst.shape[0]:
                src = src[:dst.shape[0]]  # KL posterior: (mean, logvar) channels -> mean
            layer = name.rsplit(".", 1)[0]
            if src is not None and layer in folds and src.shape != dst.shape:
                src = _unfold_time(src, dst.shape, *folds[layer])
            if src is None or src.shape != dst.shape:
                bad.append(f"{name} {tuple(dst.shape)} <- {None if src is None else tuple(src.shape)}")
            else:
                take[name] = src
        if bad:
            raise ValueError(f"{len(bad)} encoder/decoder tensors do not match (same variant, widths and --embedding_dim "
                             f"needed): " + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))
        for name, src in take.items():
            own[name].copy_(src)

    def _folded_layers(self) -> dict[str, tuple[int, tuple[int, int, int]]]:
        """Layers whose channels fold a (t, h, w) pixel block: name -> (folded weight axis, block)."""
        out = {"encoder.conv_in": (1, self.encoder.stem), "decoder.conv_out": (0, self.decoder.head)}
        for name, mod in self.named_modules():
            if isinstance(mod, (Downsample3d, Upsample3d)):
                out[f"{name}.conv"] = (1 if isinstance(mod, Downsample3d) else 0, mod.stride)
        return out

    def forward(self, x: torch.Tensor, sample_posterior: bool = True) -> dict:
        """dict(recon, loss, recon_loss, kl_loss, vq_loss, perplexity, counts, z[, codes]).

        loss = recon_loss + vq_loss + kl_weight * kl_loss. counts (K,) float per-batch code
        usage for VQ models, else None; perplexity is 0 for non-VQ models.
        """
        z, mean, logvar = self._posterior(x)
        zero = x.new_zeros(())
        kl_loss = vq_loss = perplexity = zero
        out = dict(counts=None)
        if self.config.kl:
            if sample_posterior:
                z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            kl_loss = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
        out["z"] = z
        if self.quantizer is not None:
            vq = self.quantizer(z)
            z, vq_loss, perplexity = vq["quantized"], vq["loss"], vq["perplexity"]
            out.update(codes=vq["codes"], counts=vq["counts"])
        recon = self.decoder(z)
        recon_loss = F.mse_loss(recon.float(), x.float())
        loss = recon_loss + vq_loss + self.config.kl_weight * kl_loss
        if self.config.l1_weight:
            loss = loss + self.config.l1_weight * F.l1_loss(recon.float(), x.float())
        if self.config.chroma_weight:
            # Colour is the last thing an RGB MSE teaches: the mean-colour (grey) direction carries ~16x the
            # variance of each chroma direction in Flying MNIST (channel levels ~U[0.17, 1]: mean 0.58, std 0.25),
            # and gradient descent learns directions in order of their variance. This term weights chroma up.
            loss = loss + self.config.chroma_weight * F.mse_loss(chroma(recon.float()), chroma(x.float()))
        out.update(recon=recon, loss=loss, recon_loss=recon_loss, kl_loss=kl_loss, vq_loss=vq_loss,
                   perplexity=perplexity)
        return out
