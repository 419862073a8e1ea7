"""Mamba (selective state-space) language model over video codes.

Uses the `mamba-ssm` CUDA kernels when installed (GPU), else a pure-PyTorch selective scan that runs
anywhere: chunked (exact, log-space within chunks of `chunk` steps) for training, and a recurrent step
for generation, so producing each token costs the same whatever the length generated so far.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.cfg import ClassConditioned, reanchor
from models.cfg import guide as cfg_guide
from models.layers import GridPositions, LabelEmbedder


@dataclass
class MambaConfig:
    vocab_size: int = 5121
    d_model: int = 768
    n_layer: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    pad_vocab_multiple: int = 8
    use_kernels: bool = True        # use mamba-ssm's fused scan when importable and on CUDA
    grid: tuple[int, int, int] | None = None   # code grid (t, h, w): absolute positions (None: none, legacy)
    block_size: int = 0             # training window: generation restarts its state within windows this long
                                    # (0: one unbounded recurrence, legacy)
    num_classes: int = 0            # > 0: conditioned on a multi-hot label set (as models.gpt), CFG dropout
    class_dropout: float = 0.1

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.d_model / 16)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid) if self.grid else None
        return d


def selective_scan_ref(u, delta, A, B, C, D, h0=None):
    """Naive loop. u, delta (b, d, l); A (d, n); B, C (b, n, l); D (d). Returns y (b, d, l), h (b, d, n)."""
    b, d, l = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, -1) + u * D[None, :, None], h


def selective_scan(u, delta, A, B, C, D, h0=None, chunk: int = 16):
    """Same result as selective_scan_ref, `chunk` steps at a time: inside a chunk the recurrence
    h_t = a_t h_{t-1} + x_t is solved in closed form with cumulative log-decays (all <= 0, so stable)."""
    b, d, l = u.shape
    n = A.shape[1]
    h = u.new_zeros(b, d, n) if h0 is None else h0
    ys = []
    for s in range(0, l, chunk):
        e = min(l, s + chunk)
        dA = delta[:, :, s:e, None] * A[None, :, None]                      # (b, d, k, n) log-decays
        x = delta[:, :, s:e, None] * B[:, None, :, s:e].transpose(-1, -2) * u[:, :, s:e, None]  # (b, d, k, n)
        cum = dA.cumsum(2)                                                   # (b, d, k, n)
        # decay from step j to step i (j <= i): exp(cum_i - cum_j)
        seg = cum[:, :, :, None] - cum[:, :, None, :]                        # (b, d, k_i, k_j, n)
        k = e - s
        mask = torch.ones(k, k, dtype=torch.bool, device=u.device).tril()
        w = torch.exp(seg.masked_fill(~mask[None, None, :, :, None], -float("inf")))
        hs = torch.einsum("bdijn,bdjn->bdin", w, x) + torch.exp(cum) * h[:, :, None]
        ys.append(torch.einsum("bdin,bni->bdi", hs, C[:, :, s:e]))
        h = hs[:, :, -1]
    return torch.cat(ys, -1) + u * D[None, :, None], h


class MambaBlock(nn.Module):
    def __init__(self, c: MambaConfig):
        super().__init__()
        self.c = c
        di = c.d_inner
        self.norm = nn.RMSNorm(c.d_model, eps=1e-5)
        self.in_proj = nn.Linear(c.d_model, 2 * di, bias=False)
        self.conv = nn.Conv1d(di, di, c.d_conv, groups=di, padding=c.d_conv - 1)
        self.x_proj = nn.Linear(di, c.dt_rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(c.dt_rank, di)
        dt = torch.exp(torch.rand(di) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, c.d_state + 1).float()).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, c.d_model, bias=False)

    def _ssm_params(self, xc):
        """xc (b, l, di) -> delta (b, di, l), B, C (b, n, l)."""
        c = self.c
        dbc = self.x_proj(xc)
        dt, B, C = dbc.split([c.dt_rank, c.d_state, c.d_state], -1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)
        return delta, B.transpose(1, 2), C.transpose(1, 2)

    def forward(self, x, state: dict | None = None):
        """x (b, l, d). With `state` (generation), l must be 1 and the conv/SSM states are updated in place."""
        res = x
        xz = self.in_proj(self.norm(x))
        xs, z = xz.chunk(2, -1)
        A = -torch.exp(self.A_log.float())
        if state is None:
            xc = F.silu(self.conv(xs.transpose(1, 2))[..., :x.shape[1]]).transpose(1, 2)
            delta, B, C = self._ssm_params(xc)
            if self.c.use_kernels and xc.is_cuda and _kernels() is not None:
                y = _kernels()(xc.transpose(1, 2).contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(),
                               self.D.float(), delta_softplus=False)
            else:
                y, _ = selective_scan(xc.transpose(1, 2).float(), delta.float(), A, B.float(), C.float(), self.D.float())
            y = y.transpose(1, 2).to(x.dtype)
        else:
            conv_state = torch.cat([state.get("conv", xs.new_zeros(x.shape[0], self.c.d_inner, self.c.d_conv - 1)),
                                    xs.transpose(1, 2)], -1)[..., -self.c.d_conv:]
            state["conv"] = conv_state[..., 1:]
            xc = F.silu((conv_state * self.conv.weight.squeeze(1)).sum(-1) + self.conv.bias)[:, None]
            delta, B, C = self._ssm_params(xc)
            h = state.get("ssm", torch.zeros(x.shape[0], self.c.d_inner, self.c.d_state, device=x.device))
            h = torch.exp(delta[:, :, 0, None].float() * A) * h + (delta[:, :, 0, None] * B[:, None, :, 0] * xc.transpose(1, 2)).float()
            state["ssm"] = h
            y = ((h * C[:, None, :, 0].float()).sum(-1) + self.D * xc[:, 0].float())[:, None].to(x.dtype)
        return res + self.out_proj(y * F.silu(z))


_KERNEL = "unset"


def _kernels():
    global _KERNEL
    if _KERNEL == "unset":
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            _KERNEL = selective_scan_fn
        except Exception:  # not installed, or built for another torch/CUDA
            _KERNEL = None
    return _KERNEL


class MambaLM(ClassConditioned, nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = c = config
        self.y_embed = LabelEmbedder(c.num_classes, c.d_model, c.class_dropout) if c.num_classes else None
        v = math.ceil(c.vocab_size / c.pad_vocab_multiple) * c.pad_vocab_multiple
        self.wte = nn.Embedding(v, c.d_model)
        nn.init.normal_(self.wte.weight, std=0.02)
        self.pos3d = None
        if c.grid:
            self.pos3d = GridPositions(c.grid, c.d_model)
            for e in (self.pos3d.t, self.pos3d.h, self.pos3d.w):
                nn.init.normal_(e.weight, std=0.02)
        self.blocks = nn.ModuleList(MambaBlock(c) for _ in range(c.n_layer))
        self.norm_f = nn.RMSNorm(c.d_model, eps=1e-5)
        self.head = nn.Linear(c.d_model, v, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx, start=0, targets=None, states: list | None = None, y: torch.Tensor | None = None):
        """Same interface as models.gpt.GPT: idx (B, L) whose first token sits at sequence position `start`
        (absolute (t, h, w) positions when the config has a grid: a training window starts at any offset
        from a zero state, and so does each generation window)."""
        x = self.wte(idx)
        if self.pos3d is not None:
            x = x + self.pos3d(GridPositions.index(start, idx.shape[1], idx.device))
        if self.y_embed is not None:  # the label set's embedding on every token (see models.gpt)
            x = x + self.condition(x.new_zeros(len(idx), x.shape[-1]), y)[:, None]
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if states is None else states[i])
        logits = self.head(self.norm_f(x))[..., :self.config.vocab_size]
        loss = None if targets is None else F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens, opts=None, y=None, generator=None, use_cache=True, processors=(),
                 reader=None, background=None):
        """Recurrent generation (each new token costs O(1)), with models.gpt.GPT.generate's interface (use_cache is
        accepted: the recurrent state is the cache; reader: Mamba reads no extra inputs). With config.block_size,
        every prediction reads a window of at most block_size tokens fed from a zero state, as in training: when the
        window is full it restarts from its last half (block_size // 2 tokens fed again)."""
        from models.gpt import TokenSampling, sample_logits, twice

        opts = opts or TokenSampling()
        guided = y is not None and self.y_embed is not None and opts.cfg_scale != 1.0
        labels = torch.cat([y, self.null_label_like(y)]) if guided else y
        bs = self.config.block_size
        seq, anchor = prompt, max(0, prompt.shape[1] - bs) if bs else 0

        def step(token, pos, states):  # (B, V) guided logits after feeding one token
            out = self(twice(token) if guided else token, start=pos, states=states, y=labels)[0][:, -1].float()
            return cfg_guide(out, opts.cfg_scale) if guided else out

        def window():  # the window's tokens fed from zero states: (logits of its last token, states)
            states = [{} for _ in self.blocks]
            for i in range(anchor, seq.shape[1]):
                logits = step(seq[:, i:i + 1], i, states)
            return logits, states

        logits, states = window()
        for _ in range(max_new_tokens):
            for process in processors:
                logits = process(seq, logits)
            nxt = sample_logits(logits, opts, generator, background)
            seq = torch.cat([seq, nxt], 1)
            if bs and reanchor(seq.shape[1], anchor, bs) != anchor:
                anchor = reanchor(seq.shape[1], anchor, bs)
                logits, states = window()
            else:
                logits = step(nxt, seq.shape[1] - 1, states)
        return seq
