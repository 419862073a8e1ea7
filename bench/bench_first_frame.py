"""The first latent frame of a token model, alone: what every unconditional sample starts from (with motion
tokens, all later frames move it). Draws only the first latent frame of --num unconditional samples
(`LitLM.sample_codes(num_frames=1)`) at each --ink_temperature and scores its frames as `evaluate.py` scores
videos (legible digits, digits, chroma per frame); with --tokens, also the model's loss on the first frames of
the training rows and of the held-out rows (nats per token, null label), which says whether the first frame is
under- or over-fit.

  python bench/bench_first_frame.py --checkpoint runs/train_latent_nanogpt/<run>/checkpoints/last.ckpt \\
      --tokens data/latents/mv.npy --num 256 --ink_temperature 0.3 0 1 --picture first_frames.png

The digit classifier is evaluate.py's (trained on first use into --cache_dir, default runs/evaluate).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate import cached  # noqa: E402
from minisora.cli import Parser
from minisora.data import held_out_rows  # noqa: E402
from minisora.evaluation import DigitCNN, train_digit_classifier, video_metrics  # noqa: E402
from minisora.generate import Sampling, load_generator  # noqa: E402
from minisora.video_io import to_uint8_frames  # noqa: E402


def first_frames(module, n: int, ink_temperature: float | None, batch_size: int = 16) -> torch.Tensor:
    """n decoded first frames (n, 3, H, W) in [-1, 1], batch i seeded i."""
    out = []
    for i in range(0, n, batch_size):
        opts = module.token_sampling(Sampling(ink_temperature=ink_temperature))
        codes = module.sample_codes(min(batch_size, n - i), seed=i, opts=opts, num_frames=1)
        out.append(module.vae.decode_codes(codes)[:, :, 0].cpu())
    return torch.cat(out)


@torch.no_grad()
def first_frame_loss(module, tokens: np.ndarray, rows, batch_size: int = 32) -> float:
    """Mean nats per token of the first latent frame of `rows`, read from BOS with the null label."""
    total = []
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        codes = torch.from_numpy(tokens[r, 0].reshape(len(r), -1).astype(np.int64))
        seq = torch.cat([torch.full((len(r), 1), module.hparams.n_codes), codes], 1)
        total.append(-module.label_log_likelihood(seq, None) / codes.shape[1])
    return float(torch.cat(total).mean())


def main():
    p = Parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="a GPT / Mamba checkpoint (train_latent_nanogpt.py, ...)")
    p.add_argument("--num", type=int, default=256, help="first frames drawn per temperature")
    p.add_argument("--ink_temperature", type=float, nargs="+", default=[None],
                   help="digit-code temperatures to compare (default: the checkpoint's own)")
    p.add_argument("--tokens", default=None, help="the tokens .npy the model was trained on: adds the first-frame loss")
    p.add_argument("--val_fraction", type=float, default=0.05, help="held-out rows of --tokens (train_latent_nanogpt.py's)")
    p.add_argument("--rows", type=int, default=256, help="rows of each split read for the loss")
    p.add_argument("--picture", default=None, help="PNG of the first 32 frames of the first temperature")
    p.add_argument("--cache_dir", default="runs/evaluate")
    a = p.parse_args()
    module = load_generator(a.checkpoint)
    clf = cached(Path(a.cache_dir) / "digit_cnn_v2.pt", lambda: train_digit_classifier()[0], DigitCNN)
    print("| ink temperature | legible / frame | digits / frame | chroma | s |\n|---|---|---|---|---|")
    for i, t in enumerate(a.ink_temperature):
        start = time.time()
        frames = first_frames(module, a.num, t)
        u8 = np.stack([to_uint8_frames(f[:, None]) for f in frames])  # (n, 1, H, W, 3)
        m = video_metrics(u8, clf)
        name = "checkpoint's" if t is None else f"{t:g}"
        print(f"| {name} | {m['legible_per_frame']:.3f} | {m['digits_per_frame']:.3f} | {m['chroma']:.1f} | "
              f"{time.time() - start:.0f} |", flush=True)
        if a.picture and i == 0:
            k = min(32, len(u8)) // 8 * 8 or len(u8)
            rows = [np.concatenate(list(u8[r:r + 8, 0]), 1) for r in range(0, k, 8)]
            Image.fromarray(np.concatenate(rows, 0)).resize((8 * u8.shape[3] * 2, len(rows) * u8.shape[2] * 2),
                                                             Image.NEAREST).save(a.picture)
            print(f"[first_frame] picture: {a.picture}")
    if a.tokens:
        tokens = np.load(a.tokens, mmap_mode="r")
        train, val = held_out_rows(len(tokens), a.val_fraction)
        print(f"first-frame loss (nats/token, null label): train rows {first_frame_loss(module, tokens, list(train)[:a.rows]):.4f}, "
              f"held-out rows {first_frame_loss(module, tokens, list(val)[:a.rows]):.4f}")


if __name__ == "__main__":
    main()
