"""Motion tokens: a keyframe plus block motion, as video codecs and Video-LaVIT code video.

Tokenizer side (VideoVAE.encode_tokens / decode_codes hand over here when `motion_radius` R > 0): only the first
frame is coded by the quantizer; every later frame is a grid of cell motion vectors, tokens n_codes + k (k indexes
the (2R+1)^2 integer displacements): each cell of frame t is the same-sized block of decoded frame t-1 moved by
that vector (`match_cells` / `warp_cells`). A digit that moves keeps its shape and colour, and its cells keep one
token while its velocity holds.

GPT side (GPTConfig.read_ink, entered through the GPT's `prev_ink` input and the sampler's `reader` hook): each
token also reads which cells of the previous *decoded* frame hold ink (`PreviousInk`); training reads them from
`ink_maps`, sampling from an `InkTracker` that decodes each frame as it completes; `token_ranges` keeps codes in
the first frame and motion tokens after it. docs/token_path.md has the measurements.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------- block motion
def motion_offsets(radius: int, device=None) -> torch.Tensor:
    """(K, 2) integer displacements (dy, dx), |dy|, |dx| <= radius, row-major: index K // 2 is (0, 0)."""
    r = torch.arange(-radius, radius + 1, device=device)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)


def pad_black(prev: torch.Tensor, radius: int) -> torch.Tensor:
    """prev (B, C, H, W) with `radius` black (-1) pixels on every side: what shifted_frame displaces."""
    return F.pad(prev, (radius,) * 4, value=-1.0)


def shifted_frame(padded: torch.Tensor, dy: int, dx: int, radius: int) -> torch.Tensor:
    """`padded` = prev (B, C, H, W) padded by `radius` black (-1) pixels -> prev displaced by (dy, dx):
    out[..., y, x] = prev[..., y - dy, x - dx], black outside."""
    H, W = padded.shape[-2] - 2 * radius, padded.shape[-1] - 2 * radius
    return padded[..., radius - dy:radius - dy + H, radius - dx:radius - dx + W]


def cell_errors(prev: torch.Tensor, cur: torch.Tensor, cell: int, radius: int) -> torch.Tensor:
    """(K, B, H/cell, W/cell): each cell's squared error (summed over its pixels and channels) between `cur` and
    `prev` displaced by each of the K motion_offsets(radius). One displacement at a time: the K shifted copies of
    the frame are never held at once (20x faster on CPU than stacking them)."""
    p = pad_black(prev, radius)
    return torch.stack([F.avg_pool2d((shifted_frame(p, dy, dx, radius) - cur).square_().sum(1, keepdim=True), cell)[:, 0]
                        for dy, dx in motion_offsets(radius).tolist()]) * cell * cell


def warp_cells(prev: torch.Tensor, vectors: torch.Tensor, cell: int, radius: int) -> torch.Tensor:
    """The next frame of `prev` (B, C, H, W): cell (i, j) is prev's cell-sized block displaced by motion vector
    vectors[b, i, j] (an index into motion_offsets(radius)).
    One gather: every output pixel reads its source pixel in prev padded black (out[y, x] = prev[y - dy, x - dx])."""
    B, C, H, W = prev.shape
    offsets = motion_offsets(radius, prev.device)
    v = vectors.long().clamp(0, len(offsets) - 1)
    d = offsets[v].repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    ys = torch.arange(H, device=prev.device)[:, None] - d[..., 0] + radius  # (B, H, W) rows in the padded frame
    xs = torch.arange(W, device=prev.device)[None, :] - d[..., 1] + radius
    p = pad_black(prev, radius)
    src = (ys * p.shape[-1] + xs).flatten(1)[:, None].expand(-1, C, -1)
    return p.flatten(2).gather(2, src).view(B, C, H, W)


INK_LEVEL = -0.6  # a pixel whose brightest channel is above this (in [-1, 1]) is ink


def cell_ink(frame: torch.Tensor, cell: int, ink_level: float = INK_LEVEL) -> torch.Tensor:
    """Frame (B, C, H, W) in [-1, 1] -> (B, H/cell, W/cell) bool: the cells holding ink (a pixel whose brightest
    channel is above `ink_level`)."""
    return F.max_pool2d(frame.amax(1, keepdim=True), cell)[:, 0] > ink_level


def match_cells(prev: torch.Tensor, cur: torch.Tensor, cell: int, radius: int, ink_level: float = INK_LEVEL,
                smoothness: float = 0.01, tolerance: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Block motion from decoded frame `prev` to frame `cur` (B, C, H, W, in [-1, 1]) -> (vectors (B, H/cell,
    W/cell), warp_cells(prev, vectors)), chosen for a next-token model to predict, not only to reconstruct: each
    cell's best displacement (squared error + `smoothness` * |v|^2, so ties go to small moves); then the displacement
    most inked cells within 2 cells chose, where it is within `tolerance` of the cell's best (a digit's cells share
    its velocity); cells with no ink (brightest channel > `ink_level`) in either frame, or next to it, keep (0, 0)."""
    err = cell_errors(prev, cur, cell, radius)  # (K, B, h, w)
    k = len(err)
    cost = err + smoothness * (motion_offsets(radius, err.device) ** 2).sum(1).to(err.dtype).view(k, 1, 1, 1)
    best = cost.argmin(0)

    ink_now = cell_ink(cur, cell, ink_level)
    votes = F.one_hot(best, k).permute(0, 3, 1, 2).to(err.dtype) * ink_now[:, None]
    votes = F.avg_pool2d(votes, 5, 1, 2, count_include_pad=False)
    common = votes.argmax(1)
    agree = (votes.amax(1) > 0) & (err.gather(0, common[None])[0] <= err.gather(0, best[None])[0] + tolerance)
    v = torch.where(agree, common, best)
    near_ink = F.max_pool2d((ink_now | cell_ink(prev, cell, ink_level)).to(err.dtype)[:, None], 3, 1, 1)[:, 0] > 0
    v = torch.where(near_ink, v, torch.full_like(v, k // 2))
    return v, warp_cells(prev, v, cell, radius)



# ---------------------------------------------------------------------------- tokenizer side
def decode_still(vae, codes: torch.Tensor) -> torch.Tensor:
    """One latent frame of codes (B, h, w) -> its decoded frame (B, 3, H, W), float, clamped to [-1, 1]."""
    return vae.decoder(vae.quantizer.codes_to_vectors(codes[:, None]))[:, :, 0].float().clamp(-1, 1)


def next_frame(vae, prev: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """One latent frame of tokens (B, h, w) -> its decoded frame (B, 3, H, W): the first frame's codes decoded
    (prev None; a motion token there decodes as code 0), or the decoded frame before, `prev`, moved cell by cell
    (a code where a motion token belongs moves nothing)."""
    c = vae.config
    if prev is None:
        return decode_still(vae, tokens.masked_fill(tokens >= c.n_codes, 0))
    v = tokens - c.n_codes
    still = len(motion_offsets(c.motion_radius)) // 2  # the (0, 0) displacement
    return warp_cells(prev, v.masked_fill(v < 0, still), c.spatial_stride, c.motion_radius)


def decode(vae, codes: torch.Tensor) -> torch.Tensor:
    """Tokens (B, t, h, w) -> video (B, 3, t, H, W): next_frame, frame after frame."""
    frames = [next_frame(vae, None, codes[:, 0])]
    for t in range(1, codes.shape[1]):
        frames.append(next_frame(vae, frames[-1], codes[:, t]))
    return torch.stack(frames, 2)


def encode(vae, x: torch.Tensor) -> torch.Tensor:
    """Video (B, 3, T, H, W) -> tokens (B, T, h, w): the first frame's codes (the frame coded alone, as a still),
    then each frame's motion from the previous *decoded* one (closed loop, so errors do not build up)."""
    c = vae.config
    first = vae.encode(x[:, :, :1])["codes"][:, 0]
    prev = decode_still(vae, first)
    out = [first]
    for t in range(1, x.shape[2]):
        v, prev = match_cells(prev, x[:, :, t].float(), c.spatial_stride, c.motion_radius)
        out.append(v + c.n_codes)
    return torch.stack(out, 1)


# ---------------------------------------------------------------------------- GPT side
def token_ranges(grid, n_codes: int, n_tokens: int):
    """A GPT.generate processor for motion tokens: codes [0, n_codes) in the first latent frame of the (t, h, w)
    grid, motion tokens [n_codes, n_tokens) after it; every other token's logit is -inf."""
    frame = grid[1] * grid[2]

    def processor(seq: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        lo, hi = (0, n_codes) if seq.shape[1] - 1 < frame else (n_codes, n_tokens)
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[lo:hi] = True
        return logits.masked_fill(~keep, -float("inf"))
    return processor


class PreviousInk(nn.Module):
    """What a token at grid cell (t, y, x) can see of the pixels before it: which cells (t - 1, y + dy, x + dx),
    |dy|, |dx| <= radius, of the previous *decoded* frame hold ink (cell_ink), one linear map of those
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



class InkTracker:
    """What a read_ink GPT reads while sampling (LitLM wraps it as GPT.generate's reader): called with the sequence
    so far [BOS, tokens...] (B, L), it decodes each latent frame once, when the frame is complete (next_frame: the
    first frame's codes, then each frame the one before moved by its motion tokens), and returns the ink map
    (B, t h w) float 0/1 of the decoded frames (cell_ink; frames not yet complete: 0) -- what training read from
    ink_maps."""

    def __init__(self, vae_module, grid):
        self.vae, self.grid = vae_module, tuple(grid)
        self.device = next(vae_module.parameters()).device
        self.done, self.frame, self.ink = 0, None, None

    @torch.no_grad()
    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        complete = min(t, (seq.shape[1] - 1) // (h * w))
        if self.ink is None or self.ink.shape[0] != seq.shape[0] or complete < self.done:  # a new sequence
            self.done, self.frame = 0, None
            self.ink = torch.zeros(seq.shape[0], t * h * w, device=seq.device)
        with torch.autocast(seq.device.type, enabled=False):  # the same frames as decode_codes / ink_maps
            for f in range(self.done, complete):
                tokens = seq[:, 1 + f * h * w:1 + (f + 1) * h * w].reshape(-1, h, w).to(self.device)
                self.frame = next_frame(self.vae, self.frame, tokens)
                ink = cell_ink(self.frame, self.vae.config.spatial_stride)
                self.ink[:, f * h * w:(f + 1) * h * w] = ink.flatten(1).to(self.ink)
        self.done = complete
        return self.ink


@torch.no_grad()
def ink_maps(tokens, vae, batch_size: int = 64):
    """(N, t h w) uint8: which cells of each clip's decoded frames hold ink (cell_ink), for the
    motion tokens `tokens` (N, t, h, w) of the tokenizer `vae` (a VAEHandle): what a GPT with read_ink reads."""
    import numpy as np

    if not vae.config.get("motion_radius"):
        raise ValueError("ink maps read the decoded frames of motion tokens (tokenize_videos.py --motion_tokens); "
                         f"{vae.reference} codes every frame")
    out = np.zeros((len(tokens), int(np.prod(tokens.shape[1:]))), dtype=np.uint8)
    for i in range(0, len(tokens), batch_size):
        c = torch.from_numpy(np.asarray(tokens[i:i + batch_size]).astype(np.int64)).to(vae.device).flatten(1)
        seq = torch.cat([c.new_zeros(len(c), 1), c], 1)  # [BOS, tokens]: the sequence a sampler tracks
        out[i:i + len(c)] = InkTracker(vae.module, tokens.shape[1:])(seq).cpu().numpy()
    return out


