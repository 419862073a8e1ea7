"""nanoGPT-style decoder over flattened video code grids (frames x height x width), with absolute
3D-factorised (or 1D) position embeddings -- a token keeps its (t, h, w) position wherever the training
window or the generation window starts -- SDPA attention, and KV-cache generation with
temperature, top-k and top-p.

Sequence layout: [BOS, c_0, c_1, ...] with codes in raster order; BOS = vocab_size - 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from models.cfg import ClassConditioned, reanchor
from models.cfg import guide as cfg_guide
from models.layers import GridPositions, LabelEmbedder


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
    label_modulation: bool = False   # with num_classes: every block's layer norms are also scaled and shifted by the
                                     # label embedding (adaLN, as VAR and DiT condition), not only the input tokens
    code_dim: int = 0                # > 0: each code's embedding also gets a learned projection of its codebook
                                     # vector (set_code_vectors), so codes that decode alike start out alike
    prev_frames: int = 0             # > 0: each token's input also reads the codes around its grid cell in the
    prev_radius: int = 2             # previous prev_frames frames ((2 r + 1)^2 cells each; see NeighbourCodes)
    prev_dim: int = 32               # embedding width of those neighbour codes
    same_frame: bool = False         # with prev_frames: also the cells already generated around it in its own frame
    read_ink: bool = False           # each token also reads which cells of the previous *decoded* frame hold ink,
    ink_radius: int = 2              # (2 r + 1)^2 around its own (PreviousInk; the sampler decodes as it goes)
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
        # label modulation: (scale, shift) of both layer norms from the label embedding; GPT.__init__ zeroes it, so
        # training starts from the plain block
        self.modulation = nn.Linear(c.n_embd, 4 * c.n_embd) if c.num_classes and c.label_modulation else None

    def forward(self, x, cache=None, label=None):
        """x (B, L, D); label (B, D): the label embedding (used when the block modulates its norms)."""
        if self.modulation is None:
            x = x + self.attn(self.ln1(x), cache)
            return x + self.mlp(self.ln2(x))
        s1, b1, s2, b2 = self.modulation(F.silu(label))[:, None].chunk(4, -1)
        x = x + self.attn(self.ln1(x) * (1 + s1) + b1, cache)
        return x + self.mlp(self.ln2(x) * (1 + s2) + b2)


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


class PreviousInk(nn.Module):
    """What a token at grid cell (t, y, x) can see of the pixels before it: which cells (t - 1, y + dy, x + dx),
    |dy|, |dx| <= radius, of the previous *decoded* frame hold ink (models.vqvae.cell_ink), one linear map of those
    (2 r + 1)^2 bits; zero in the first frame, and for cells off the grid (edges: -1 there, so the edge a digit
    bounces off is seen like the ink it moves).

    A motion token moves a block of the previous decoded frame, so what it draws depends on pixels the tokens
    alone do not show: where a digit's ink is after all the moves so far. Without them a GPT on motion tokens
    leaves the still token on cells a digit has just left (its ink stays behind: streaks) and moves digits out of
    the frame instead of bouncing. The ink map is a function of the tokens before the cell's frame (decode them),
    so it adds no information the sequence does not hold, only computation the model could not do.
    Sequence position p predicts code p and reads frame (p // (h w)) - 1, complete by then."""

    def __init__(self, grid, radius: int, out_dim: int, edges: bool = False):
        super().__init__()
        t, h, w = grid
        self.edges = edges
        r = range(-radius, radius + 1)
        code = torch.arange(t * h * w)
        ct, cy, cx = code // (h * w), (code // w) % h, code % w
        cols = []
        for dy in r:
            for dx in r:
                ny, nx = cy + dy, cx + dx
                on = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
                idx = torch.where(on, (ct - 1) * h * w + ny * w + nx, -1)  # that cell's index in the ink map
                cols.append(torch.where(ct >= 1, idx, -2))  # -1: off the frame, -2: no frame before
        self.register_buffer("table", torch.stack(cols, 1), persistent=False)  # (codes, K)
        self.proj = nn.Linear(len(cols), out_dim, bias=False)

    def forward(self, ink: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ink (B, t h w) 0/1 per cell of every decoded frame (frames not yet decoded: anything; never read),
        pos (B, L) sequence positions -> (B, L, out_dim)."""
        nb = self.table[pos.clamp(max=len(self.table) - 1)]  # (B, L, K)
        if ink.shape[0] != nb.shape[0]:
            nb = nb.expand(ink.shape[0], -1, -1)
        bits = ink.to(self.proj.weight.dtype).gather(1, nb.clamp(min=0).flatten(1)).view(nb.shape)
        bits = bits.masked_fill(nb < 0, 0)
        if self.edges:
            bits = bits.masked_fill(nb == -1, -1)
        return self.proj(bits)


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
        if c.code_dim:  # the tokenizer's code vectors (BOS row 0), normalised; a projection of them joins the table
            self.register_buffer("code_vectors", torch.zeros(c.vocab_size, c.code_dim))
            self.code_proj = nn.Linear(c.code_dim, c.n_embd, bias=False)
        self.apply(self._init)
        for blk in self.blocks:
            if blk.modulation is not None:
                nn.init.zeros_(blk.modulation.weight)
                nn.init.zeros_(blk.modulation.bias)
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

    @torch.no_grad()
    def set_code_vectors(self, vectors: torch.Tensor) -> None:
        """(n_codes, code_dim) codebook vectors of the tokenizer (code_dim > 0), standardised per channel."""
        c = self.config
        if not c.code_dim or tuple(vectors.shape) != (c.vocab_size - 1, c.code_dim):
            raise ValueError(f"code vectors of shape {tuple(vectors.shape)} for a GPT with {c.vocab_size - 1} codes of "
                             f"code_dim {c.code_dim}")
        v = vectors.float()
        self.code_vectors[:-1] = (v - v.mean(0)) / v.std(0).clamp_min(1e-6)
        self.code_vectors[-1] = 0

    def token_table(self) -> torch.Tensor:
        """(V, n_embd): the embedding of every token (input and, tied, output)."""
        t = self.wte.weight
        return t + self.code_proj(self.code_vectors) if self.config.code_dim else t

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
        table = self.token_table()
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
        label = None
        if self.y_embed is not None:
            label = self.condition(x.new_zeros(len(idx), x.shape[-1]), y)
            x = x + label[:, None]
        x = self.drop(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if caches is None else caches[i], label)
        logits = F.linear(self.ln_f(x), table)  # tied: self.head.weight is self.wte.weight
        loss = None if targets is None else F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, allowed: int | None = None,
                 generator: torch.Generator | None = None, y: torch.Tensor | None = None,
                 cfg_scale: float = 1.0, later_temperature: float | None = None, ink_temperature: float | None = None,
                 background: torch.Tensor | None = None, guide_model: "GPT | None" = None,
                 guide_scale: float = 1.0, first_frame_tokens: int | None = None, ink_fn=None) -> torch.Tensor:
        """Continue `prompt` (B, L0), whose first token is sequence position 0 (BOS). Each prediction reads a
        training-like window of at most block_size tokens (re-anchored to its last half when full); with
        use_cache its keys are cached (amortised constant cost per token), without it every step recomputes
        the window (the reference: the same windows, the same logits). `allowed` restricts sampling to
        tokens < allowed (codes); with first_frame_tokens F (motion tokenizers, models.vqvae), the first latent frame
        draws codes < F and the later frames motion tokens F..allowed-1 (`step_allowed`). y (B, num_classes): label prompts of a class-conditional model; cfg_scale
        != 1 guides the logits, uncond + scale * (cond - uncond), with a null-label twin of the batch.
        later_temperature: the temperature of codes after the first latent frame (None: `temperature`). Once a
        frame is drawn, the next ones are nearly determined by it (constant motion), so the spread of the model's
        next-frame distribution is mostly its own error; a cooler draw of it keeps shapes cleaner but drops a
        digit's least likely edge cells frame after frame (measured: the digits erode, README).
        ink_temperature / background: the temperature of the digit codes only (sample_logits).
        guide_model, guide_scale != 1: autoguidance -- the logits are guide + scale * (self - guide), where the guide
        is a weaker version of this model (an earlier checkpoint of its run: same vocabulary, grid, window and
        labels; each model applies cfg_scale first), pushing the draw away from the errors the weaker model makes
        more of (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"; contrastive decoding,
        Li et al. 2023, for language models). The draw stays among this model's own top_k codes (contrastive
        decoding's plausibility constraint): a code both models rule out is not revived by their difference.
        ink_fn (needed with read_ink, by this model or the guide): the sequence so far (B, L) -> (B, t h w) ink map
        of its decoded frames, complete ones at least (minisora.lit_gpt.InkTracker decodes each frame as it completes)."""
        def temp(length):
            return step_temperature(length, self.config.grid, temperature, later_temperature)

        def vocab(length):
            return step_allowed(length, self.config.grid, allowed, first_frame_tokens)
        cfg = y is not None and self.y_embed is not None and cfg_scale != 1.0
        labels = torch.cat([y, self.null_label_like(y)]) if cfg else y
        weak = guide_model if guide_model is not None and guide_scale != 1.0 else None
        if weak is not None:
            check_guide(self, weak)

        if ink_fn is None and any(m.prev_ink is not None for m in (self, weak) if m is not None):
            raise ValueError("a GPT with read_ink samples with ink_fn (the ink map of its decoded frames)")

        def model_logits(model, x, start, caches):  # (B, V) logits of one model's last position, label-guided
            history = seq if model.neighbours is not None else None
            ink = ink_fn(seq) if model.prev_ink is not None else None
            if cfg:
                x, start = torch.cat([x, x]), torch.cat([start, start]) if torch.is_tensor(start) else start
                history = None if history is None else torch.cat([history, history])
                ink = None if ink is None else torch.cat([ink, ink])
            out = model(x, start=start, caches=caches, y=labels, history=history, ink=ink)[0][:, -1].float()
            return cfg_guide(out, cfg_scale) if cfg else out

        def next_logits(x, start, caches=None):  # caches: (this model's, the guide's) or None
            out = model_logits(self, x, start, None if caches is None else caches[0])
            if weak is None:
                return out
            g = model_logits(weak, x, start, None if caches is None else caches[1])
            return autoguide(out, g, guide_scale, top_k)

        seq = prompt
        bs, stride = self.config.block_size, self.config.context_stride
        if stride > 1:  # sparse context: the strided part shifts every step, so no cache (as upstream)
            for _ in range(max_new_tokens):
                pos = torch.tensor(context_positions(seq.shape[1], bs, stride, self.config.context_dense), device=seq.device)
                logits = next_logits(seq[:, pos], pos.expand(len(seq), -1))
                seq = torch.cat([seq, sample_logits(logits, temp(seq.shape[1]), top_k, top_p, vocab(seq.shape[1]), generator,
                                                    ink_temperature, background)], 1)
            return seq
        # Dense context: every prediction reads a window [anchor, now) of at most block_size tokens whose keys
        # were all computed inside that same window -- exactly a training window. When the window is full it
        # is re-anchored to its last half and recomputed (models.cfg.reanchor: one forward of block_size // 2
        # tokens every block_size // 2 steps). A cache that merely slid would let a token see, through the earlier
        # layers' keys, further back than any training window (the old behaviour: next-token distributions
        # off by a total variation of 0.02-0.10 past the first window).
        anchor, caches = max(0, seq.shape[1] - bs), None

        def window():  # full forward of the current window (fresh caches when decoding with them)
            nonlocal caches
            caches = ([{"max": bs} for _ in self.blocks], [{"max": bs} for _ in (weak or self).blocks]) if use_cache else None
            return next_logits(seq[:, anchor:], anchor, caches)

        logits = window()
        for _ in range(max_new_tokens):
            nxt = sample_logits(logits, temp(seq.shape[1]), top_k, top_p, vocab(seq.shape[1]), generator, ink_temperature,
                                background)
            seq = torch.cat([seq, nxt], 1)
            if seq.shape[1] - prompt.shape[1] >= max_new_tokens:
                break
            if reanchor(seq.shape[1], anchor, bs) != anchor:  # the window is full: re-anchor
                anchor = reanchor(seq.shape[1], anchor, bs)
                logits = window()
            elif use_cache:
                logits = next_logits(nxt, seq.shape[1] - 1, caches)
            else:
                logits = window()
        return seq


def check_guide(model: GPT, guide: GPT) -> None:
    """A guide model must read and write the same tokens the same way as the model it guides."""
    for key in ("vocab_size", "grid", "block_size", "context_stride", "context_dense", "num_classes", "read_ink"):
        a, b = getattr(model.config, key), getattr(guide.config, key)
        if a != b:
            raise ValueError(f"the guide model's {key} is {b!r}, the model's {a!r}: a guide must be a weaker version of "
                             f"the same model (e.g. an earlier checkpoint of its run)")


def autoguide(logits: torch.Tensor, weak: torch.Tensor, scale: float, top_k: int | None) -> torch.Tensor:
    """(B, V) logits of a model guided by a weaker one: weak + scale * (logits - weak), restricted to the model's
    own top_k tokens (all finite ones when top_k is None), so only codes the model itself finds plausible compete."""
    guided = weak + scale * (logits - weak)
    drop = ~torch.isfinite(logits)
    if top_k:
        drop |= outside_top_k(logits, top_k)
    return guided.masked_fill(drop, -float("inf"))


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


def step_temperature(length: int, grid, temperature: float, later_temperature: float | None) -> float:
    """The temperature of the token sampled at sequence position `length` (BOS at 0, code i at i + 1) of a
    (t, h, w) code grid: `later_temperature` past the first latent frame (when given), else `temperature`."""
    later = later_temperature is not None and grid is not None and length - 1 >= grid[1] * grid[2]
    return later_temperature if later else temperature


def step_allowed(length: int, grid, allowed: int | None, first_frame_tokens: int | None = None):
    """The tokens sampled at sequence position `length` (as step_temperature): tokens < `allowed` (None: all); with
    `first_frame_tokens` F (a motion tokenizer's codes), the range [0, F) in the first latent frame, [F, allowed) after."""
    if first_frame_tokens is None or grid is None:
        return allowed
    return (0, first_frame_tokens) if length - 1 < grid[1] * grid[2] else (first_frame_tokens, allowed)


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  allowed: int | tuple[int, int] | None = None, generator: torch.Generator | None = None,
                  ink_temperature: float | None = None, background: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) sampled tokens. temperature 0 = greedy. allowed: tokens < allowed, or a (lo, hi) range.

    ink_temperature (with `background`, a (V,) bool mask of the codes that decode to empty cells): whether the
    token is a background code is drawn with the plain distribution's odds (so a digit keeps the ink the model
    gives it), which background code likewise, and which digit code at ink_temperature (0: the most likely one)
    among the codes top-k / top-p kept. A cooler draw of the whole distribution instead hands the uncertain edge
    cells of a digit to the background code, frame after frame (the digits erode; README)."""
    if allowed is not None:
        lo, hi = (0, allowed) if isinstance(allowed, int) else allowed
        logits = logits.clone()
        logits[:, hi:] = -float("inf")
        logits[:, :lo] = -float("inf")
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        logits = logits.masked_fill(outside_top_k(logits, top_k), -float("inf"))
    if top_p is not None and top_p < 1.0:
        srt, order = torch.sort(logits, descending=True)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum - srt.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        srt = srt.masked_fill(drop, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(1, order, srt)
    probs = logits.softmax(-1)
    if ink_temperature is not None and ink_temperature != temperature:
        if background is None:
            raise ValueError("ink_temperature needs the background codes (a (V,) bool mask)")
        bg = background.to(logits.device)[: logits.shape[-1]]
        ink = logits.masked_fill(bg, -float("inf"))  # digit codes only (those top-k / top-p kept)
        if ink_temperature == 0:
            ink_p = F.one_hot(ink.argmax(-1), logits.shape[-1]).to(probs.dtype)
        else:
            ink_p = (ink * (temperature / ink_temperature)).softmax(-1)
        ink_mass = probs.masked_fill(bg, 0).sum(-1, keepdim=True)
        ink_p = torch.where(torch.isfinite(ink).any(-1, keepdim=True), ink_p, 0)  # no digit code left: mass 0 anyway
        probs = probs.masked_fill(~bg, 0) + ink_mass * ink_p
    return torch.multinomial(probs, 1, generator=generator)
