"""Where a token model's loss goes, and how reusable a tokenizer's codes are. On the first --num_videos val clips:

- the tokenizer (--vae): distinct codes and their entropy on digit cells (any digit pixel in the cell's 4x4x4
  block), on background cells next to a digit, and on background cells more than 3 cells from any digit (plain
  black: an ideal tokenizer gives them one code), and the entropy of those far-background codes given the
  cell's (t, h, w) position (what a position embedding can learn of them); and code persistence: of the cells
  whose pixels do not change from one latent frame to the next (max |difference| < 8/255), the share that keep
  their code, per transition (a model can only carry forward what the tokenizer keeps); of the digit cells, the
  share whose code is the previous latent frame's code of the same cell, and of the cell at the best whole-frame
  shift (|dy|, |dx| <= 2 cells, chosen per frame: an upper bound on copying a digit along its motion); with --merge D ..., the
  same with every code closer than D to a more used one switched off (near-duplicate codes merged, as
  tokenize_videos.py --merge_codes D encodes), with the merged codes' PSNR and digit-cell copies: what a
  codebook without near-duplicates gives;
- a GPT (--checkpoint, optional): per-token loss on digit and background cells, per latent frame, each token
  read with the context the sampler gives it (models.cfg.reanchor windows; null label). Later latent frames of
  a clip are nearly determined by the first (constant motion, same digits), so a model that reuses what it
  saw scores them lower than latent frame 0. With it, the argmax accuracy on digit cells, and with
  --code_groups G ...: the same loss and accuracy when codes are pooled into G groups of nearby codebook vectors
  (k-means over the codes in use): what the model gets right about the picture rather than the exact code;
- with --sensitivity (tokenizers of one frame per latent frame): what a digit cell's code depends on. Of the digit
  cells, the share that keep their code when each frame is encoded alone (a 1-frame clip: no temporal context);
  when the whole clip is translated by 1, 2 or 4 px (4 px: compared with the cell the content moved to; a code of
  the patch's content would keep them all); and when frame t is replaced by a motion-compensated prediction from
  frames t-2 and t-1 (per-pixel block matching, frame t-1 carried forward by its motion; real and decoded
  frames): how far a pixel-space motion model can make the next frame's codes predictable.

  python bench/bench_tokens.py --dataset flying_mnist_demo --vae runs/train_vqvae/<tokenizer>/checkpoints/last.ckpt \\
      --checkpoint runs/train_latent_nanogpt/<gpt>/checkpoints/last.ckpt
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisora.data import VideoDataset  # noqa: E402
from minisora.generate import load_generator  # noqa: E402
from minisora.metrics import psnr  # noqa: E402
from minisora.resolve import load_vae  # noqa: E402
from models.cfg import reanchor  # noqa: E402


def entropy(counts) -> float:
    p = np.asarray(list(counts), dtype=float)
    p = p / p.sum()
    return float(-(p * np.log(p)).sum())


def encode_merged(vae, x: torch.Tensor, d: float) -> torch.Tensor:
    """Codes of x with the tokenizer's codes closer than d merged, exactly as `tokenize_videos.py --merge_codes d`
    encodes (VectorQuantizer.merge_near_duplicates: the nearest code left active); the tokenizer is left as it was."""
    q = vae.module.quantizer
    active = q.active.clone()
    try:
        q.merge_near_duplicates(d)
        with torch.no_grad():
            return vae.encode_codes(x).cpu()
    finally:
        q.active.copy_(active)


def code_stats(codes: torch.Tensor, mask: torch.Tensor) -> dict:
    c = Counter(codes[mask].tolist())
    return dict(cells=int(mask.sum()), distinct=len(c), entropy=round(entropy(c.values()), 3))


def shifted_copies(codes: torch.Tensor, digit: torch.Tensor, reach: int = 2) -> dict:
    """Of the digit cells of latent frames 1.. ((N, t, h, w) codes and mask), the share whose code is the one the
    same cell had in the frame before ("same cell"), and the one of the cell (dy, dx) away, with the shift that
    copies the most of that frame's digit cells (|dy|, |dx| <= reach; "best shift"): how much of a moving digit
    a model could carry forward by copying codes."""
    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    prev, now, m = codes[:, :-1], codes[:, 1:], digit[:, 1:]
    hits = torch.stack([(torch.roll(prev, s, (2, 3)) == now) & m for s in shifts]).sum((3, 4))  # (shifts, N, t-1)
    cells = m.sum((2, 3)).clamp(min=1).sum()
    return dict(same_cell=round(float(hits[shifts.index((0, 0))].sum() / cells), 3),
                best_shift=round(float(hits.amax(0).sum() / cells), 3))


def conditional_entropy(codes: torch.Tensor, mask: torch.Tensor) -> float:
    """H(code | (t, h, w) position) over the masked cells, in nats (a plug-in estimate: biased low)."""
    by_pos = defaultdict(Counter)
    for (_, t, h, w), k in zip(torch.nonzero(mask).tolist(), codes[mask].tolist()):
        by_pos[(t, h, w)][k] += 1
    n = sum(sum(c.values()) for c in by_pos.values())
    return float(sum(sum(c.values()) * entropy(c.values()) for c in by_pos.values()) / n)


def codebook_groups(codebook: torch.Tensor, in_use: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """(K, E) codebook, (K,) bool codes in use -> (K,) group of each code, in [0, min(k, codes in use)): k-means
    (Lloyd, started from random codes in use) over the codes in use; every other code joins its nearest centre."""
    x = codebook[in_use].float()
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        near = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, near, x)
        counts = torch.bincount(near, minlength=len(centres))[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return torch.cdist(codebook.float(), centres).argmin(1)


def translate(x: torch.Tensor, dy: int, dx: int, fill: float = -1.0) -> torch.Tensor:
    """(..., H, W) with its content moved by (dy, dx) pixels; uncovered pixels get `fill` (-1: black)."""
    out = torch.full_like(x, fill)
    H, W = x.shape[-2:]
    src_y, dst_y = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    src_x, dst_x = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def predict_next_frame(f0: torch.Tensor, f1: torch.Tensor, reach: int = 5, window: int = 9) -> torch.Tensor:
    """Frames t-2, t-1 (B, 3, H, W) in [-1, 1] -> a prediction of frame t: each pixel's motion is the shift
    (|dy|, |dx| <= reach) that best maps frame t-2 onto t-1 in the window around it (sum of absolute differences,
    ties to the smaller shift), and every non-black pixel of frame t-1 moves on by its motion (constant velocity;
    overlaps keep the brighter pixel, the rest is black)."""
    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    err = torch.cat([F.avg_pool2d((f1 - translate(f0, dy, dx)).abs().sum(1, keepdim=True), window, 1, window // 2,
                                  count_include_pad=False) + 1e-4 * (dy * dy + dx * dx) for dy, dx in shifts], 1)
    motion, content = err.argmin(1), f1.amax(1) > -0.8
    pred = torch.full_like(f1, -1.0)
    for k, (dy, dx) in enumerate(shifts):
        moving = ((motion == k) & content)[:, None]
        if moving.any():
            pred = torch.maximum(pred, translate(torch.where(moving, f1, -1.0), dy, dx))
    return pred


@torch.no_grad()
def code_sensitivity(vae, x: torch.Tensor, codes: torch.Tensor, fg: torch.Tensor) -> dict:
    """Shares of digit cells (fg, (N, t, h, w)) whose code (`codes`, the clip's) survives: each frame encoded alone,
    the clip translated by 1 / 2 / 4 px, and frame t replaced by predict_next_frame of frames t-2, t-1 (real,
    and decoded from the codes; with the prediction's pixel MSE and that of copying frame t-1); the copy-the-cell
    baseline beside it; and the frame-alone codes' PSNR and their own copy shares. Per-frame tokenizers (t == T)."""
    n, T = x.shape[0], x.shape[2]
    if codes.shape[1] != T:
        raise ValueError("--sensitivity needs a tokenizer with one latent frame per frame (e.g. s4t1_m_vq)")
    cell = x.shape[-1] // codes.shape[-1]

    def share(c, ref=codes, m=fg):
        return round(float((c == ref)[m].float().mean()), 3)
    alone = rearrange(vae.encode_codes(rearrange(x, "n c t h w -> (n t) c 1 h w")).cpu(), "(n t) 1 h w -> n t h w", n=n)
    out = {"frame encoded alone": share(alone), "frames encoded alone, decoded: PSNR": round(float(psnr(
        vae.decode_codes(alone.to(vae.device)).float().cpu(), x).mean()), 2),
           **{f"frames encoded alone, kept from the frame before: {k}": v for k, v in shifted_copies(alone, fg).items()}}
    for px in sorted({1, 2, cell}):
        moved = vae.encode_codes(translate(x, 0, px)).cpu()
        if px % cell:  # same cell, content moved by a fraction of a cell
            out[f"clip moved {px} px"] = share(moved[..., :-1], codes[..., :-1], fg[..., :-1])
        else:  # the cell the content moved to
            k = px // cell
            out[f"clip moved {px} px"] = share(moved[..., k:-1], codes[..., :-1 - k], fg[..., :-1 - k])
    decoded = vae.decode_codes(codes.to(vae.device)).float().cpu()
    for name, src in (("real", x), ("decoded", decoded)):
        clip = src.clone()
        for t in range(2, T):
            clip[:, :, t] = predict_next_frame(src[:, :, t - 2], src[:, :, t - 1])
        out[f"motion-compensated prediction from {name} frames"] = share(vae.encode_codes(clip).cpu()[:, 2:],
                                                                         codes[:, 2:], fg[:, 2:])
        out[f"pixel MSE against real frames, prediction / copying frame t-1 ({name} frames)"] = [
            round(float(((clip[:, :, 2:] - x[:, :, 2:]) ** 2).mean()), 4), round(float(((src[:, :, 1:-1] - x[:, :, 2:]) ** 2).mean()), 4)]
    out["copy the cell (frames 2..)"] = share(codes[:, 1:-1], codes[:, 2:], fg[:, 2:])
    return out


@torch.no_grad()
def sampler_losses(gpt, seq: torch.Tensor, groups: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """(N, L) sequences [BOS, codes...] -> {"loss", "hit"} (N, L - 1): each code's loss and whether it is the
    argmax, read through the window the sampler uses for it (GPT.generate: windows of block_size re-anchored to
    their last half when full); for each G in groups ({G: (n_codes,) group of each code}) also "loss G" / "hit G":
    the same with the probability pooled over each group (over codes only, as the sampler draws: BOS left out)."""
    by_anchor, anchor = defaultdict(list), 0
    for length in range(1, seq.shape[1]):
        anchor = reanchor(length, anchor, gpt.config.block_size)
        by_anchor[anchor].append(length)
    groups = groups or {}
    out = {k: torch.zeros(len(seq), seq.shape[1] - 1) for k in ["loss", "hit", *(f"{s} {g}" for g in groups for s in ("loss", "hit"))]}
    history = {"history": seq} if getattr(gpt.config, "prev_frames", 0) else {}  # GPT --prev_frames reads it
    for a, lengths in by_anchor.items():
        logits = gpt(seq[:, a:max(lengths)], start=a, **history)[0].float()
        for n in lengths:
            lg, tgt = logits[:, n - 1 - a], seq[:, n]
            out["loss"][:, n - 1] = F.cross_entropy(lg, tgt, reduction="none")
            out["hit"][:, n - 1] = (lg.argmax(-1) == tgt).float()
            p = lg[:, :-1].softmax(-1) if groups else None  # over the codes (the last entry is BOS), once per position
            for G, grp in groups.items():
                pooled = torch.zeros(len(p), int(grp.max()) + 1).index_add_(1, grp, p)
                tg = grp[tgt]
                out[f"loss {G}"][:, n - 1] = -pooled.gather(1, tg[:, None])[:, 0].clamp(min=1e-12).log()
                out[f"hit {G}"][:, n - 1] = (pooled.argmax(-1) == tg).float()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="flying_mnist_demo")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--vae", required=True, help="the tokenizer (VQ/FSQ checkpoint, path or reference)")
    p.add_argument("--checkpoint", default=None, help="a GPT trained on this tokenizer's codes (optional)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--sequence_length", type=int, default=16)
    p.add_argument("--num_videos", type=int, default=32, help="val clips")
    p.add_argument("--merge", type=float, nargs="*", default=[], metavar="D",
                   help="also score code persistence with codes closer than D (codebook distance) merged, as "
                        "tokenize_videos.py --merge_codes D encodes")
    p.add_argument("--code_groups", type=int, nargs="*", default=[], metavar="G",
                   help="with --checkpoint: also score the GPT with codes pooled into G groups of nearby codebook "
                        "vectors (k-means over the codes in use)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also score what a digit cell's code depends on: temporal context, sub-cell shifts, a "
                        "motion-compensated prediction (per-frame tokenizers)")
    p.add_argument("--output", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    ds = VideoDataset(a.dataset, "val", a.resolution, a.sequence_length, data_dir=a.data_dir)
    x = torch.stack([ds[i]["video"] for i in range(min(a.num_videos, len(ds)))])
    if a.checkpoint:
        module = load_generator(a.checkpoint, vae=a.vae)
        vae, gpt = module.vae, module.model.eval()
    else:
        vae, gpt = load_vae(a.vae), None
    with torch.no_grad():
        codes = vae.encode_codes(x).cpu()  # (N, t, h, w)
    ts, ss = x.shape[2] // codes.shape[1], x.shape[3] // codes.shape[2]
    fg = F.max_pool3d((x.amax(1, keepdim=True) > -0.9).float(), (ts, ss, ss))[:, 0].bool()
    near = F.max_pool3d(fg[:, None].float(), (1, 7, 7), 1, (0, 3, 3))[:, 0].bool()  # within 3 cells of a digit
    adjacent = F.max_pool3d(fg[:, None].float(), (1, 3, 3), 1, (0, 1, 1))[:, 0].bool() & ~fg
    out = {"tokenizer": {"digit cells": code_stats(codes, fg), "background next to a digit": code_stats(codes, adjacent),
                         "background > 3 cells from a digit": code_stats(codes, ~near)}}
    out["tokenizer"]["background > 3 cells from a digit"]["entropy given position"] = round(
        conditional_entropy(codes, ~near), 3)
    blocks = rearrange(x, "n c (t a) (h b) (w d) -> n t h w (c a b d)", a=ts, b=ss, d=ss)
    still = (blocks[:, 1:] - blocks[:, :-1]).abs().amax(-1) < 16 / 255  # model range: 8/255 of pixel range
    def kept(c):  # (N, t-1, h, w): the cell keeps its code from the previous latent frame
        return c[:, 1:] == c[:, :-1]
    same = kept(codes)
    per = [round(float(same[:, t][still[:, t]].float().mean()), 3) for t in range(still.shape[1])]
    out["tokenizer"]["code persistence"] = dict(unchanged_cells=round(float(still.float().mean()), 3),
                                                kept=round(float(same[still].float().mean()), 3), per_transition=per)
    out["tokenizer"]["digit cells keeping their code"] = shifted_copies(codes, fg)
    for d in a.merge:
        merged = encode_merged(vae, x, d)
        with torch.no_grad():
            recon = vae.decode_codes(merged.to(vae.device)).cpu()
        out["tokenizer"][f"codes merged below {d}"] = dict(
            codes_in_use=int(merged.unique().numel()), kept=round(float(kept(merged)[still].float().mean()), 3),
            psnr=round(float(psnr(recon, x).mean()), 2),
            **{f"digit cells {k}": v for k, v in shifted_copies(merged, fg).items()})
    if a.sensitivity:
        out["tokenizer"]["digit cells keeping their code when"] = code_sensitivity(vae, x, codes, fg)
    print(f"[bench_tokens] tokenizer {a.vae}, {len(x)} val clips, code grid {tuple(codes.shape[1:])}")
    for k, v in out["tokenizer"].items():
        print(f"  {k}: " + ", ".join(f"{n} {v[n]}" for n in v))
    if gpt is not None:
        n_codes = module.hparams.n_codes
        seq = torch.cat([torch.full((len(codes), 1), n_codes), codes.reshape(len(codes), -1)], 1)
        q = vae.module.quantizer
        in_use = getattr(q, "active", torch.ones(n_codes, dtype=torch.bool)).cpu() & (torch.bincount(codes.flatten(), minlength=n_codes) > 0)
        groups = {G: codebook_groups(q.codebook.cpu(), in_use, G) for G in a.code_groups}
        stats = {k: v.view(codes.shape) for k, v in sampler_losses(gpt, seq, groups).items()}  # (N, t, h, w) each
        loss, bg = stats["loss"], ~fg

        def on_digits(k, t=slice(None)):
            return round(float(stats[k][:, t][~bg[:, t]].mean()), 3)
        pooled = [f"{s} {G}" for G in groups for s in ("loss", "hit")]
        frames = [dict(digit=on_digits("loss", t), background=round(float(loss[:, t][bg[:, t]].mean()), 3),
                       digit_accuracy=on_digits("hit", t), **{f"digit {k}": on_digits(k, t) for k in pooled})
                  for t in range(codes.shape[1])]
        out["gpt"] = dict(checkpoint=a.checkpoint, block_size=gpt.config.block_size, loss=round(float(loss.mean()), 3),
                          digit=on_digits("loss"), background=round(float(loss[bg].mean()), 3),
                          digit_accuracy=on_digits("hit"), **{f"digit {k}": on_digits(k) for k in pooled},
                          per_latent_frame=frames)
        print(f"[bench_tokens] GPT {a.checkpoint} (block {gpt.config.block_size}): loss {out['gpt']['loss']} nats/token, "
              f"digit cells {out['gpt']['digit']} (argmax right {out['gpt']['digit_accuracy']}), background "
              f"{out['gpt']['background']}" + "".join(f"; {G} code groups: digit cells {out['gpt'][f'digit loss {G}']} "
                                                     f"(right {out['gpt'][f'digit hit {G}']})" for G in groups))
        for t, f in enumerate(frames):
            print(f"  latent frame {t}: " + ", ".join(f"{k} {v}" for k, v in f.items()))
    if a.output:
        Path(a.output).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
