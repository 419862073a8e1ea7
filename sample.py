"""Sample videos from any generator checkpoint: diffusion (train_dit.py / iddpm.py) or next-token
(train_latent_nanogpt.py / train_latent_mamba.py / train_latent_mdgpt.py). Writes N videos as mp4 files
plus an mp4 + gif grid. The checkpoint alone is enough (model config, EMA weights, latent statistics or
codebook size, VAE reference).

  python sample.py --checkpoint runs/iddpm/<run>/checkpoints/last.ckpt --num_videos 8 --sampler dpm++ --steps 25
  python sample.py --checkpoint ... --sampler ddpm --steps 1000          # upstream's 1000-step ancestral sampler
  python sample.py --checkpoint <an --objective rf run> --sampler heun --steps 15   # rf: euler (default) | heun
  python sample.py --checkpoint ... --labels 3 7 --cfg_scale 2           # class-conditional models (--extras 2)
  python sample.py --checkpoint ... --prompts 3,7 1 0,5 --cfg_scale 2    # one digit set per video (cycled)
  python sample.py --checkpoint ... --prior_labels --cfg_scale 3        # digits drawn as often as in the training data
  python sample.py --checkpoint runs/train_latent_nanogpt/<run>/checkpoints/last.ckpt --temperature 1 --top_k 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from minisora.cli import add_token_sampling_args, add_vae_arg, token_sampling
from minisora.generate import (generate_videos, is_diffusion, label_prompts, load_generator, load_guide, num_classes,
                               prior_label_sets)
from minisora.video_io import save_video_grid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="generator checkpoint: local path or wandb artifact")
    p.add_argument("--num_videos", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=4)
    add_vae_arg(p, help="VAE that decodes the samples (default: the one named in the checkpoint)")
    p.add_argument("--output_dir", default=None, help="default: runs/sample/<checkpoint run>")
    p.add_argument("--fps", type=float, default=5)
    p.add_argument("--device", default=None)
    d = p.add_argument_group("diffusion checkpoints")
    d.add_argument("--sampler", default=None, choices=["dpm++", "ddim", "ddpm", "euler", "heun"],
                   help="eps models: dpm++ (default) | ddim | ddpm; rf models: euler (default) | heun")
    d.add_argument("--steps", type=int, default=25, help="sampler steps (ddpm: respaced ancestral steps; heun: 2 "
                                                           "model calls per step)")
    d.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA ones")
    d.add_argument("--labels", type=int, nargs="+", default=None, help="digits to condition on (class-conditional "
                   "models, diffusion or GPT), the same set for every video")
    d.add_argument("--prompts", nargs="+", default=None, metavar="SET",
                   help="one digit set per video, cycled, e.g. --prompts 3,7 1 0,5 (class-conditional models)")
    d.add_argument("--prior_labels", action="store_true",
                   help="class-conditional models, no prompt of yours: draw each video's digit set from the training "
                        "data's (kept in the checkpoint) and sample guided by it (--cfg_scale), as RCG samples "
                        "unconditionally (README: 'Samples nobody prompted')")
    d.add_argument("--cfg_scale", type=float, default=1.0, help="classifier-free guidance scale (with --labels/--prompts; "
                                                                "GPTs: on the logits)")
    add_token_sampling_args(p)
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        module = load_generator(a.checkpoint, device, a.vae)
        guide = load_guide(a.guide_checkpoint, module, device)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    diffusion = is_diffusion(module)
    y, sampler = None, None
    if diffusion:
        try:
            sampler = module.diffusion.resolve_sampler(a.sampler)
        except ValueError as e:
            sys.exit(f"error: --sampler: {e}")
    if a.prior_labels and (a.labels is not None or a.prompts is not None):
        sys.exit("error: --prior_labels draws the digits itself: drop --labels/--prompts")
    drawn = None
    if a.prior_labels:
        try:
            drawn = prior_label_sets(module, a.num_videos, a.seed)
        except ValueError as e:
            sys.exit(f"error: {e}")
        y = label_prompts(drawn, num_classes(module), device)
    if a.labels is not None or a.prompts is not None:
        k = num_classes(module)
        if not k:
            sys.exit("error: --labels/--prompts given but the model is unconditional")
        try:
            sets = [a.labels] if a.prompts is None else [[int(d) for d in s.split(",")] for s in a.prompts]
        except ValueError:
            sys.exit(f"error: --prompts takes comma-separated digit sets, e.g. 3,7 1; got {a.prompts}")
        if any(not 0 <= d < k for s in sets for d in s):
            sys.exit(f"error: digits must be in 0..{k - 1}")
        y = label_prompts(sets if a.prompts is None else [sets[i % len(sets)] for i in range(a.num_videos)], k, device)
    ck = Path(a.checkpoint)
    out = Path(a.output_dir) if a.output_dir else Path("runs/sample") / (ck.parent.parent.name if ck.exists() else ck.name)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        videos = generate_videos(module, a.num_videos, a.batch_size, a.seed, sampler, a.steps, y, use_ema=not a.no_ema,
                                 cfg_scale=a.cfg_scale, **token_sampling(a, guide))
    except ValueError as e:  # sampling settings the checkpoint cannot take (e.g. --ink_temperature on an old one)
        sys.exit(f"error: {e}")
    dt = time.time() - t0
    for i, v in enumerate(videos):
        save_video_grid([v], out / f"{i:03d}.mp4", fps=a.fps, gif=False)
    grid = save_video_grid(videos, out / "grid.mp4", fps=a.fps)
    h = module.hparams
    how = f"{sampler}, {a.steps} steps" if diffusion else (
        f"temperature {h.temperature if a.temperature is None else a.temperature}, "
        f"top-k {h.top_k if a.top_k is None else a.top_k}, top-p {h.top_p if a.top_p is None else a.top_p}")
    later = None if diffusion else h.get("later_temperature") if a.later_temperature is None else a.later_temperature
    if later is not None:
        how += f", temperature {later} after the first latent frame"
    ink = None if diffusion else h.get("ink_temperature") if a.ink_temperature is None else a.ink_temperature
    if ink is not None:
        how += f", digit codes at temperature {ink}"
    if drawn is not None:
        how += f", digits drawn from the training data's at guidance {a.cfg_scale}: " + " ".join(
            ",".join(map(str, d)) for d in drawn)
    if guide is not None and a.guide_scale != 1.0:
        how += f", autoguided by {a.guide_checkpoint} at scale {a.guide_scale}"
    print(f"[sample] {a.num_videos} videos ({how}) in {dt:.1f}s "
          f"({dt / a.num_videos:.2f}s per video) -> {out}/000.mp4 ... and grid {grid} + {grid.with_suffix('.gif')}")


if __name__ == "__main__":
    main()
