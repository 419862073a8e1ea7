"""nanoGPT-style decoder over flattened video code grids (frames x height x width), with absolute
3D-factorised (or 1D) position embeddings -- a token keeps its (t, h, w) position wherever the training
window or the generation window starts -- SDPA attention, and KV-cache generation. Sampling settings travel as
one `TokenSampling`; each policy (guidance, temperatures, top-k/p, allowed tokens) is a small function beside
`GPT.generate`.

Sequence layout: [BOS, c_0, c_1, ...] with codes in raster order; BOS = vocab_size - 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from models.cfg import ClassConditioned, reanchor
from models.cfg import guide as cfg_guide
from models.layers import GridPositions, LabelEmbedder
from models.motion import PreviousInk


@dataclass
class GPTConfig:
    vocab_size: int = 5121           # n_codes + 1 (BOS)
    grid: tuple[int, int, int] = (8, 64, 64)   # (t, h, w) of one video's code grid
    block_size: int = 1024           # context window (tokens)
    n_layer: int = 8
    n_head: int = 6
    n_embd: int = 768
    dropout: float = 0.2
    bias: bool = True
    pos_emb: str = "3d"              # "3d": factorised t/h/w tables; "1d": one table over the whole video
    context_stride: int = 1          # > 1: sparse context window (see context_positions)
    context_dense: int = 32          # with context_stride > 1: the last tokens kept densely
    num_classes: int = 0             # > 0: conditioned on a multi-hot label set (the digits present), CFG dropout
    class_dropout: float = 0.1       # training: whole-prompt dropout to the null label (classifier-free guidance)
    prev_frames: int = 0             # > 0: each token's input also reads the codes around its grid cell in the
    prev_radius: int = 2             # previous prev_frames frames ((2 r + 1)^2 cells each; see NeighbourCodes)
    prev_dim: int = 32               # embedding width of those neighbour codes
    same_frame: bool = False         # with prev_frames: also the cells already generated around it in its own frame
    read_ink: bool = False           # motion tokens: each token also reads which cells of the previous *decoded*
    ink_radius: int = 2              # frame hold ink, (2 r + 1)^2 around its own (models.motion.PreviousInk)
    ink_edges: bool = False          # with read_ink: cells off the frame read -1, not 0 (the frame's edge is seen)

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} not divisible by n_head {self.n_head}")
        if self.ink_radius < 0:
            raise ValueError(f"ink_radius must be >= 0, got {self.ink_radius}")
        if self.prev_frames < 0 or self.prev_radius < 0:
            raise ValueError("prev_frames and prev_radius must be >= 0")
        if self.context_stride < 1 or (self.context_stride > 1 and not 0 < self.context_dense < self.block_size):
            raise ValueError(f"sparse context needs context_stride >= 1 and 0 < context_dense ({self.context_dense}) "
                             f"< block_size ({self.block_size})")

    @property
    def seq_len(self) -> int:
        return math.prod(self.grid) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d


@dataclass
class TokenSampling:
    """How a token model draws: one object from the command line (or a checkpoint's recipe) to GPT.generate.
    temperature 0 is greedy; top_k / top_p None: off; cfg_scale: classifier-free guidance on the logits (1: none);
    ink_temperature (None: off): the digit codes' own temperature (`sample_logits`)."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    ink_temperature: float | None = None


def context_positions(length: int, block_size: int, stride: int = 1, dense: int = 0) -> list[int]:
    """Sequence positions (ascending) a model reads to predict the token at position `length`.

    stride 1: the last block_size tokens. stride s > 1 (upstream's --sparse_context_window): the last
    `dense` tokens, then every s-th token before them, block_size tokens in all, reaching back
    (block_size - dense) * s + dense tokens; until the sequence is that long, the plain dense window."""
    if length <= block_size:
        return list(range(length))
    span = (block_size - dense) * stride + dense
    if stride == 1 or length < span:
        return list(range(length - block_size, length))
    first = length - dense - stride * (block_size - dense)
    return list(range(first, length - dense, stride)) + list(range(length - dense, length))


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_drop = nn.Dropout(c.dropout)

    def forward(self, x, cache: dict | None = None):
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_head)
        if cache is not None:
            if "k" in cache:  # decode step(s): attend to everything cached (all in the past)
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            keep = cache["max"]  # never more keys than the window the model was trained on
            cache["k"], cache["v"] = k[:, :, -keep:], v[:, :, -keep:]
        causal = q.shape[2] == k.shape[2]
        if not causal and q.shape[2] > 1:  # several new tokens after a cached prefix
            lq, lk = q.shape[2], k.shape[2]
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(rearrange(y, "b h l d -> b l (h d)")))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias), nn.Dropout(c.dropout))

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class NeighbourCodes(nn.Module):
    """What a token at grid cell (t, y, x) can read of the frames before it, as one input vector: the codes of
    cells (t - dt, y + dy, x + dx), dt = 1..frames, |dy|, |dx| <= radius (same_frame: also dt = 0 for the cells
    before it in raster order: dy < 0, or dy = 0 and dx < 0), each embedded (prev_dim) and placed by its offset
    (one linear map of the concatenation), "outside" for cells off the grid or before frame 0.

    A digit moving by less than a cell per frame changes its codes from frame to frame; predicting the new
    codes needs the old ones around the same place, bound to their offsets. Attention can only learn to pick
    them one head per offset; this hands them to every token (a causal convolution over earlier frames).
    Sequence position p (input token c_{p-1}, BOS at 0) predicts code p, so it reads the cells around code p's
    cell -- all in earlier frames, hence already in the sequence (positions <= p) when p is computed."""

    def __init__(self, grid, frames: int, radius: int, vocab_size: int, dim: int, out_dim: int, same_frame: bool = False):
        super().__init__()
        t, h, w = grid
        r = range(-radius, radius + 1)
        offsets = [(dt, dy, dx) for dt in range(1, frames + 1) for dy in r for dx in r]
        if same_frame:  # the causal half of its own frame's neighbourhood (PixelCNN-like): generated before it
            offsets += [(0, dy, dx) for dy in r for dx in r if dy < 0 or (dy == 0 and dx < 0)]
        code = torch.arange(t * h * w)
        ct, cy, cx = code // (h * w), (code // w) % h, code % w
        cols = []
        for dt, dy, dx in offsets:
            nt, ny, nx = ct - dt, cy + dy, cx + dx
            ok = (nt >= 0) & (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            cols.append(torch.where(ok, nt * h * w + ny * w + nx + 1, -1))  # sequence position of that code
        table = torch.stack(cols, 1)  # (codes, K): row p = what position p reads (the last code predicts nothing)
        self.register_buffer("table", table, persistent=False)
        self.outside = vocab_size
        self.embed = nn.Embedding(vocab_size + 1, dim)
        self.proj = nn.Linear(len(offsets) * dim, out_dim, bias=False)

    def forward(self, history: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """history (B, S) the sequence [BOS, c_0, ...] up to (at least) the largest of `pos` (B, L) -> (B, L, out_dim)."""
        nb = self.table[pos.clamp(max=len(self.table) - 1)]  # (B, L, K)
        if history.shape[0] != nb.shape[0]:
            nb = nb.expand(history.shape[0], -1, -1)
        if int(nb.max()) >= history.shape[1]:
            raise ValueError(f"history of {history.shape[1]} tokens is too short for positions up to {int(pos.max())}")
        codes = history.gather(1, nb.clamp(min=0).flatten(1)).view(nb.shape)
        codes = codes.masked_fill(nb < 0, self.outside)
        return self.proj(self.embed(codes).flatten(2))


class GPT(ClassConditioned, nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        # label prompt: one embedding of the label set added to every token, so every window sees it
        self.y_embed = LabelEmbedder(c.num_classes, c.n_embd, c.class_dropout) if c.num_classes else None
        if c.pos_emb == "3d":
            self.pos3d = GridPositions(c.grid, c.n_embd)
            self.register_load_state_dict_pre_hook(_rename_legacy_positions)
        elif c.pos_emb == "1d":
            self.pos = nn.Embedding(c.seq_len, c.n_embd)
        else:
            raise ValueError(f"pos_emb must be '3d' or '1d', got {c.pos_emb!r}")
        self.neighbours = NeighbourCodes(c.grid, c.prev_frames, c.prev_radius, c.vocab_size, c.prev_dim, c.n_embd,
                                         c.same_frame) if c.prev_frames else None
        self.prev_ink = PreviousInk(c.grid, c.ink_radius, c.n_embd, c.ink_edges) if c.read_ink else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def position(self, pos: torch.Tensor) -> torch.Tensor:
        """Embedding of sequence positions (0 = BOS: no position; i >= 1 = code i - 1 of the grid)."""
        return self.pos(pos) if self.config.pos_emb == "1d" else self.pos3d(pos)

    def forward(self, idx: torch.Tensor, start: int | torch.Tensor = 0, targets: torch.Tensor | None = None,
                caches: list | None = None, y: torch.Tensor | None = None, history: torch.Tensor | None = None,
                ink: torch.Tensor | None = None):
        """idx (B, L) tokens whose first sits at sequence position `start` (int or (B,) tensor), or at
        explicit positions `start` (B, L) (sparse context windows); y (B, num_classes) multi-hot label sets of
        a class-conditional model (None: the null label); history (B, S): the whole sequence [BOS, c_0, ...]
        at least up to idx's last position (needed with prev_frames > 0: earlier frames outside the window);
        ink (B, t h w): which cells of each decoded frame hold ink (needed with read_ink; PreviousInk).
        Returns (logits (B, L, V), loss or None)."""
        table = self.wte.weight
        pos = GridPositions.index(start, idx.shape[1], idx.device)
        x = F.embedding(idx, table) + self.position(pos)
        if self.neighbours is not None:
            if history is None:
                raise ValueError("a GPT with prev_frames > 0 needs history= (the sequence before its window)")
            x = x + self.neighbours(history, pos)
        if self.prev_ink is not None:
            if ink is None:
                raise ValueError("a GPT with read_ink needs ink= (the ink map of its decoded frames)")
            x = x + self.prev_ink(ink, pos)
        if self.y_embed is not None:
            x = x + self.condition(x.new_zeros(len(idx), x.shape[-1]), y)[:, None]
        x = self.drop(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if caches is None else caches[i])
        logits = F.linear(self.ln_f(x), table)  # tied: self.head.weight is self.wte.weight
        loss = None if targets is None else F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, opts: TokenSampling = TokenSampling(),
                 y: torch.Tensor | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
                 processors: tuple[Callable, ...] = (), reader: Callable | None = None,
                 background: torch.Tensor | None = None) -> torch.Tensor:
        """Continue `prompt` (B, L0; BOS at position 0) by max_new_tokens draws. Each prediction reads a training-like
        window of <= block_size tokens whose keys were all computed inside it (full: re-anchored to its last half,
        models.cfg.reanchor), cached with use_cache, else recomputed (the same logits); a sparse context recomputes
        its strided window. y: label prompts; processors: (seq, logits) -> logits (`below`, motion.token_ranges);
        reader: seq -> extra forward() inputs (motion.InkTracker); background: the mask opts.ink_temperature needs."""
        if self.prev_ink is not None and reader is None:
            raise ValueError("a GPT with read_ink samples with reader= (the ink map of its decoded frames)")
        guided = y is not None and self.y_embed is not None and opts.cfg_scale != 1.0
        labels = torch.cat([y, self.null_label_like(y)]) if guided else y
        seq, bs, sparse = prompt, self.config.block_size, self.config.context_stride > 1
        anchor, caches, logits = max(0, prompt.shape[1] - bs), None, None

        def last_logits(x, start):
            extra = {"history": seq} if self.neighbours is not None else {}
            extra.update(reader(seq) if reader is not None else {})
            if guided:
                x, start = twice(x), twice(start)
                extra = {k: twice(v) for k, v in extra.items()}
            out = self(x, start=start, caches=caches, y=labels, **extra)[0][:, -1].float()
            return cfg_guide(out, opts.cfg_scale) if guided else out

        while seq.shape[1] - prompt.shape[1] < max_new_tokens:
            if sparse:
                pos = torch.tensor(context_positions(seq.shape[1], bs, self.config.context_stride,
                                                     self.config.context_dense), device=seq.device)
                logits = last_logits(seq[:, pos], pos.expand(len(seq), -1))
            elif logits is None or not use_cache or reanchor(seq.shape[1], anchor, bs) != anchor:
                anchor = anchor if logits is None else reanchor(seq.shape[1], anchor, bs)
                caches = [{"max": bs} for _ in self.blocks] if use_cache else None
                logits = last_logits(seq[:, anchor:], anchor)
            else:
                logits = last_logits(seq[:, -1:], seq.shape[1] - 1)
            for process in processors:
                logits = process(seq, logits)
            seq = torch.cat([seq, sample_logits(logits, opts, generator, background)], 1)
        return seq


def twice(x):
    """A batch twice over (the conditional and null-label halves of classifier-free guidance); ints pass through."""
    return torch.cat([x, x]) if torch.is_tensor(x) and x.dim() else x


def below(n: int) -> Callable:
    """A GPT.generate processor: only tokens < n (the codes; not BOS) can be drawn."""
    def processor(seq: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([logits[:, :n], torch.full_like(logits[:, n:], -float("inf"))], 1)
    return processor


def outside_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) bool: the tokens below each row's k-th largest logit (what top-k sampling drops)."""
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[:, -1:]
    return logits < kth


def _rename_legacy_positions(module, state_dict, prefix, *args):
    """Checkpoints written before GridPositions named its tables pos_t / pos_h / pos_w."""
    for axis in "thw":
        old = f"{prefix}pos_{axis}.weight"
        if old in state_dict:
            state_dict[f"{prefix}pos3d.{axis}.weight"] = state_dict.pop(old)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (nucleus sampling)."""
    srt, order = torch.sort(logits, descending=True)
    p = srt.softmax(-1)
    srt = srt.masked_fill(p.cumsum(-1) - p > top_p, -float("inf"))
    return torch.full_like(logits, -float("inf")).scatter(1, order, srt)


def ink_split(probs: torch.Tensor, logits: torch.Tensor, temperature: float, ink_temperature: float,
              background: torch.Tensor) -> torch.Tensor:
    """Draw probabilities where whether the token is a background code keeps the plain distribution's odds (so a
    digit keeps the ink the model gives it), and which digit code is drawn at ink_temperature (0: the most likely)
    among those top-k / top-p kept. A cooler draw of the whole distribution instead hands a digit's uncertain edge
    cells to the background code, frame after frame: the digits erode (docs/token_path.md)."""
    bg = background.to(logits.device)[: logits.shape[-1]]
    ink = logits.masked_fill(bg, -float("inf"))  # digit codes only
    if ink_temperature == 0:
        ink_p = F.one_hot(ink.argmax(-1), logits.shape[-1]).to(probs.dtype)
    else:
        ink_p = (ink * (temperature / ink_temperature)).softmax(-1)
    ink_mass = probs.masked_fill(bg, 0).sum(-1, keepdim=True)
    ink_p = torch.where(torch.isfinite(ink).any(-1, keepdim=True), ink_p, 0)  # no digit code left: mass 0 anyway
    return probs.masked_fill(~bg, 0) + ink_mass * ink_p


def sample_logits(logits: torch.Tensor, opts: TokenSampling = TokenSampling(),
                  generator: torch.Generator | None = None, background: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) tokens drawn as `opts` says (temperature 0: greedy; then top-k, top-p, and the
    digit codes' own temperature, which needs `background`, the (V,) bool mask of background codes)."""
    if opts.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / opts.temperature
    if opts.top_k:
        logits = logits.masked_fill(outside_top_k(logits, opts.top_k), -float("inf"))
    if opts.top_p is not None and opts.top_p < 1.0:
        logits = top_p_filter(logits, opts.top_p)
    probs = logits.softmax(-1)
    if opts.ink_temperature is not None and opts.ink_temperature != opts.temperature:
        if background is None:
            raise ValueError("ink_temperature needs the background codes (a (V,) bool mask)")
        probs = ink_split(probs, logits, opts.temperature, opts.ink_temperature, background)
    return torch.multinomial(probs, 1, generator=generator)
