"""Sample videos from any diffusion checkpoint (train_dit.py / iddpm.py): N videos as mp4 files plus an
mp4 + gif grid. The checkpoint alone is enough (model config, EMA weights, latent statistics, VAE reference).

  python sample.py --checkpoint runs/iddpm/<run>/checkpoints/last.ckpt --num_videos 8 --sampler dpm++ --steps 25
  python sample.py --checkpoint ... --sampler ddpm --steps 1000          # upstream's 1000-step ancestral sampler
  python sample.py --checkpoint ... --labels 3 7 --cfg_scale 2           # class-conditional models (--extras 2)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from minisora.checkpoint import load_checkpoint
from minisora.lit_diffusion import LitDiffusion
from minisora.resolve import load_vae, resolve_checkpoint_path
from minisora.training import save_video_grid


def load_diffusion(ref: str, device: str = "cpu", vae: str | None = None) -> LitDiffusion:
    ckpt = load_checkpoint(resolve_checkpoint_path(ref))
    meta = ckpt["minisora"]
    if meta.get("kind") not in ("latte", "stdit"):
        raise ValueError(f"{ref} is a {meta.get('kind')!r} checkpoint, not a diffusion model")
    module = LitDiffusion(meta["kind"], meta["config"], meta["diffusion"], meta["latent"], vae or meta["vae"],
                          ema_decay=meta.get("ema_decay", 0.9999))
    module.load_state_dict(ckpt["state_dict"])
    module.vae = load_vae(vae or meta["vae"], device)
    return module.to(device).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="diffusion checkpoint: local path or wandb artifact")
    p.add_argument("--num_videos", type=int, default=4)
    p.add_argument("--sampler", default="dpm++", choices=["dpm++", "ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=25, help="sampler steps (ddpm: respaced ancestral steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--vae", default=None, help="override the VAE reference stored in the checkpoint")
    p.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA ones")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="digits to condition on (class-conditional models)")
    p.add_argument("--cfg_scale", type=float, default=1.0)
    p.add_argument("--output_dir", default=None, help="default: runs/sample/<checkpoint run>")
    p.add_argument("--fps", type=float, default=5)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        module = load_diffusion(a.checkpoint, device, a.vae)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    module.hparams.cfg_scale = a.cfg_scale
    ck = Path(a.checkpoint)
    out = Path(a.output_dir) if a.output_dir else Path("runs/sample") / (ck.parent.parent.name if ck.exists() else ck.name)
    out.mkdir(parents=True, exist_ok=True)
    y = None
    if a.labels is not None:
        if not module.hparams.model_config.get("num_classes"):
            sys.exit("error: --labels given but the model is unconditional")
        y = torch.zeros(1, 10, device=device)
        y[0, a.labels] = 1
    videos, t0 = [], time.time()
    for i in range(0, a.num_videos, a.batch_size):
        n = min(a.batch_size, a.num_videos - i)
        z = module.sample_latents(n, a.sampler, a.steps, seed=a.seed + i, y=None if y is None else y.expand(n, -1),
                                  use_ema=not a.no_ema)
        videos.extend(module.vae.decode(z).cpu())
    dt = time.time() - t0
    for i, v in enumerate(videos):
        save_video_grid([v], out / f"{i:03d}.mp4", fps=a.fps, gif=False)
    grid = save_video_grid(videos, out / "grid.mp4", fps=a.fps)
    print(f"[sample] {a.num_videos} videos ({a.sampler}, {a.steps} steps) in {dt:.1f}s "
          f"({dt / a.num_videos:.2f}s per video) -> {out}/000.mp4 ... and grid {grid} + {grid.with_suffix('.gif')}")


if __name__ == "__main__":
    main()
