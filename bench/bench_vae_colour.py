"""Does a VAE give the digits' colours back? Trains a VAE from models/vqvae.py on Flying MNIST clips for a fixed
number of optimizer steps (or seconds) and scores its reconstructions of the val clips: PSNR, chroma (mean max-min
over RGB of the foreground, 0-255; real videos: ~76) and the per-digit colour error (distance between the mean RGB
of the reconstruction and of the source over each digit's pixels: minisora.evaluation.colour_error, the same
measure as `evaluate.py --vae`).
Steps, not minutes, make runs comparable on a shared machine. The colour rows of docs/vae_colour.md ("Short runs on the demo data") come from here.

  python bench/bench_vae_colour.py --steps 150                                   # vae_s4t4_m, E=4: the old recipe
  python bench/bench_vae_colour.py --steps 150 --chroma_weight 4
  python bench/bench_vae_colour.py --steps 100000 --seconds 720 --temporal_stride 1 --channels 32 64 64 \\
      --res_blocks 1 1 1 --embedding_dim 8 --chroma_weight 4
  python bench/bench_vae_colour.py --steps 300 --max_videos 4 --batch_size 4 --score_train   # overfit 4 clips
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisora.cli import Parser
from minisora.evaluation import chroma, colour_error  # noqa: E402
from minisora.metrics import psnr  # noqa: E402
from minisora.video_io import read_video  # noqa: E402
from models.vqvae import VideoVAE, make_config  # noqa: E402


def load(split_dir: Path, n: int) -> torch.Tensor:
    files = sorted(split_dir.glob("*.mp4"))[:n]
    return torch.from_numpy(np.stack([read_video(f) for f in files]))  # (N, T, H, W, 3) uint8


def to_model(u: torch.Tensor) -> torch.Tensor:
    return u.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("--data", default="data/flying_mnist_demo", help="folder with train/ and val/ (+ metadata.jsonl)")
    p.add_argument("--variant", default="vae_s4t4_m")
    p.add_argument("--channels", type=int, nargs="+", default=None)
    p.add_argument("--res_blocks", type=int, nargs="+", default=None)
    p.add_argument("--temporal_stride", type=int, default=None)
    p.add_argument("--embedding_dim", type=int, default=4)
    p.add_argument("--chroma_weight", type=float, default=0.0)
    p.add_argument("--group_channels", type=int, default=4, help="0: the old GroupNorm layout (up to 32 groups)")
    p.add_argument("--kl_weight", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seconds", type=float, default=float("inf"), help="also stop after this wall time")
    p.add_argument("--max_videos", type=int, default=1024, help="train clips")
    p.add_argument("--score_train", action="store_true", help="score the first (up to 64) train clips instead of val")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    data = Path(a.data)
    train = load(data / "train", a.max_videos)
    test = train[:64] if a.score_train else load(data / "val", 64)
    over = dict(kl_weight=a.kl_weight, embedding_dim=a.embedding_dim, chroma_weight=a.chroma_weight,
                group_channels=a.group_channels)
    for k in ("channels", "res_blocks", "temporal_stride"):
        if getattr(a, k) is not None:
            over[k] = tuple(getattr(a, k)) if isinstance(getattr(a, k), list) else getattr(a, k)
    model = VideoVAE(make_config(a.variant, **over))
    opt = torch.optim.Adam(model.parameters(), a.lr, betas=(0.9, 0.99))
    t0, step = time.time(), 0
    while step < a.steps and time.time() - t0 < a.seconds:
        loss = model(to_model(train[torch.randint(len(train), (a.batch_size,))]))["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    model.eval()
    x = to_model(test)
    with torch.no_grad():
        rec = torch.cat([model(x[i:i + 16], sample_posterior=False)["recon"].float() for i in range(0, len(x), 16)]).clamp(-1, 1)
    score = float(psnr(rec, x).mean())
    real_u, rec_u = ((x + 1) * 127.5).permute(0, 2, 3, 4, 1).numpy(), ((rec + 1) * 127.5).permute(0, 2, 3, 4, 1).numpy()
    print(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "data"}, "steps": step, "seconds": round(time.time() - t0),
                      "psnr": round(score, 2), "chroma_real": round(chroma(real_u), 1), "chroma_recon": round(chroma(rec_u), 1),
                      "digit_colour_error": round(colour_error(real_u, rec_u), 1)}))


if __name__ == "__main__":
    main()
