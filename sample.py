"""Sample videos from any generator checkpoint: diffusion (train_dit.py / iddpm.py) or next-token
(train_latent_nanogpt.py / train_latent_mamba.py / train_latent_mdgpt.py). Writes N videos as mp4 files
plus an mp4 + gif grid. The checkpoint alone is enough (model config, EMA weights, latent statistics or
codebook size, VAE reference, and its recipe's sampling settings: sampler, steps, guidance, temperatures).

  python sample.py --checkpoint runs/iddpm/<run>/checkpoints/last.ckpt --num_videos 8   # the recipe's settings
  python sample.py --checkpoint ... --sampler ddpm --steps 1000          # upstream's 1000-step ancestral sampler
  python sample.py --checkpoint <an --objective rf run> --sampler heun --steps 15   # rf: euler | heun
  python sample.py --checkpoint ... --labels 3 7 --cfg_scale 2           # class-conditional models
  python sample.py --checkpoint ... --prompts 3,7 1 0,5                  # one digit set per video (cycled)
  python sample.py --checkpoint ... --prior_labels                       # digits drawn as often as in the training data
  python sample.py --checkpoint runs/train_latent_nanogpt/<run>/checkpoints/last.ckpt --temperature 1 --top_k 100
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from minisora.cli import Parser, add_sampling_args, add_vae_arg, sampling_options
from minisora.generate import (describe_sampling, generate_videos, label_prompts, load_generator, num_classes,
                               prior_label_sets)
from minisora.video_io import save_video_grid


def parse_args(argv=None):
    p = Parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="generator checkpoint: local path or wandb artifact")
    p.add_argument("--num_videos", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=4)
    add_vae_arg(p, help="VAE that decodes the samples (default: the one named in the checkpoint)")
    p.add_argument("--output_dir", default=None, help="default: runs/sample/<checkpoint run>")
    p.add_argument("--fps", type=float, default=5)
    p.add_argument("--device", default=None)
    d = p.add_argument_group("label prompts (class-conditional models)")
    d.add_argument("--labels", type=int, nargs="+", default=None, help="digits to condition on, the same set for "
                                                                        "every video")
    d.add_argument("--prompts", nargs="+", default=None, metavar="SET",
                   help="one digit set per video, cycled, e.g. --prompts 3,7 1 0,5")
    d.add_argument("--prior_labels", action="store_true",
                   help="no prompt of yours: draw each video's digit set from the training data's (kept in the "
                        "checkpoint) and sample guided by it (--cfg_scale), as RCG samples unconditionally")
    add_sampling_args(p)
    return p.parse_args(argv)


def prompts(module, a, device) -> tuple[torch.Tensor | None, list | None]:
    """(y, drawn): the label prompts of --labels / --prompts / --prior_labels (None: the null label), and the digit
    sets --prior_labels drew. SystemExit with one line for a prompt the model cannot take."""
    if a.prior_labels and (a.labels is not None or a.prompts is not None):
        sys.exit("error: --prior_labels draws the digits itself: drop --labels/--prompts")
    if a.prior_labels:
        try:
            drawn = prior_label_sets(module, a.num_videos, a.seed)
        except ValueError as e:
            sys.exit(f"error: {e}")
        return label_prompts(drawn, num_classes(module), device), drawn
    if a.labels is None and a.prompts is None:
        return None, None
    k = num_classes(module)
    if not k:
        sys.exit("error: --labels/--prompts given but the model is unconditional")
    try:
        sets = [a.labels] if a.prompts is None else [[int(d) for d in s.split(",")] for s in a.prompts]
    except ValueError:
        sys.exit(f"error: --prompts takes comma-separated digit sets, e.g. 3,7 1; got {a.prompts}")
    if any(not 0 <= d < k for s in sets for d in s):
        sys.exit(f"error: digits must be in 0..{k - 1}")
    return label_prompts(sets if a.prompts is None else [sets[i % len(sets)] for i in range(a.num_videos)], k, device), None


def main(argv=None):
    a = parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = sampling_options(a)
    try:
        module = load_generator(a.checkpoint, device, a.vae)
        how = describe_sampling(module, opts)  # settings the checkpoint cannot take fail here, before any work
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    y, drawn = prompts(module, a, device)
    if drawn is not None:
        how += ", digits drawn from the training data's: " + " ".join(",".join(map(str, d)) for d in drawn)
    ck = Path(a.checkpoint)
    out = Path(a.output_dir) if a.output_dir else Path("runs/sample") / (ck.parent.parent.name if ck.exists() else ck.name)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        videos = generate_videos(module, a.num_videos, a.batch_size, a.seed, opts, y)
    except ValueError as e:
        sys.exit(f"error: {e}")
    dt = time.time() - t0
    for i, v in enumerate(videos):
        save_video_grid([v], out / f"{i:03d}.mp4", fps=a.fps, gif=False)
    grid = save_video_grid(videos, out / "grid.mp4", fps=a.fps)
    print(f"[sample] {a.num_videos} videos ({how}) in {dt:.1f}s "
          f"({dt / a.num_videos:.2f}s per video) -> {out}/000.mp4 ... and grid {grid} + {grid.with_suffix('.gif')}")


if __name__ == "__main__":
    main()
